"""Raw data fetching (torchvision, MD5-verified, offline mirror) and compact prepared tensors.

Training jobs only ever call :func:`load_prepared`, which needs torch alone: torchvision is
imported inside :func:`prepare_dataset`, so job start-up stays cheap.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from prunetime.io import atomic_path

MIRROR_ENV = "PRUNETIME_DATA_MIRROR"

# Dataset name -> (torchvision class name, sub-folder names a mirror may use for it).
DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mnist": ("MNIST", ("mnist", "MNIST")),
    "fashion_mnist": ("FashionMNIST", ("fashion-mnist", "fashion_mnist", "FashionMNIST")),
    "cifar10": ("CIFAR10", ("cifar10", "cifar-10", "CIFAR10")),
}


class DataError(RuntimeError):
    """Raw data missing, corrupted or unreachable; the message says which file and what to do."""


def _torchvision_class(dataset: str) -> type:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; allowed: {sorted(DATASETS)}")
    from torchvision import datasets  # heavy import, only in the data step

    return getattr(datasets, DATASETS[dataset][0])


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_mirror(dataset: str, mirror: str | os.PathLike[str] | None) -> Path | None:
    """The folder holding the original .gz files: the config value, else $PRUNETIME_DATA_MIRROR.

    A mirror may hold the files directly or in a per-dataset sub-folder (``mnist/``,
    ``fashion-mnist/``), so one mirror root can serve several datasets.
    """
    value = mirror if mirror not in (None, "") else os.environ.get(MIRROR_ENV) or None
    if value is None:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise DataError(f"data mirror {str(root)!r} (data.mirror / ${MIRROR_ENV}) is not a folder")
    cls = _torchvision_class(dataset)
    first = cls.resources[0][0]
    for candidate in (root, *(root / sub for sub in DATASETS[dataset][1])):
        if (candidate / first).is_file():
            return candidate
    raise DataError(
        f"data mirror {str(root)!r} holds no {first!r} for dataset {dataset!r} "
        f"(looked in it and in sub-folders {list(DATASETS[dataset][1])})"
    )


def fetch_raw(
    dataset: str,
    root: Path,
    mirror: str | os.PathLike[str] | None = None,
    urls: Sequence[str] | None = None,
) -> Path:
    """Place the verified original files under ``root/<Class>/raw`` and return that folder.

    Every file's MD5 is checked against torchvision's list, whether copied from the mirror
    or downloaded (from ``urls``, default torchvision's mirrors); a mismatch raises
    :class:`DataError` naming the file.
    """
    if dataset == "cifar10":
        return fetch_cifar10(root, mirror, urls)
    cls = _torchvision_class(dataset)
    raw = Path(root) / cls.__name__ / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    src = resolve_mirror(dataset, mirror)
    for filename, md5 in cls.resources:
        target = raw / filename
        if src is not None:
            origin = src / filename
            if not origin.is_file():
                raise DataError(f"data mirror {str(src)!r} lacks {filename!r}")
            actual = md5sum(origin)
            if actual == md5:
                with atomic_path(target) as tmp:
                    shutil.copyfile(origin, tmp)
                _gunzip(target, raw / filename.removesuffix(".gz"))
                continue
            content = CONTENT_MD5[dataset].get(filename)
            plain = _gunzip_md5(origin)
            if content is None or plain != content:
                raise DataError(
                    f"MD5 mismatch for {str(origin)!r}: expected {md5}, got {actual}, and its "
                    "content is not the original either (file truncated or altered; replace "
                    "it with the original)"
                )
            # Re-compressed original (e.g. Debian's dataset-fashion-mnist): same content,
            # other gzip header. Place it uncompressed, where torchvision looks first.
            _gunzip(origin, raw / filename.removesuffix(".gz"))
            continue
        elif not (target.is_file() and md5sum(target) == md5):
            _download(urls or cls.mirrors, filename, md5, raw)
        actual = md5sum(target)
        if actual != md5:
            target.unlink()
            raise DataError(f"MD5 mismatch for {str(target)!r}: expected {md5}, got {actual}")
        _gunzip(target, raw / filename.removesuffix(".gz"))
    return raw


def _gunzip(src: Path, dest: Path) -> None:
    """Extract a verified .gz file, so torchvision finds every file and never downloads."""
    with atomic_path(dest) as tmp, gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


# MD5 of the uncompressed original files, to recognise re-compressed copies of them.
CONTENT_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


def _gunzip_md5(path: Path) -> str | None:
    """MD5 of a gzip file's content, or None when it is not a readable gzip file."""
    h = hashlib.md5()
    try:
        with gzip.open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, EOFError):
        return None
    return h.hexdigest()


DOWNLOAD_DEADLINE_S = 8.0


def _download(urls: Sequence[str], filename: str, md5: str, raw: Path) -> None:
    """Download one file from the first mirror that answers, giving up within the deadline.

    Without network every mirror fails; the deadline bounds the whole attempt so the data
    step says what to do in seconds instead of hanging on unanswered connections.
    """
    import socket
    import time

    from torchvision.datasets.utils import download_url

    errors = []
    old = socket.getdefaulttimeout()
    deadline = time.monotonic() + DOWNLOAD_DEADLINE_S
    try:
        for base in urls:
            left = deadline - time.monotonic()
            if left <= 0.5:
                errors.append(f"{base}: not tried (deadline of {DOWNLOAD_DEADLINE_S:g} s)")
                continue
            socket.setdefaulttimeout(min(left, DOWNLOAD_DEADLINE_S / 2))
            try:
                download_url(f"{base}{filename}", str(raw), filename=filename, md5=md5)
                return
            except Exception as exc:  # noqa: BLE001 - every failure means "try the next mirror"
                errors.append(f"{base}: {exc}")
    finally:
        socket.setdefaulttimeout(old)
    raise DataError(
        f"could not download {filename!r} ({'; '.join(errors)}). Without network, point "
        f"${MIRROR_ENV} (or config key data.mirror) at a folder holding the original .gz files"
    )


def prepare_dataset(
    dataset: str,
    raw_root: Path,
    out_path: Path,
    n_val: int,
    split_seed: int,
    mirror: str | os.PathLike[str] | None = None,
    urls: Sequence[str] | None = None,
) -> dict[str, int]:
    """Verify/fetch the raw files, split train into train/val deterministically, save uint8 tensors.

    The output holds images as uint8 [N, 28, 28] and labels as int64, so later jobs load it
    in milliseconds with ``torch.load(weights_only=True)``.
    """
    cls = _torchvision_class(dataset)
    fetch_raw(dataset, raw_root, mirror, urls)
    if dataset == "cifar10":
        train, test = _cifar10_splits(raw_root)
    else:
        # torchvision extracts the verified .gz files (no download: they pass its MD5 check).
        train = cls(str(raw_root), train=True, download=True)
        test = cls(str(raw_root), train=False, download=True)
    x, y = train.data.clone(), train.targets.clone().long()
    if not 0 < n_val < len(x):
        raise DataError(f"data.n_val={n_val} must lie in (0, {len(x)})")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    payload = {
        "train_x": x[train_idx].contiguous(),
        "train_y": y[train_idx].contiguous(),
        "val_x": x[val_idx].contiguous(),
        "val_y": y[val_idx].contiguous(),
        "test_x": test.data.clone().contiguous(),
        "test_y": test.targets.clone().long().contiguous(),
        "meta": {"dataset": dataset, "n_val": n_val, "split_seed": split_seed},
    }
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)
    return {k: len(v) for k, v in payload.items() if k.endswith("_y")}


# Samples per forward pass when evaluating a split without autograd. Bounded chunks keep
# each layer's output small: a LeNet-5 evaluation of 10k images ran 3.5x faster in chunks of
# 256 than in one pass (when max_pool2d still ran there), and 2.6x slower in chunks of 2000
# than of 1000 (its first map is then 38 MB). Since checks pool with strided maxima, 1000
# images in one pass were the fastest check for both LeNets (LeNet-300-100 1.2x, LeNet-5
# 1.07x against 256; benchmarks/README.md).
EVAL_CHUNK = 1000
# Samples per forward/backward pass when a gradient over a split is accumulated: autograd
# keeps every layer's output, and a LeNet-5 gradient over 1000 images took 209 ms in one
# pass against 140 ms in chunks of 256.
GRAD_CHUNK = 256


@dataclass
class Split:
    """One split as float tensors on the training device (images scaled to [0, 1])."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> Split:
        return Split(self.x[idx], self.y[idx])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels at ``idx`` (any shape of indices, leading the result's shape).

        ``index_select`` instead of advanced indexing: the same rows, 1.6x faster for a
        128-image batch on the CPU, where the gather was about 7 % of a LeNet-300-100 step.
        """
        flat = idx.reshape(-1)
        x = self.x.index_select(0, flat).view(*idx.shape, *self.x.shape[1:])
        return x, self.y.index_select(0, flat).view(idx.shape)


@dataclass
class Prepared:
    train: Split
    val: Split
    test: Split


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def load_prepared(path: Path, normalize: str = "unit", device: str = "cpu") -> Prepared:
    """Load prepared tensors as float32 once per job (moved to the device once)."""
    blob = torch.load(path, weights_only=True)

    def conv(x: torch.Tensor) -> torch.Tensor:
        out = x.to(torch.float32).div_(255.0)
        out = out.unsqueeze(1) if out.dim() == 3 else out  # colour images are [N, 3, H, W]
        if normalize == "standardize":
            out = out.sub_(MNIST_MEAN).div_(MNIST_STD)
        elif normalize != "unit":
            raise ValueError(f"data.normalize={normalize!r}; allowed: 'unit', 'standardize'")
        return out.to(device)

    return Prepared(
        *(Split(conv(blob[f"{s}_x"]), blob[f"{s}_y"].to(device)) for s in ("train", "val", "test"))
    )


def eval_indices(n_val: int, size: int, seed: int) -> torch.Tensor:
    """The fixed, seeded evaluation subset of the validation split (THEORY.md: Evaluation set)."""
    if not 0 < size <= n_val:
        raise ValueError(f"eval.size={size} must lie in (0, {n_val}] (the validation split)")
    perm = torch.randperm(n_val, generator=torch.Generator().manual_seed(seed))
    return perm[:size].sort().values


# --------------------------------------------------------------------------- CIFAR-10


def _cifar10_mirror(mirror: str | os.PathLike[str] | None, filename: str) -> Path | None:
    """The folder holding ``cifar-10-python.tar.gz`` (directly or in a cifar sub-folder)."""
    value = mirror if mirror not in (None, "") else os.environ.get(MIRROR_ENV) or None
    if value is None:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise DataError(f"data mirror {str(root)!r} (data.mirror / ${MIRROR_ENV}) is not a folder")
    for candidate in (root, *(root / sub for sub in DATASETS["cifar10"][1])):
        if (candidate / filename).is_file():
            return candidate
    raise DataError(
        f"data mirror {str(root)!r} holds no {filename!r} for dataset 'cifar10' "
        f"(looked in it and in sub-folders {list(DATASETS['cifar10'][1])})"
    )


def fetch_cifar10(
    root: Path, mirror: str | os.PathLike[str] | None = None, urls: Sequence[str] | None = None
) -> Path:
    """Place the verified CIFAR-10 python archive under ``root/CIFAR10`` and extract it.

    The archive's MD5 is checked against torchvision's, whether copied from a mirror or
    downloaded; torchvision then checks every extracted batch file against its own list.
    """
    import tarfile

    cls = _torchvision_class("cifar10")
    folder = Path(root) / cls.__name__
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / cls.filename
    src = _cifar10_mirror(mirror, cls.filename)
    if src is not None:
        actual = md5sum(src / cls.filename)
        if actual != cls.tgz_md5:
            raise DataError(
                f"MD5 mismatch for {str(src / cls.filename)!r}: expected {cls.tgz_md5}, got "
                f"{actual} (file truncated or altered; replace it with the original)"
            )
        with atomic_path(archive) as tmp:
            shutil.copyfile(src / cls.filename, tmp)
    elif not (archive.is_file() and md5sum(archive) == cls.tgz_md5):
        base = cls.url.rsplit("/", 1)[0] + "/"
        _download(urls or [base], cls.filename, cls.tgz_md5, folder)
    actual = md5sum(archive)
    if actual != cls.tgz_md5:
        archive.unlink()
        raise DataError(f"MD5 mismatch for {str(archive)!r}: expected {cls.tgz_md5}, got {actual}")
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(folder, filter="data")
    return folder


class _ImageSet:
    """Images as a uint8 tensor [N, C, H, W] and labels, like torchvision's MNIST classes."""

    def __init__(self, data: torch.Tensor, targets: torch.Tensor) -> None:
        self.data, self.targets = data, targets


def _cifar10_splits(raw_root: Path) -> tuple[_ImageSet, _ImageSet]:
    """Train and test split of the extracted archive (torchvision verifies every file)."""
    cls = _torchvision_class("cifar10")
    out = []
    for train in (True, False):
        try:
            ds = cls(str(Path(raw_root) / cls.__name__), train=train, download=False)
        except RuntimeError as exc:
            raise DataError(f"CIFAR-10 files under {str(raw_root)!r}: {exc}") from None
        data = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        out.append(_ImageSet(data, torch.tensor(ds.targets, dtype=torch.int64)))
    return out[0], out[1]
