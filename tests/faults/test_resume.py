"""Resumable training: a killed dense training resumes to exactly the uninterrupted result."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from prunetime import training
from prunetime.data import Split
from prunetime.journal import TrialJournal


class Killed(Exception):
    pass


def data() -> Split:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, 28, 28, generator=g)
    return Split(x, (x.flatten(1)[:, :10].argmax(1)))


def model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Sigmoid(), nn.Linear(32, 10))


def train(m: nn.Module, split: Split, **kw) -> training.DenseResult:
    return training.train_dense(
        m,
        split,
        split,
        optimizer="adam",
        lr=0.01,
        batch_size=32,
        steps=40,
        generator=torch.Generator().manual_seed(5),
        log_every=7,
        **kw,
    )


@pytest.mark.parametrize("kill_at", [13, 20, 39])
def test_killed_dense_training_resumes_to_identical_weights(tmp_path: Path, kill_at: int) -> None:
    split = data()
    ref_model = model()
    ref = train(ref_model, split)

    ckpt = tmp_path / "resume.pt"

    def die(step: int, total: int) -> None:
        if step == kill_at:
            raise Killed

    with pytest.raises(Killed):
        train(model(), split, resume=ckpt, checkpoint_every=5, fingerprint="job", progress=die)
    assert ckpt.is_file()
    saved_step = torch.load(ckpt, weights_only=True)["step"]
    assert saved_step == (kill_at // 5) * 5  # the last checkpoint before the kill

    resumed_model = model()  # a fresh process would rebuild the model from scratch
    res = train(resumed_model, split, resume=ckpt, checkpoint_every=5, fingerprint="job")
    for a, b in zip(
        ref_model.state_dict().values(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    # the whole curve too, including the running training loss across the kill
    assert len(res.curve) == len(ref.curve)
    for r1, r2 in zip(res.curve, ref.curve, strict=True):
        for key in r1:
            assert r1[key] == r2[key] or (math.isnan(r1[key]) and math.isnan(r2[key])), key


def test_checkpoint_of_another_job_is_ignored(tmp_path: Path) -> None:
    split = data()
    ckpt = tmp_path / "resume.pt"

    def die(step: int, total: int) -> None:
        if step == 12:
            raise Killed

    with pytest.raises(Killed):
        train(
            model(), split, resume=ckpt, checkpoint_every=5, fingerprint="old-config", progress=die
        )
    ref_model, other = model(), model()
    train(ref_model, split)
    train(other, split, resume=ckpt, checkpoint_every=5, fingerprint="new-config")
    for a, b in zip(ref_model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_trial_journal_keeps_finished_trials_for_the_same_job_only(tmp_path: Path) -> None:
    path = tmp_path / "job.journal.pt"
    j = TrialJournal(path, "fp1")
    j.add(0, {"iterations": 12, "curve": [1.0, 0.5]})
    j.add(2, {"iterations": 0, "curve": [0.1]})
    again = TrialJournal(path, "fp1")
    assert 0 in again and 2 in again and 1 not in again
    assert again[0] == {"iterations": 12, "curve": [1.0, 0.5]}
    assert len(TrialJournal(path, "fp2").records) == 0  # a changed job starts afresh
    again.discard()
    assert not path.exists()
