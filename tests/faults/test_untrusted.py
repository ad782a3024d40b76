"""Untrusted files: checkpoints never execute pickled code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from prunetime.io import load_torch, save_torch


class Payload:
    """Unpickling this would run a shell command: the loader must refuse it."""

    def __reduce__(self):  # noqa: D105
        return (os.system, ("touch PWNED",))


def test_plain_checkpoint_round_trips(tmp_path: Path) -> None:
    obj = {"w": torch.arange(6.0).reshape(2, 3), "step": 7, "names": ["fc1.weight"]}
    save_torch(tmp_path / "ok.pt", obj)
    back = load_torch(tmp_path / "ok.pt")
    assert torch.equal(back["w"], obj["w"]) and back["step"] == 7


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pickled_payload_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save({"w": torch.zeros(2), "x": Payload()}, bad)
    else:
        bad.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(RuntimeError, match=r"refusing to load .*evil\.pt"):
        load_torch(bad)
    assert not (tmp_path / "PWNED").exists()
