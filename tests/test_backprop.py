"""Autograd-free steps of fully connected chains: bitwise autograd's numbers, and really used."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunetime import backprop, ensemble
from prunetime.data import Split
from prunetime.ensemble import TrialSpec, retrain_trials
from prunetime.models import LeNet300100, build_model
from prunetime.training import make_optimizer, train_step

ARCHS = ("lenet300100", "lenet300100_relu")


class _NoChain(LeNet300100):
    """The same network with autograd's step (no chain declared): the reference."""

    linear_chain = None  # type: ignore[assignment]


def _reference(arch: str) -> nn.Module:
    return _NoChain("sigmoid" if arch == "lenet300100" else "relu")


def _autograd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return float(loss.detach()), {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("batch", [128, 37])
def test_loss_and_grads_bitwise_autograd(arch: str, batch: int) -> None:
    g = torch.Generator().manual_seed(batch)
    model = build_model(arch)
    x = torch.rand(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    chain = backprop.chain_of(model)
    assert chain is not None
    loss, grads = backprop.loss_and_grads(chain, dict(model.named_parameters()), x, y)
    ref_loss, ref = _autograd(model, x, y)
    assert float(loss) == ref_loss
    assert grads.keys() == ref.keys()
    for k in ref:
        assert torch.equal(grads[k], ref[k]), k
        assert not grads[k].requires_grad
    with torch.no_grad():
        assert torch.equal(backprop.forward(chain, dict(model.named_parameters()), x), model(x))


def test_loss_and_grads_on_smaller_chains() -> None:
    """Compacted networks (removed units cut out) keep the template's layer names only."""
    g = torch.Generator().manual_seed(3)
    model = build_model("lenet300100")
    small = {
        "fc1.weight": torch.randn(40, 784, generator=g),
        "fc1.bias": torch.randn(40, generator=g),
        "fc2.weight": torch.randn(25, 40, generator=g),
        "fc2.bias": torch.randn(25, generator=g),
        "fc3.weight": torch.randn(10, 25, generator=g),
        "fc3.bias": torch.randn(10, generator=g),
    }
    x, y = torch.rand(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g)
    leaves = {k: v.clone().requires_grad_(True) for k, v in small.items()}
    out = torch.func.functional_call(model, leaves, (x,))
    F.cross_entropy(out, y).backward()
    _, grads = backprop.loss_and_grads(backprop.chain_of(model), small, x, y)
    for k, v in leaves.items():
        assert torch.equal(grads[k], v.grad), k


def test_chain_of() -> None:
    assert backprop.chain_of(build_model("lenet5")) is None
    assert backprop.chain_of(_reference("lenet300100")) is None
    assert backprop.chain_of(build_model("lenet300100_relu")).activation == "relu"
    no_bias = build_model("lenet300100")
    no_bias.fc2 = nn.Linear(300, 100, bias=False)
    assert backprop.chain_of(no_bias) is None
    odd = build_model("lenet300100")
    odd.linear_chain = lambda: backprop.Chain(("fc1", "fc2", "fc3"), "tanh")  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="activation 'tanh'"):
        backprop.chain_of(odd)


@pytest.mark.parametrize("arch", ARCHS)
def test_train_step_uses_chain_and_matches_autograd(arch: str) -> None:
    """Ten masked Adam steps: bitwise the weights of autograd's steps, and no forward call."""
    torch.manual_seed(0)
    model, ref = build_model(arch), _reference(arch)
    ref.load_state_dict(model.state_dict())
    masks = {
        k: (torch.rand_like(p) > 0.5).float() for k, p in model.named_parameters() if "weight" in k
    }
    with torch.no_grad():
        for m in (model, ref):
            for k, p in m.named_parameters():
                if k in masks:
                    p.mul_(masks[k])
    opt = make_optimizer("adam", list(model.parameters()), 1e-3)
    ref_opt = make_optimizer("adam", list(ref.parameters()), 1e-3)

    def fail(*_a: object) -> None:
        raise AssertionError("the chain's step must not call the module's forward")

    model.forward = fail  # type: ignore[method-assign]
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        x, y = torch.rand(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
        loss = train_step(model, opt, x, y, masks, dict(model.named_parameters()))
        assert loss == train_step(ref, ref_opt, x, y, masks, dict(ref.named_parameters()))
    for (k, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q), k
        assert torch.equal(p.grad, q.grad), k


@pytest.mark.parametrize("arch", ARCHS)
def test_retraining_trials_bitwise_and_without_functional_call(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One-by-one retraining: the chain's steps and checks give autograd's counts, curves and
    weights exactly, and never go through functional_call."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1200, 1, 28, 28, generator=g)
    y = (x.flatten(1) @ torch.randn(784, 10, generator=g)).argmax(1)
    train, evalset = Split(x[:1000], y[:1000]), Split(x[1000:], y[1000:])
    template = build_model(arch)
    state = {k: v.detach() for k, v in template.named_parameters()}

    def specs() -> list[TrialSpec]:
        out = []
        for i in range(2):
            mg = torch.Generator().manual_seed(10 + i)
            masks = {
                k: torch.rand(v.shape, generator=mg) < 0.5
                for k, v in state.items()
                if "weight" in k
            }
            start = {k: v * masks[k] if k in masks else v.clone() for k, v in state.items()}
            out.append(TrialSpec(start, masks, torch.Generator().manual_seed(i)))
        return out

    kw = dict(target_loss=1.2, eps=0.05, optimizer="adam", lr=3e-3, batch_size=50, max_iters=150)
    real_call = ensemble.functional_call
    calls = []

    def counting(*a: object, **k: object) -> object:
        calls.append(1)
        return real_call(*a, **k)

    monkeypatch.setattr(ensemble, "functional_call", counting)
    fast = retrain_trials(template, specs(), train, evalset, batched=False, **kw)
    assert calls == []
    monkeypatch.setattr(backprop, "chain_of", lambda _m: None)
    slow = retrain_trials(template, specs(), train, evalset, batched=False, **kw)
    assert calls  # the reference did go through autograd and functional_call
    assert any(r.iterations > 0 for r in fast)
    for a, b in zip(fast, slow, strict=True):
        assert (a.iterations, a.status, a.final_eval_loss) == (
            b.iterations,
            b.status,
            b.final_eval_loss,
        )
        assert a.eval_losses == b.eval_losses
        for k in a.state:
            assert torch.equal(a.state[k], b.state[k]), k
