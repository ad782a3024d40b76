"""CIFAR-10 in the data step, on a tiny archive generated in the real python-pickle format."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from prunetime.data import DataError, load_prepared, prepare_dataset

BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
PER_BATCH = 6


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def tiny_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """cifar-10-python.tar.gz with 5 x 6 training and 6 test images; torchvision's checksum
    list is pointed at this archive's files (the original's MD5s cannot match it)."""
    from torchvision.datasets import CIFAR10

    rng = np.random.default_rng(0)
    files, arrays = {}, {}
    for name in [*BATCHES, "test_batch"]:
        data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, PER_BATCH).tolist()
        arrays[name] = (data, labels)
        entry = {"batch_label": name, "labels": labels, "data": data, "filenames": []}
        files[name] = pickle.dumps(entry, protocol=2)
    files["batches.meta"] = pickle.dumps({"label_names": [f"c{i}" for i in range(10)]})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    mirror = tmp_path / "mirror" / "cifar-10"
    mirror.mkdir(parents=True)
    (mirror / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    monkeypatch.setattr(CIFAR10, "tgz_md5", _md5(buf.getvalue()))
    monkeypatch.setattr(CIFAR10, "train_list", [[n, _md5(files[n])] for n in BATCHES])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(files["test_batch"])]])
    meta = {"filename": "batches.meta", "key": "label_names", "md5": _md5(files["batches.meta"])}
    monkeypatch.setattr(CIFAR10, "meta", meta)
    return {"mirror": tmp_path / "mirror", "arrays": arrays, "root": tmp_path}


def test_prepare_cifar10_keeps_images_labels_and_channel_order(tiny_cifar: dict) -> None:
    root = tiny_cifar["root"]
    counts = prepare_dataset(
        "cifar10", root / "raw", root / "c.pt", n_val=5, split_seed=0, mirror=tiny_cifar["mirror"]
    )
    assert counts == {"train_y": 25, "val_y": 5, "test_y": 6}
    blob = torch.load(root / "c.pt", weights_only=True)
    assert blob["train_x"].shape == (25, 3, 32, 32) and blob["train_x"].dtype == torch.uint8
    data, labels = tiny_cifar["arrays"]["test_batch"]
    assert torch.equal(blob["test_x"], torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert blob["test_y"].tolist() == labels
    # train + val is exactly the five training batches, labels attached to their images
    train = np.concatenate([tiny_cifar["arrays"][b][0] for b in BATCHES])
    train_y = sum((tiny_cifar["arrays"][b][1] for b in BATCHES), [])
    got = torch.cat([blob["train_x"], blob["val_x"]]).reshape(30, -1).numpy()
    got_y = torch.cat([blob["train_y"], blob["val_y"]]).tolist()
    pairs = sorted(zip(map(bytes, got), got_y, strict=True))
    assert pairs == sorted(zip(map(bytes, train), train_y, strict=True))
    prep = load_prepared(root / "c.pt")
    assert prep.train.x.shape == (25, 3, 32, 32) and float(prep.train.x.max()) <= 1.0
    assert torch.equal(prep.test.x, blob["test_x"].float() / 255.0)


def test_corrupted_cifar_archive_is_refused(tiny_cifar: dict) -> None:
    archive = tiny_cifar["mirror"] / "cifar-10" / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-10])
    root = tiny_cifar["root"]
    with pytest.raises(DataError, match="MD5 mismatch.*cifar-10-python.tar.gz"):
        prepare_dataset("cifar10", root / "raw", root / "c.pt", 5, 0, mirror=tiny_cifar["mirror"])
    assert not (root / "c.pt").exists()


def test_cifar_mirror_without_archive_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        prepare_dataset("cifar10", tmp_path / "raw", tmp_path / "c.pt", 5, 0, mirror=tmp_path)
