"""Training loop, masked retraining, convergence counting, devices and minibatches."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunetime import training
from prunetime.data import Split
from prunetime.models import build_model, init_weights, weight_names
from prunetime.pruning import apply_pruning, build_pruner


def _tiny(seed: int = 0) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    init_weights(model, "normal", 0.1, torch.Generator().manual_seed(seed))
    return model


def _pruned_lenet(amount: float = 0.5):
    model = build_model("lenet300100")
    init_weights(model, "normal", 0.1, torch.Generator().manual_seed(0))
    names = weight_names(model)
    masks, _ = apply_pruning(
        model, build_pruner("random"), names, amount, torch.Generator().manual_seed(1)
    )
    return model, masks


def test_batches_cover_each_index_once_per_epoch():
    n, bs = 48, 16
    stream = training.batches(n, bs, torch.Generator().manual_seed(0))
    epochs = []
    for _ in range(4):
        batch_list = [next(stream) for _ in range(n // bs)]
        assert all(len(b) == bs for b in batch_list)
        idx = torch.cat(batch_list)
        assert torch.equal(idx.sort().values, torch.arange(n))
        epochs.append(idx)
    # a fresh permutation each epoch
    assert not torch.equal(epochs[0], epochs[1])
    # seeded: the same generator seed gives the same stream
    again = training.batches(n, bs, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([next(again) for _ in range(n // bs)]), epochs[0])


def test_batches_with_remainder_never_repeat_an_index_within_an_epoch():
    n, bs = 50, 16  # 3 full batches per epoch
    stream = training.batches(n, bs, torch.Generator().manual_seed(2))
    for _ in range(3):
        idx = torch.cat([next(stream) for _ in range(n // bs)])
        assert len(idx) == 48 and len(set(idx.tolist())) == 48
        assert int(idx.min()) >= 0 and int(idx.max()) < n


def test_batches_batch_larger_than_dataset_is_refused():
    """A batch larger than the split can never be drawn: refuse it up front, naming both."""
    with pytest.raises(ValueError, match=r"batch_size=128 .*\[1, 10\]"):
        training.batches(10, 128, torch.Generator().manual_seed(0))


def test_batch_stream_resumes_exactly():
    """A stream restored from its state yields exactly the batches the original goes on with."""
    a = training.BatchStream(50, 8, torch.Generator().manual_seed(3))
    for _ in range(9):  # past one epoch (6 batches of 8 in 50)
        next(a)
    b = training.BatchStream(50, 8, torch.Generator().manual_seed(999))
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        assert torch.equal(next(a), next(b))


def test_evaluate_matches_cross_entropy_and_accuracy(small_split):
    model = _tiny()
    with torch.no_grad():
        logits = model(small_split.x)
    expected_loss = float(F.cross_entropy(logits, small_split.y))
    expected_acc = float((logits.argmax(1) == small_split.y).float().mean())
    # chunking (7 does not divide 48) must not change the mean
    for chunk in (7, 48, 10_000):
        loss, acc = training.evaluate(model, small_split, chunk=chunk)
        assert loss == pytest.approx(expected_loss, rel=1e-5)
        assert acc == pytest.approx(expected_acc)
    assert model.training  # evaluate leaves the model in training mode


@pytest.mark.parametrize(("name", "momentum"), [("adam", 0.0), ("sgd", 0.9)])
def test_make_optimizer_follows_torch_optim(name: str, momentum: float) -> None:
    torch.manual_seed(0)
    ours, ref = _tiny(), _tiny()
    ref.load_state_dict(ours.state_dict())
    opt = training.make_optimizer(name, list(ours.parameters()), 0.01, momentum)
    ref_opt = (
        torch.optim.Adam(ref.parameters(), lr=0.01)
        if name == "adam"
        else torch.optim.SGD(ref.parameters(), lr=0.01, momentum=momentum)
    )
    x = torch.randn(8, 1, 28, 28)
    for _ in range(4):
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7, rtol=0)
    saved = opt.state_dict()
    assert saved["t"] == 4
    with pytest.raises(ValueError, match="rmsprop"):
        training.make_optimizer("rmsprop", list(ours.parameters()), 0.1)


@pytest.mark.parametrize(("optimizer", "lr", "momentum"), [("adam", 0.01, 0.0), ("sgd", 0.5, 0.9)])
def test_masked_retraining_keeps_pruned_weights_zero(optimizer, lr, momentum, split_factory):
    train = split_factory(64, seed=1)
    model, masks = _pruned_lenet(0.5)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    opt = training.make_optimizer(optimizer, list(params.values()), lr, momentum)
    stream = training.batches(len(train), 16, torch.Generator().manual_seed(0))
    for _ in range(40):
        idx = next(stream)
        training.train_step(model, opt, train.x[idx], train.y[idx], masks, params)
    for name, m in masks.items():
        w = params[name].detach()
        assert torch.all(w[~m] == 0), name
        # the kept weights did train
        assert not torch.equal(w[m], start[name][m]), name


@pytest.mark.parametrize(("optimizer", "lr", "momentum"), [("adam", 0.01, 0.0), ("sgd", 0.5, 0.9)])
def test_unmasked_retraining_revives_pruned_weights(optimizer, lr, momentum, split_factory):
    train = split_factory(64, seed=1)
    model, masks = _pruned_lenet(0.5)
    params = dict(model.named_parameters())
    opt = training.make_optimizer(optimizer, list(params.values()), lr, momentum)
    stream = training.batches(len(train), 16, torch.Generator().manual_seed(0))
    for _ in range(10):
        idx = next(stream)
        training.train_step(model, opt, train.x[idx], train.y[idx])
    for name, m in masks.items():
        revived = float((params[name].detach()[~m] != 0).float().mean())
        assert revived > 0.5, name


def test_retrain_to_convergence_keeps_masks(split_factory):
    train, evalset = split_factory(64, seed=1), split_factory(32, seed=2)
    model, masks = _pruned_lenet(0.7)
    res = training.retrain_to_convergence(
        model,
        train,
        evalset,
        target_loss=-1.0,  # unreachable: cross-entropy is never negative
        eps=0.5,
        optimizer="adam",
        lr=0.01,
        batch_size=16,
        max_iters=25,
        generator=torch.Generator().manual_seed(0),
        masks=masks,
    )
    assert res.status == "capped" and res.iterations == 25
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert torch.all(params[name].detach()[~m] == 0)


def test_retrain_already_converged_returns_zero(small_split):
    model = _tiny()
    before = copy.deepcopy(model.state_dict())
    loss, _ = training.evaluate(model, small_split)
    res = training.retrain_to_convergence(
        model,
        small_split,
        small_split,
        target_loss=loss + 0.004,
        eps=0.005,
        optimizer="adam",
        lr=0.01,
        batch_size=16,
        max_iters=50,
        generator=torch.Generator().manual_seed(0),
    )
    assert res.iterations == 0 and res.status == "converged"
    assert res.eval_losses == [pytest.approx(loss)]
    assert res.final_eval_loss == pytest.approx(loss)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # no step was taken


def _manual_trajectory(model, train, evalset, lr, bs, seed, steps):
    """Re-implementation of the retraining loop: fresh Adam, one seeded permutation per
    epoch cut into consecutive batches, evaluate after every step."""
    params = dict(model.named_parameters())
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    order: list[torch.Tensor] = []
    losses = [training.evaluate(model, evalset)[0]]
    for _ in range(steps):
        if not order:
            perm = torch.randperm(len(train), generator=gen)
            order = list(perm.split(bs))
        idx = order.pop(0)
        training.train_step(model, opt, train.x[idx], train.y[idx])
        losses.append(training.evaluate(model, evalset)[0])
    return losses


def test_retrain_iteration_count_is_exact(split_factory):
    train, evalset = split_factory(48, seed=1), split_factory(40, seed=2)
    base = _tiny(seed=3)
    manual = _manual_trajectory(copy.deepcopy(base), train, evalset, 0.01, 16, 5, 30)
    assert manual[20] < manual[0] - 0.1  # the loss did go down
    target = manual[20]
    eps = 0.02 * (manual[0] - manual[20])
    expected = next(t for t, loss in enumerate(manual) if abs(loss - target) <= eps)
    assert 2 <= expected <= 20

    model = copy.deepcopy(base)
    res = training.retrain_to_convergence(
        model,
        train,
        evalset,
        target_loss=target,
        eps=eps,
        optimizer="adam",
        lr=0.01,
        batch_size=16,
        max_iters=100,
        generator=torch.Generator().manual_seed(5),
    )
    assert res.status == "converged"
    assert res.iterations == expected
    assert res.eval_losses == pytest.approx(manual[: expected + 1], rel=1e-6)
    assert res.final_eval_loss == pytest.approx(manual[expected], rel=1e-6)


def test_retrain_capped_when_eps_unreachable(small_split):
    model = _tiny()
    res = training.retrain_to_convergence(
        model,
        small_split,
        small_split,
        target_loss=-1.0,
        eps=0.5,
        optimizer="sgd",
        lr=0.05,
        batch_size=16,
        max_iters=17,
        generator=torch.Generator().manual_seed(0),
    )
    assert res.status == "capped"
    assert res.iterations == 17
    assert len(res.eval_losses) == 18
    assert all(math.isfinite(v) for v in res.eval_losses)
    assert res.final_eval_loss == res.eval_losses[-1]


def test_retrain_diverged_with_huge_lr():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    g = torch.Generator().manual_seed(0)
    data = Split(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
    res = training.retrain_to_convergence(
        model,
        data,
        data,
        target_loss=0.0,
        eps=1e-3,
        optimizer="sgd",
        lr=1e6,
        batch_size=16,
        max_iters=50,
        generator=torch.Generator().manual_seed(1),
    )
    assert res.status == "diverged"
    assert 1 <= res.iterations < 50
    assert len(res.eval_losses) == res.iterations + 1
    # reported at the first step whose loss is non-finite or beyond 100x the starting loss
    limit = 100 * max(res.eval_losses[0], 0.0)
    last = res.eval_losses[-1]
    assert not math.isfinite(last) or last > limit
    assert all(math.isfinite(v) and v <= limit for v in res.eval_losses[:-1])


def test_retrain_divergence_factor_detects_finite_blow_up():
    """A loss that explodes but stays finite is 'diverged' at the first step past the factor."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    g = torch.Generator().manual_seed(0)
    data = Split(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
    kwargs = dict(target_loss=0.0, eps=1e-3, optimizer="sgd", lr=50.0, batch_size=16, max_iters=30)
    res = training.retrain_to_convergence(
        model,
        data,
        data,
        generator=torch.Generator().manual_seed(1),
        divergence_factor=5.0,
        **kwargs,
    )
    assert res.status == "diverged"
    assert all(math.isfinite(v) for v in res.eval_losses)
    assert res.eval_losses[-1] > 5.0 * res.eval_losses[0]
    assert all(v <= 5.0 * res.eval_losses[0] for v in res.eval_losses[:-1])


def test_train_dense_takes_exact_steps_and_logs(small_split):
    model = _tiny()
    res = training.train_dense(
        model,
        small_split,
        small_split,
        optimizer="adam",
        lr=0.01,
        batch_size=16,
        steps=23,
        generator=torch.Generator().manual_seed(0),
        log_every=10,
    )
    assert res.steps == 23
    assert [row["step"] for row in res.curve] == [0, 10, 20, 23]
    assert math.isnan(res.curve[0]["train_loss"])
    assert res.curve[-1]["eval_loss"] == pytest.approx(training.evaluate(model, small_split)[0])
    assert res.curve[-1]["eval_loss"] < res.curve[0]["eval_loss"]


def test_resolve_device():
    assert training.resolve_device("cpu") == "cpu"
    if torch.cuda.is_available():
        assert training.resolve_device("auto") == "cuda"
        assert training.resolve_device("cuda") == "cuda"
    else:  # the CPU-only test machine
        assert training.resolve_device("auto") == "cpu"
        with pytest.raises(RuntimeError, match="CUDA"):
            training.resolve_device("cuda")
    with pytest.raises(ValueError, match="tpu") as info:
        training.resolve_device("tpu")
    assert "auto" in str(info.value)


def test_progress_log_is_throttled_but_always_logs_the_end(caplog) -> None:
    log = training.ProgressLog("retrain x", total=3, every_s=3600)
    with caplog.at_level("INFO", logger="prunetime"):
        log({"step": 1, "active": 3, "done": 0})
        log({"step": 2, "active": 2, "done": 1})  # within the interval: dropped
        log({"step": 9, "active": 0, "done": 3})  # the end: always logged
        log(5, 10)  # the dense-training form, still throttled
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("retrain x: step 1, active 3, done 0 of 3 trials")
    assert "done 3 of 3 trials" in lines[1]
