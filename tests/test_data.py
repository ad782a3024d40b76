"""Raw-data verification, mirror resolution, prepared splits and the evaluation subset."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from prunetime import data
from prunetime.data import DataError, eval_indices, fetch_raw, load_prepared, prepare_dataset

FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _fake_mirror(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """A mirror folder linking to the real files (cheap), minus ``skip``."""
    dst.mkdir(parents=True)
    for name in FILES:
        if name not in skip:
            (dst / name).symlink_to(src / name)
    return dst


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.frombuffer(fh.read()[header:], dtype=np.uint8)


# --- the real mirror -------------------------------------------------------------------


def test_prepare_dataset_real_mirror_sizes(prepared_mnist):
    assert prepared_mnist["counts"] == {"train_y": 55000, "val_y": 5000, "test_y": 10000}
    blob = torch.load(prepared_mnist["path"], weights_only=True)
    assert blob["train_x"].shape == (55000, 28, 28) and blob["train_x"].dtype == torch.uint8
    assert blob["val_x"].shape == (5000, 28, 28)
    assert blob["test_x"].shape == (10000, 28, 28)
    assert blob["train_y"].dtype == torch.int64
    assert blob["meta"] == {"dataset": "mnist", "n_val": 5000, "split_seed": 0}


def test_prepare_dataset_partitions_the_original_files(prepared_mnist, mnist_mirror):
    """Train + val is exactly the original training set, test is the original test set
    (checked against the .gz files parsed here with gzip/numpy, not torchvision)."""
    blob = torch.load(prepared_mnist["path"], weights_only=True)
    labels = _read_idx(mnist_mirror / "train-labels-idx1-ubyte.gz", 8).astype(np.int64)
    images = _read_idx(mnist_mirror / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    t_labels = _read_idx(mnist_mirror / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    t_images = _read_idx(mnist_mirror / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)

    split_counts = np.bincount(blob["train_y"].numpy(), minlength=10) + np.bincount(
        blob["val_y"].numpy(), minlength=10
    )
    assert np.array_equal(split_counts, np.bincount(labels, minlength=10))
    # every image exactly once: per-image pixel sums form the same multiset
    sums = np.concatenate(
        [
            blob["train_x"].numpy().reshape(-1, 784).sum(1),
            blob["val_x"].numpy().reshape(-1, 784).sum(1),
        ]
    )
    assert np.array_equal(np.sort(sums), np.sort(images.reshape(-1, 784).sum(1)))
    assert np.array_equal(blob["test_y"].numpy(), t_labels)
    assert np.array_equal(blob["test_x"].numpy(), t_images)
    # labels stay attached to their images: look up a few val images in the original set
    flat = images.reshape(len(images), -1)
    for i in (0, 1234, 4999):
        img = blob["val_x"][i].numpy().reshape(-1)
        hits = np.flatnonzero((flat == img).all(1))
        assert len(hits) >= 1
        assert int(blob["val_y"][i]) in set(labels[hits].tolist())


def test_prepare_dataset_deterministic_per_split_seed(prepared_mnist, mnist_mirror):
    raw = prepared_mnist["raw"]
    out = prepared_mnist["root"]
    prepare_dataset("mnist", raw, out / "same.pt", n_val=5000, split_seed=0, mirror=mnist_mirror)
    prepare_dataset("mnist", raw, out / "other.pt", n_val=5000, split_seed=1, mirror=mnist_mirror)
    first = torch.load(prepared_mnist["path"], weights_only=True)
    same = torch.load(out / "same.pt", weights_only=True)
    other = torch.load(out / "other.pt", weights_only=True)
    for key in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(first[key], same[key]), key
    assert not torch.equal(first["val_x"], other["val_x"])
    assert not torch.equal(first["val_y"], other["val_y"])
    assert torch.equal(first["test_x"], other["test_x"])  # the test split never moves


def test_load_prepared_float_unit_range(prepared_mnist):
    prep = load_prepared(prepared_mnist["path"])
    for split, n in ((prep.train, 55000), (prep.val, 5000), (prep.test, 10000)):
        assert split.x.shape == (n, 1, 28, 28)
        assert split.x.dtype == torch.float32
        assert float(split.x.min()) == 0.0 and float(split.x.max()) == 1.0
        assert split.y.shape == (n,) and split.y.dtype == torch.int64
        assert len(split) == n
    raw = torch.load(prepared_mnist["path"], weights_only=True)
    assert torch.equal(prep.val.x[:, 0], raw["val_x"].float() / 255.0)
    std = load_prepared(prepared_mnist["path"], normalize="standardize")
    assert torch.allclose(std.val.x, (prep.val.x - 0.1307) / 0.3081, atol=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        load_prepared(prepared_mnist["path"], normalize="zscore")


# --- corrupted or incomplete mirrors ---------------------------------------------------


@pytest.mark.parametrize(
    ("victim", "damage"),
    [
        ("train-labels-idx1-ubyte.gz", "truncate"),
        ("t10k-labels-idx1-ubyte.gz", "flip"),
        ("train-images-idx3-ubyte.gz", "flip"),
    ],
)
def test_md5_check_rejects_corrupted_file(mnist_mirror, tmp_path, victim, damage):
    mirror = _fake_mirror(mnist_mirror, tmp_path / "mirror", skip=(victim,))
    content = bytearray((mnist_mirror / victim).read_bytes())
    if damage == "truncate":
        content = content[: len(content) // 2]
    else:
        content[len(content) // 2] ^= 0xFF
    (mirror / victim).write_bytes(bytes(content))

    out = tmp_path / "prepared.pt"
    with pytest.raises(DataError, match="MD5") as info:
        prepare_dataset("mnist", tmp_path / "raw", out, n_val=5000, split_seed=0, mirror=mirror)
    assert victim in str(info.value)
    assert not out.exists()
    assert list(tmp_path.glob("*.pt")) == [] and list(tmp_path.glob(".prepared.pt*")) == []
    assert not (tmp_path / "raw" / "MNIST" / "raw" / victim).exists()

    with pytest.raises(DataError, match=victim):
        fetch_raw("mnist", tmp_path / "raw2", mirror=mirror)


@pytest.mark.parametrize("missing", ["t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz"])
def test_mirror_lacking_a_file(mnist_mirror, tmp_path, missing):
    mirror = _fake_mirror(mnist_mirror, tmp_path / "mirror", skip=(missing,))
    out = tmp_path / "prepared.pt"
    with pytest.raises(DataError, match=missing):
        prepare_dataset("mnist", tmp_path / "raw", out, n_val=5000, split_seed=0, mirror=mirror)
    assert not out.exists()


def test_prepare_dataset_rejects_bad_n_val(prepared_mnist, mnist_mirror, tmp_path):
    out = tmp_path / "p.pt"
    with pytest.raises(DataError, match="n_val"):
        prepare_dataset("mnist", prepared_mnist["raw"], out, 60000, 0, mirror=mnist_mirror)
    assert not out.exists()


def test_fetch_raw_copies_verified_files(mnist_mirror, tmp_path):
    raw = fetch_raw("mnist", tmp_path, mirror=mnist_mirror)
    assert raw == tmp_path / "MNIST" / "raw"
    for name in FILES:
        assert (raw / name).read_bytes() == (mnist_mirror / name).read_bytes()


# --- mirror resolution -----------------------------------------------------------------


def test_resolve_mirror_folder_and_parent(mnist_mirror, tmp_path, monkeypatch):
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    assert data.resolve_mirror("mnist", mnist_mirror) == mnist_mirror
    assert data.resolve_mirror("mnist", str(mnist_mirror)) == mnist_mirror
    parent = tmp_path / "root"
    _fake_mirror(mnist_mirror, parent / "mnist")
    assert data.resolve_mirror("mnist", parent) == parent / "mnist"
    assert data.resolve_mirror("mnist", None) is None
    assert data.resolve_mirror("mnist", "") is None


def test_resolve_mirror_from_environment(mnist_mirror, tmp_path, monkeypatch):
    parent = tmp_path / "envroot"
    _fake_mirror(mnist_mirror, parent / "mnist")
    monkeypatch.setenv(data.MIRROR_ENV, str(parent))
    assert data.resolve_mirror("mnist", None) == parent / "mnist"
    # an explicit value wins over the environment
    assert data.resolve_mirror("mnist", mnist_mirror) == mnist_mirror
    # and fetch_raw uses the environment when given no mirror
    raw = fetch_raw("mnist", tmp_path / "raw")
    # the verified .gz files and their extracted content (so torchvision never downloads)
    expected = sorted([*FILES, *(f.removesuffix(".gz") for f in FILES)])
    assert sorted(p.name for p in raw.iterdir()) == expected


def test_resolve_mirror_errors(mnist_mirror, tmp_path, monkeypatch):
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    with pytest.raises(DataError, match="not a folder"):
        data.resolve_mirror("mnist", tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        data.resolve_mirror("mnist", empty)
    with pytest.raises(DataError, match="cifar"):
        data.resolve_mirror("cifar", mnist_mirror)


def test_md5sum_matches_published_list(mnist_mirror):
    published = dict(
        line.split()[::-1] for line in (mnist_mirror / "MD5SUMS").read_text().splitlines() if line
    )
    for name in FILES:
        assert data.md5sum(mnist_mirror / name) == published[name]


# --- the evaluation subset -------------------------------------------------------------


def test_eval_indices():
    a = eval_indices(5000, 1000, seed=0)
    assert torch.equal(a, eval_indices(5000, 1000, seed=0))
    assert len(a) == 1000 and a.dtype == torch.int64
    assert torch.equal(a, a.sort().values)
    assert len(torch.unique(a)) == 1000
    assert int(a.min()) >= 0 and int(a.max()) < 5000
    assert not torch.equal(a, eval_indices(5000, 1000, seed=1))
    assert torch.equal(eval_indices(50, 50, seed=3), torch.arange(50))
    for bad in (5001, 0):
        with pytest.raises(ValueError, match="eval.size"):
            eval_indices(5000, bad, seed=0)


def test_split_subset():
    s = data.Split(torch.arange(10.0).reshape(10, 1), torch.arange(10))
    sub = s.subset(torch.tensor([7, 2]))
    assert len(sub) == 2 and sub.y.tolist() == [7, 2] and sub.x[:, 0].tolist() == [7.0, 2.0]


def test_split_batch_gathers_the_same_rows_as_indexing(prepared_mnist):
    """A minibatch from index_select equals advanced indexing, for one trial's batch and for
    a (trials, batch) block of indices; labels stay aligned with their images."""
    train = load_prepared(prepared_mnist["path"]).train
    gen = torch.Generator().manual_seed(3)
    idx = torch.randint(0, len(train), (128,), generator=gen)
    x, y = train.batch(idx)
    assert x.shape == (128, 1, 28, 28) and torch.equal(x, train.x[idx])
    assert torch.equal(y, train.y[idx])
    block = torch.randint(0, len(train), (4, 32), generator=gen)
    xb, yb = train.batch(block)
    assert xb.shape == (4, 32, 1, 28, 28) and torch.equal(xb, train.x[block])
    assert torch.equal(yb, train.y[block])
    assert torch.equal(xb[2, 5], train.x[block[2, 5]]) and yb[2, 5] == train.y[block[2, 5]]
