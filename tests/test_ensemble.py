"""The batched retraining ensemble against trial-by-trial training and torch.optim."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunetime.data import Split
from prunetime.ensemble import StackedOptimizer, TrialSpec, retrain_trials
from prunetime.models import build_model

TOL = 1e-5  # batched vs one-by-one losses: the same arithmetic up to float reassociation
# Weights: Adam divides by sqrt(v), so on entries whose gradient is near zero a rounding
# difference of the batched matmul / grouped conv can move the step by a few 1e-5.
TOL_W = 1e-4


@pytest.fixture(scope="module")
def task() -> dict:
    """Random images with labels from a fixed random teacher (learnable, fast)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1200, 1, 28, 28, generator=g)
    teacher = torch.randn(784, 10, generator=g)
    y = (x.flatten(1) @ teacher).argmax(1)
    return {"train": Split(x[:1000], y[:1000]), "eval": Split(x[1000:], y[1000:])}


def trials(model: torch.nn.Module, n: int, keep: float = 0.5) -> list[TrialSpec]:
    state = {k: v.detach().clone() for k, v in model.named_parameters()}
    out = []
    for i in range(n):
        mg = torch.Generator().manual_seed(10 + i)
        masks = {
            k: torch.rand(v.shape, generator=mg) < keep for k, v in state.items() if "weight" in k
        }
        out.append(TrialSpec({k: v.clone() for k, v in state.items()}, masks, _gen(i)))
    return out


def _gen(i: int) -> torch.Generator:
    return torch.Generator().manual_seed(100 + i)


def eval_loss(model: torch.nn.Module, split: Split) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(split.x), split.y))


def run(model, specs, task, **kw):
    opts = dict(target_loss=0.0, eps=1e-9, optimizer="adam", lr=0.003, batch_size=32)
    opts.update(kw)
    return retrain_trials(model, specs, task["train"], task["eval"], **opts)


@pytest.mark.parametrize("arch", ["lenet300100", "lenet5"])
def test_ensemble_equals_trials_one_by_one(task, arch) -> None:
    torch.manual_seed(1)
    model = build_model(arch)
    start = eval_loss(model, task["eval"])
    kw = dict(target_loss=start - 0.3, eps=0.05, max_iters=40)
    seq = run(model, trials(model, 4), task, batched=False, **kw)
    bat = run(model, trials(model, 4), task, batched=True, **kw)
    assert [r.iterations for r in seq] == [r.iterations for r in bat]
    assert [r.status for r in seq] == [r.status for r in bat]
    assert len({r.iterations for r in seq}) > 1  # trials stop at their own steps
    for a, b, spec in zip(seq, bat, trials(model, 4), strict=True):
        for k in a.state:
            assert torch.allclose(a.state[k], b.state[k], atol=TOL_W, rtol=0)
        for k, m in spec.masks.items():  # every trial keeps its own mask exactly
            assert (b.state[k][~m] == 0).all() and (b.state[k][m] != 0).any()
        assert b.final_eval_loss == pytest.approx(a.final_eval_loss, abs=TOL)


def test_sparse_checks_with_replay_give_the_step_by_step_counts(task) -> None:
    torch.manual_seed(2)
    model = build_model("lenet300100")
    start = eval_loss(model, task["eval"])
    kw = dict(target_loss=start - 0.4, eps=0.05, max_iters=60)
    every1 = run(model, trials(model, 5), task, check_every=1, **kw)
    every7 = run(model, trials(model, 5), task, check_every=7, **kw)
    its = [r.iterations for r in every1]
    assert [r.iterations for r in every7] == its
    assert any(i % 7 for i in its if 0 < i < 60)  # counts are not multiples of the check step
    for a, b in zip(every1, every7, strict=True):
        assert a.status == b.status
        for k in a.state:
            assert torch.allclose(a.state[k], b.state[k], atol=TOL, rtol=0)
        steps = [s for s, _ in b.eval_losses]
        assert steps == sorted(steps) and steps[-1] == b.iterations
        if b.iterations >= 14:
            assert len(steps) < len(a.eval_losses)  # fewer checks than steps


def test_reference_loop_checks_every_step_and_counts_exactly(task) -> None:
    """check_every=1, one trial: the stopping step is the first step meeting the criterion."""
    torch.manual_seed(3)
    model = build_model("lenet300100")
    (full,) = run(
        model, trials(model, 1), task, check_every=1, max_iters=30, batched=False, screen=False
    )
    assert full.status == "capped" and [s for s, _ in full.eval_losses] == list(range(31))
    losses = [loss for _, loss in full.eval_losses]
    target = losses[17] - 1e-4  # first reached at step 17 (the curve is checked below)
    eps = max(abs(v - target) for v in losses[17:18]) + 1e-6
    first = next(t for t, v in enumerate(losses) if abs(v - target) <= eps)
    (res,) = run(
        model, trials(model, 1), task, target_loss=target, eps=eps, max_iters=30, check_every=4
    )
    assert res.status == "converged" and res.iterations == first


def test_divergence_is_found_per_trial_at_the_same_step(task) -> None:
    torch.manual_seed(4)
    model = build_model("lenet300100")
    kw = dict(lr=5.0, max_iters=30, divergence_factor=3.0)
    seq = run(model, trials(model, 3), task, batched=False, check_every=1, **kw)
    bat = run(model, trials(model, 3), task, batched=True, check_every=5, **kw)
    assert all(r.status == "diverged" for r in seq)
    assert [r.iterations for r in bat] == [r.iterations for r in seq]
    assert all(r.status == "diverged" for r in bat)


def test_already_converged_trial_is_not_trained_and_results_arrive_as_trials_stop(task) -> None:
    torch.manual_seed(5)
    model = build_model("lenet300100")
    specs = trials(model, 3, keep=1.0)
    start = eval_loss(model, task["eval"])
    seen: list[int] = []
    res = run(
        model,
        specs,
        task,
        target_loss=start,
        eps=1e-4,
        max_iters=20,
        on_result=lambda i, r: seen.append(i),
    )
    assert all(r.iterations == 0 and r.status == "converged" for r in res)
    assert sorted(seen) == [0, 1, 2]
    for r, s in zip(res, specs, strict=True):
        assert all(torch.equal(r.state[k], s.state[k]) for k in s.state)


def test_small_groups_give_the_same_results_as_one_group(task) -> None:
    torch.manual_seed(6)
    model = build_model("lenet300100")
    kw = dict(max_iters=15, check_every=3)
    one = run(model, trials(model, 5), task, **kw)
    groups = run(model, trials(model, 5), task, group_bytes=1, **kw)  # one trial per group
    for a, b in zip(one, groups, strict=True):
        assert a.iterations == b.iterations
        for k in a.state:
            assert torch.allclose(a.state[k], b.state[k], atol=TOL, rtol=0)


@pytest.mark.parametrize(("name", "momentum"), [("adam", 0.0), ("sgd", 0.0), ("sgd", 0.9)])
def test_stacked_optimizer_matches_torch_optim(name: str, momentum: float) -> None:
    g = torch.Generator().manual_seed(7)
    p_ref = torch.randn(3, 5, generator=g, requires_grad=True)
    ref = (
        torch.optim.Adam([p_ref], lr=0.01)
        if name == "adam"
        else torch.optim.SGD([p_ref], lr=0.01, momentum=momentum)
    )
    stacked = {"w": p_ref.detach().clone()[None].requires_grad_(True)}
    opt = StackedOptimizer(name, stacked, 0.01, momentum)
    for _ in range(5):
        grad = torch.randn(3, 5, generator=g)
        p_ref.grad = grad.clone()
        ref.step()
        stacked["w"].grad = grad[None].clone()
        opt.step(stacked)
    assert torch.allclose(stacked["w"][0], p_ref.detach(), atol=1e-6, rtol=0)  # a few ulps


def test_bad_check_interval_is_rejected(task) -> None:
    model = build_model("lenet300100")
    with pytest.raises(ValueError, match="check_every"):
        run(model, trials(model, 1), task, check_every=0, max_iters=3)


def test_ensemble_setting_auto_batches_fully_connected_networks_on_a_gpu_only() -> None:
    from prunetime.config import ConfigError, validate_config
    from prunetime.study import use_ensemble

    fc, conv = build_model("lenet300100"), build_model("lenet5")
    # On the CPU batching measured slower than one by one; on a GPU only FC networks batch.
    assert not use_ensemble("auto", fc, "cpu") and not use_ensemble("auto", conv, "cpu")
    assert use_ensemble("auto", fc, "cuda") and not use_ensemble("auto", conv, "cuda")
    assert use_ensemble(True, conv, "cpu") and not use_ensemble(False, fc, "cuda")
    base = {"architectures": {"mlp": {"model": "lenet300100"}}}
    assert validate_config(dict(base))["retrain"] == {
        "masked": True,
        "check_every": 1,
        "screen": True,
        "ensemble": "auto",
    }
    with pytest.raises(ConfigError, match="retrain.ensemble"):
        validate_config({**base, "retrain": {"ensemble": "yes"}})
    with pytest.raises(ConfigError, match="retrain.check_every"):
        validate_config({**base, "retrain": {"check_every": 0}})


@pytest.mark.parametrize("batched", [True, False])
def test_progress_counts_finished_trials_across_groups(task, batched: bool) -> None:
    torch.manual_seed(8)
    model = build_model("lenet300100")
    seen: list[dict] = []
    run(model, trials(model, 3), task, max_iters=4, batched=batched, progress=seen.append)
    assert seen and seen[-1]["done"] == 3  # one by one, every trial is counted too
    dones = [p["done"] for p in seen]
    assert dones == sorted(dones) and all(0 <= p["active"] <= 3 for p in seen)


@pytest.fixture(scope="module")
def bordered() -> dict:
    """MNIST-like images: a border that is zero in every image, and three more rows that are
    zero in the evaluation images only (the training images use them)."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1200, 1, 28, 28, generator=g)
    x[:, :, :2, :] = 0
    x[:, :, :, -3:] = 0
    x[1000:, :, 2:5, :] = 0
    teacher = torch.randn(784, 10, generator=g)
    y = (x.flatten(1) @ teacher).argmax(1)
    return {"train": Split(x[:1000], y[:1000]), "eval": Split(x[1000:], y[1000:])}


def _uncut(model: torch.nn.Module) -> torch.nn.Module:
    """The same network without the input-cut opt-in (every check multiplies all columns)."""
    import copy

    plain = copy.deepcopy(model)
    plain.input_weight = None
    return plain


@pytest.mark.parametrize("batched", [False, True])
def test_checks_without_the_all_zero_input_columns_give_the_full_results(bordered, batched):
    from prunetime.ensemble import _InputCut

    torch.manual_seed(6)
    model = build_model("lenet300100")
    cut = _InputCut.of(model, bordered["train"], bordered["eval"])
    assert cut is not None and cut.k == 784 - 5 * 28 - 23 * 3  # the eval set's zero columns
    assert _InputCut.of(_uncut(model), bordered["train"], bordered["eval"]) is None
    start = eval_loss(model, bordered["eval"])
    kw = dict(target_loss=start - 0.3, eps=0.05, max_iters=40, batched=batched)
    got = run(model, trials(model, 4), bordered, **kw)
    ref = run(_uncut(model), trials(model, 4), bordered, **kw)
    assert [r.iterations for r in got] == [r.iterations for r in ref]
    assert [r.status for r in got] == [r.status for r in ref]
    assert len({r.iterations for r in got}) > 1
    for a, b, spec in zip(got, ref, trials(model, 4), strict=True):
        assert [s for s, _ in a.eval_losses] == [s for s, _ in b.eval_losses]
        la, lb = [v for _, v in a.eval_losses], [v for _, v in b.eval_losses]
        assert la == pytest.approx(lb, abs=TOL)
        for k in b.state:  # returned in the input's own column order
            assert torch.allclose(a.state[k], b.state[k], atol=TOL_W, rtol=0), k
        for k, m in spec.masks.items():
            assert (a.state[k][~m] == 0).all()


def test_a_non_finite_weight_on_a_cut_column_shows_in_the_check(bordered):
    # 0 * inf is NaN in the full product: the cut check must not hide it.
    from prunetime.ensemble import StackedOptimizer, _Ensemble, _InputCut

    model = build_model("lenet300100")
    cut = _InputCut.of(model, bordered["train"], bordered["eval"])
    assert cut is not None
    zero_col = int(cut.perm[-1])  # a column that is zero in every evaluation image
    for bad in (float("inf"), float("nan"), None):
        state = {k: v.detach().clone()[None] for k, v in model.named_parameters()}
        if bad is not None:
            state["fc1.weight"][0, 7, zero_col] = bad
        losses = []
        for c in (cut, None):
            params = cut.permuted(state, cut.perm) if c is not None else state
            opt = StackedOptimizer("adam", params, 0.01)
            ens = _Ensemble(model, params, None, [], opt, [0], False, c)
            losses.append(float(ens.eval_losses(bordered["eval"], 1000)[0]))
        if bad is None:
            assert losses[0] == pytest.approx(losses[1], abs=1e-6)
        else:
            assert all(v != v for v in losses)  # NaN with and without the cut


def _screened_rows(monkeypatch) -> list[int]:
    """Records how many images each screened (partial) evaluation covered."""
    from prunetime import ensemble

    widths: list[int] = []
    orig = ensemble._Ensemble.image_losses

    def spy(self, evalset, chunk, rows=None):
        if rows is not None:
            widths.append(rows.shape[1])
        return orig(self, evalset, chunk, rows)

    monkeypatch.setattr(ensemble._Ensemble, "image_losses", spy)
    return widths


@pytest.fixture(scope="module")
def noisy() -> dict:
    """The teacher task with a fifth of the labels random: like MNIST's hard images, a few
    images carry much of the loss, so the hardest images alone can show a loss above the band."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1600, 1, 28, 28, generator=g)
    y = (x.flatten(1) @ torch.randn(784, 10, generator=g)).argmax(1)
    flip = torch.rand(1600, generator=g) < 0.2
    y[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    return {"train": Split(x[:1000], y[:1000]), "eval": Split(x[1000:], y[1000:])}


@pytest.mark.parametrize(
    ("arch", "batched", "every"),
    [("lenet300100", False, 1), ("lenet300100", True, 1), ("lenet5", False, 1),
     ("lenet300100", False, 4)],
)  # fmt: skip
def test_screened_checks_stop_at_the_same_steps_as_full_checks(
    noisy, monkeypatch, arch: str, batched: bool, every: int
) -> None:
    """A screen skips images only where the loss is provably above the band: the counts,
    statuses, weights and final losses are those of checks over all images."""
    torch.manual_seed(9)
    model = build_model(arch)
    # The losses fall from 2.3 to about 1.6 and enter the wide band [1.1, 1.7] from above, so
    # a screen that tested against the target instead of the band's edge would skip the
    # checks the trials converge at.
    kw = dict(target_loss=1.4, eps=0.3, max_iters=40, batched=batched, check_every=every)
    full = run(model, trials(model, 4), noisy, screen=False, **kw)
    widths = _screened_rows(monkeypatch)
    got = run(model, trials(model, 4), noisy, screen=True, **kw)
    assert widths and min(widths) < len(noisy["eval"])  # checks did skip images
    assert [r.iterations for r in got] == [r.iterations for r in full]
    assert [r.status for r in got] == [r.status for r in full]
    assert "converged" in {r.status for r in got}
    assert len({r.iterations for r in got}) > 1  # trials stop at their own steps
    for a, b in zip(got, full, strict=True):
        for k in a.state:  # the checks never touch training: the very same weights
            assert torch.equal(a.state[k], b.state[k]), k
        assert a.final_eval_loss == pytest.approx(b.final_eval_loss, rel=1e-6)
        # The curve holds the fully evaluated checks: a subset of the full run's, with the
        # same values, and always the stopping step.
        full_curve = dict(b.eval_losses)
        assert a.eval_losses[-1][0] == a.iterations
        for step, loss in a.eval_losses:
            assert loss == pytest.approx(full_curve[step], rel=1e-6)
    if every == 1:
        assert sum(len(r.eval_losses) for r in got) < sum(len(r.eval_losses) for r in full)


def test_a_capped_screened_trial_reports_its_exact_final_loss(noisy) -> None:
    torch.manual_seed(10)
    model = build_model("lenet300100")
    kw = dict(target_loss=0.0, eps=1e-9, max_iters=12, batched=False)
    full = run(model, trials(model, 2), noisy, screen=False, **kw)
    got = run(model, trials(model, 2), noisy, screen=True, **kw)
    for a, b in zip(got, full, strict=True):
        assert a.status == b.status == "capped" and a.iterations == b.iterations == 12
        assert a.eval_losses[-1][0] == 12 and len(a.eval_losses) < len(b.eval_losses)
        assert a.final_eval_loss == pytest.approx(b.final_eval_loss, rel=1e-6)


def test_screened_checks_find_divergence_at_the_same_step(noisy) -> None:
    torch.manual_seed(4)
    model = build_model("lenet300100")
    kw = dict(lr=5.0, max_iters=30, divergence_factor=3.0, batched=False)
    full = run(model, trials(model, 3), noisy, screen=False, **kw)
    got = run(model, trials(model, 3), noisy, screen=True, **kw)
    assert all(r.status == "diverged" for r in full)
    assert [(r.iterations, r.status) for r in got] == [(r.iterations, r.status) for r in full]


def test_a_checks_chunk_is_bounded_by_activation_bytes_and_changes_no_result(
    noisy, monkeypatch
) -> None:
    """CHUNK_BYTES bounds the images a check passes at once over a group's trials; any bound
    gives the same per-image losses, so the same counts and final losses."""
    from prunetime import ensemble

    torch.manual_seed(11)
    model = build_model("lenet300100")
    kw = dict(target_loss=1.4, eps=0.3, max_iters=20, batched=True)
    ref = run(model, trials(model, 3), noisy, **kw)
    chunks: list[int] = []
    orig = ensemble._Ensemble.image_losses

    def spy(self, evalset, chunk, rows=None):
        chunks.append(chunk)
        return orig(self, evalset, chunk, rows)

    monkeypatch.setattr(ensemble._Ensemble, "image_losses", spy)
    act = ensemble._activation_elems(model, noisy["eval"].x)
    monkeypatch.setattr(ensemble, "CHUNK_BYTES", 4 * act * 3 * 50)  # 50 images x 3 trials
    got = run(model, trials(model, 3), noisy, **kw)
    assert chunks and set(chunks) == {50}
    assert [r.iterations for r in got] == [r.iterations for r in ref]
    for a, b in zip(got, ref, strict=True):
        assert a.final_eval_loss == pytest.approx(b.final_eval_loss, rel=1e-6)
