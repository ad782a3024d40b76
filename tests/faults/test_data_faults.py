"""Raw data faults: corrupted files and no network are refused fast, with a useful message."""

from __future__ import annotations

import gzip
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from prunetime.data import MIRROR_ENV, DataError, prepare_dataset


def mirror_copy(src: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in src.glob("*.gz"):
        shutil.copy2(f, dest / f.name)
    return dest


@pytest.mark.parametrize("fault", ["truncated", "altered"])
def test_corrupted_raw_file_fails_md5_naming_it(
    tmp_path: Path, mnist_mirror: Path, fault: str
) -> None:
    mirror = mirror_copy(mnist_mirror, tmp_path / "mirror")
    victim = mirror / "t10k-labels-idx1-ubyte.gz"
    data = victim.read_bytes()
    if fault == "truncated":
        victim.write_bytes(data[: len(data) // 2])
    else:  # a valid gzip whose content differs by one label
        raw = bytearray(gzip.decompress(data))
        raw[-1] = (raw[-1] + 1) % 10
        victim.write_bytes(gzip.compress(bytes(raw)))
    out = tmp_path / "prepared" / "mnist.pt"
    with pytest.raises(DataError, match=r"MD5 mismatch for .*t10k-labels-idx1-ubyte\.gz"):
        prepare_dataset("mnist", tmp_path / "raw", out, 5000, 0, mirror=mirror)
    assert not out.exists() and not out.parent.exists()
    # nothing half-copied is left behind under the name of the corrupted file
    assert not list((tmp_path / "raw").rglob("t10k-labels-idx1-ubyte.gz"))


def test_no_network_no_mirror_fails_fast_with_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mirror URL that accepts connections and never answers stands in for a dead network."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)  # connections complete in the kernel backlog; nothing ever replies
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
    port = server.getsockname()[1]
    out = tmp_path / "prepared" / "mnist.pt"
    t0 = time.monotonic()
    try:
        with pytest.raises(DataError) as info:
            prepare_dataset(
                "mnist",
                tmp_path / "raw",
                out,
                5000,
                0,
                mirror=None,
                urls=[f"http://127.0.0.1:{port}/a/", f"http://127.0.0.1:{port}/b/"],
            )
    finally:
        stop.set()
        server.close()
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"took {elapsed:.1f} s"
    message = str(info.value)
    assert MIRROR_ENV in message and "data.mirror" in message
    assert not out.exists()


def test_mirror_env_pointing_nowhere_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nope"))
    with pytest.raises(DataError, match="nope.*is not a folder"):
        prepare_dataset("mnist", tmp_path / "raw", tmp_path / "p.pt", 5000, 0)
