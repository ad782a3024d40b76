"""Shared fixtures: the offline MNIST mirror, one prepared MNIST file, small synthetic data, and
the finished quick-preset runs (one per session) that workflow, report and browser tests share."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from workflow_helpers import QUICK, project_copy, run_preset

from prunetime.data import Split

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def mnist_mirror() -> Path:
    """The read-only offline mirror of the original MNIST .gz files (/work/shared/data/mnist)."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    missing = [f for f in MNIST_FILES if not (path / f).is_file()]
    if missing:
        pytest.fail(
            f"offline MNIST mirror {str(path)!r} is missing {missing}; these tests need the "
            "original .gz files there (no network is used)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory: pytest.TempPathFactory, mnist_mirror: Path) -> Path:
    """The quick preset run once per session locally in a project copy (the workflow tests
    dry-run against it; the Slurm test compares its own run's results with it)."""
    return run_preset(project_copy(tmp_path_factory.mktemp("quick")), QUICK, mnist_mirror)


@pytest.fixture(scope="session")
def prepared_mnist(tmp_path_factory: pytest.TempPathFactory, mnist_mirror: Path) -> dict:
    """MNIST prepared once per session from the real mirror (n_val=5000, split_seed=0)."""
    from prunetime.data import prepare_dataset

    root = tmp_path_factory.mktemp("mnist")
    out = root / "prepared.pt"
    counts = prepare_dataset(
        "mnist", root / "raw", out, n_val=5000, split_seed=0, mirror=mnist_mirror
    )
    return {"root": root, "raw": root / "raw", "path": out, "counts": counts}


def make_split(n: int, seed: int, n_features: tuple[int, ...] = (1, 28, 28)) -> Split:
    """Synthetic, learnable classification data: labels come from a fixed random linear map."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *n_features), generator=g)
    proj = torch.randn(x[0].numel(), 10, generator=torch.Generator().manual_seed(1234))
    y = (x.reshape(n, -1) @ proj).argmax(1)
    return Split(x, y)


@pytest.fixture(scope="session")
def split_factory():
    """make_split as a fixture: ``split_factory(n, seed)`` -> synthetic Split."""
    return make_split


@pytest.fixture
def small_split() -> Split:
    """48 MNIST-shaped images with 10 classes (48 = 3 batches of 16)."""
    return make_split(48, seed=0)


@pytest.fixture(scope="session")
def pretrain_run(tmp_path_factory: pytest.TempPathFactory, mnist_mirror: Path) -> Path:
    """A project copy after `snakemake --configfile config/pretrain_quick.yaml` completed."""
    return run_preset(
        project_copy(tmp_path_factory.mktemp("pretrain_quick")),
        "config/pretrain_quick.yaml",
        mnist_mirror,
    )
