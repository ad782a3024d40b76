"""Mirrors holding re-compressed originals: Debian's Fashion-MNIST and a re-gzipped MNIST."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from prunetime.data import DataError, load_prepared, prepare_dataset

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_fashion_mnist_from_debian_package(tmp_path: Path) -> None:
    """Debian's dataset-fashion-mnist re-gzipped the originals: accepted by content MD5."""
    if not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
        )
    out = tmp_path / "fashion.pt"
    counts = prepare_dataset(
        "fashion_mnist", tmp_path / "raw", out, 5000, 0, mirror=DEBIAN_FASHION.parent
    )
    assert counts == {"train_y": 55000, "val_y": 5000, "test_y": 10000}
    prep = load_prepared(out)
    labels = torch.cat([prep.train.y, prep.val.y])
    assert torch.equal(torch.bincount(labels), torch.full((10,), 6000))  # balanced, as published
    assert torch.equal(torch.bincount(prep.test.y), torch.full((10,), 1000))


def test_recompressed_mnist_gives_identical_prepared_data(
    tmp_path: Path, mnist_mirror: Path
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for f in mnist_mirror.glob("*.gz"):
        shutil.copy2(f, mirror / f.name)
    victim = mirror / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(
        gzip.compress(gzip.decompress(victim.read_bytes()), compresslevel=1, mtime=0)
    )
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    prepare_dataset("mnist", tmp_path / "raw_a", a, 5000, 0, mirror=mnist_mirror)
    prepare_dataset("mnist", tmp_path / "raw_b", b, 5000, 0, mirror=mirror)
    pa, pb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for key in ("train_x", "train_y", "val_y", "test_y"):
        assert torch.equal(pa[key], pb[key])


def test_recompressed_but_altered_content_is_refused(tmp_path: Path, mnist_mirror: Path) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(mnist_mirror, mirror)
    victim = mirror / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(victim.read_bytes()))
    raw[100] = (raw[100] + 3) % 10
    victim.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz.*content is not the original"):
        prepare_dataset("mnist", tmp_path / "raw", tmp_path / "p.pt", 5000, 0, mirror=mirror)
    assert not (tmp_path / "p.pt").exists()
