"""Gated networks: expected cost against the flop counter, removal, estimators, sampling."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from prunetime.gates import (
    ConvBlock,
    GatedNet,
    MLPBlock,
    ResMLP,
    ResNet,
    complexity_term,
    cost_weights,
    count_flops,
    count_params,
    difference_grads,
    expected_cost,
    full_cost,
    normalised_cost,
    remove_block,
    remove_units,
    round_gates,
)


def tiny_nets() -> list[GatedNet]:
    torch.manual_seed(0)
    return [
        ResMLP((1, 8, 8), width=12, hidden=6, blocks=3),
        ResNet((1, 12, 12), depth=8, width=4),
        ResNet((3, 10, 10), depth=14, width=3),
    ]


def _binary_thetas(model: GatedNet, g: torch.Generator, min_units: int) -> None:
    for b in model.gated_blocks():
        u = (torch.rand(len(b.units), generator=g) < 0.5).float()
        u[:min_units] = 1.0
        b.units.theta.data.copy_(u[torch.randperm(len(u), generator=g)])
        b.gate.theta.data.fill_(float(torch.rand((), generator=g) < 0.6))


@pytest.mark.parametrize("idx", [0, 1, 2])
def test_expected_cost_equals_counted_cost_of_rounded_network(idx: int) -> None:
    """At theta in {0,1}^n the analytic E[FLOPs], E[params] are the flop counter's and the
    parameter count of the physically rounded network (and of the full one at theta = 1)."""
    g = torch.Generator().manual_seed(idx)
    full = tiny_nets()[idx]
    f_full, p_full = full_cost(full)
    assert f_full == count_flops(full, full.input_shape) > 0
    assert p_full == count_params(full)
    min_units = 0 if isinstance(full, ResMLP) else 1  # a conv with 0 filters does not exist
    for trial in range(4):
        model = tiny_nets()[idx]
        _binary_thetas(model, g, min_units)
        with torch.no_grad():
            cost = expected_cost(model)
        x = torch.randn(3, *model.input_shape, generator=g)
        model.eval()
        before = model(x)
        units, blocks = round_gates(model, min_units=min_units)
        assert units + blocks > 0 or trial  # something is removed in the first trial
        assert float(cost.flops) == count_flops(model, model.input_shape)
        assert float(cost.params) == count_params(model)
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)


def test_normalised_cost_is_multilinear_and_one_at_full() -> None:
    """C is affine in each theta separately (so, being exact on {0,1}^n, it is the expected
    cost of the Bernoulli network); its gradient is the difference of the two ends."""
    g = torch.Generator().manual_seed(3)
    for model in tiny_nets():
        w = cost_weights(model, lam=1.0, flops_weight=0.3, layer_weight=0.0)
        assert float(normalised_cost(model, w).detach()) == pytest.approx(1.0)
        thetas = model.thetas()
        for t in thetas:
            t.data.uniform_(0, 1, generator=g)
        for t in thetas:
            i = int(torch.randint(len(t), (1,), generator=g))
            ends = []
            for v in (0.0, 1.0):
                t.data[i] = v
                ends.append(float(normalised_cost(model, w).detach()))
            v = float(torch.rand((), generator=g))
            t.data[i] = v
            c = normalised_cost(model, w)
            assert float(c.detach()) == pytest.approx((1 - v) * ends[0] + v * ends[1], rel=1e-5)
            (grad,) = torch.autograd.grad(c, t)
            assert float(grad[i]) == pytest.approx(ends[1] - ends[0], rel=1e-4, abs=1e-9)


def test_layer_weight_moves_pressure_to_blocks() -> None:
    torch.manual_seed(0)
    model = ResMLP((1, 8, 8), width=12, hidden=6, blocks=2)
    for t in model.thetas():
        t.data.fill_(0.5)
    grads = {}
    for r in (0.0, 1.0):
        w = cost_weights(model, lam=2.0, flops_weight=0.5, layer_weight=r)
        gu, gb = torch.autograd.grad(
            complexity_term(model, w), [model.blocks[0].units.theta, model.blocks[0].gate.theta]
        )
        grads[r] = (float(gu.sum()), float(gb))
        assert gu.min() >= 0 and gb.min() > 0
    assert grads[1.0][0] == 0.0 and grads[0.0][0] > 0  # r = 1: units are free
    assert grads[1.0][1] > grads[0.0][1]  # blocks charged their full size
    assert float(complexity_term(model, cost_weights(model, 0.0, 0.5, 0.5))) == 0.0


def _train_steps(model: GatedNet, opts, steps: int, g: torch.Generator) -> None:
    x = torch.randn(16, *model.input_shape, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    model.train()
    for _ in range(steps):
        model.resample(g)
        for o in opts:
            o.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for o in opts:
            o.step()
        model.project()


@pytest.mark.parametrize("idx", [0, 1])
def test_physical_removal_keeps_eval_function_and_optimizer_state(idx: int) -> None:
    g = torch.Generator().manual_seed(idx)
    model = tiny_nets()[idx]
    wopt = torch.optim.Adam(model.weights(), lr=1e-2)
    topt = torch.optim.SGD(model.thetas(), lr=0.5)
    _train_steps(model, [wopt, topt], 3, g)
    p0, f0 = count_params(model), count_flops(model, model.input_shape)
    blocks = model.gated_blocks()
    with torch.no_grad():
        blocks[0].units.theta[:2] = 0.01
        blocks[-1].gate.theta.fill_(0.02)
    x = torch.randn(5, *model.input_shape, generator=g)
    model.eval()
    before = model(x)
    assert remove_units(blocks[0], blocks[0].units.theta.detach() < 0.5, [wopt, topt]) == 2
    remove_block(model, blocks[-1], [wopt, topt])
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)
    assert len(model.gated_blocks()) == len(blocks) - 1
    assert count_params(model) < p0 and count_flops(model, model.input_shape) < f0
    # the optimizers hold exactly the model's tensors, with state of matching shapes
    assert {id(p) for p in wopt.param_groups[0]["params"]} == {id(p) for p in model.weights()}
    assert {id(p) for p in topt.param_groups[0]["params"]} == {id(p) for p in model.thetas()}
    for p in model.weights():
        st = wopt.state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
    # the kept units keep their Adam moments (sliced, not reset)
    b = model.gated_blocks()[0]
    first = b.fc1.weight if isinstance(b, MLPBlock) else b.conv1.weight
    assert float(wopt.state[first]["exp_avg"].abs().sum()) > 0
    assert b.units.ids.tolist() == list(range(2, 2 + len(b.units)))
    _train_steps(model, [wopt, topt], 2, g)  # training goes on with the smaller tensors


def test_round_gates_keeps_one_unit_and_makes_network_deterministic() -> None:
    torch.manual_seed(0)
    model = ResNet((1, 12, 12), depth=8, width=4)
    b0 = model.gated_blocks()[0]
    with torch.no_grad():
        b0.units.theta.fill_(0.1)
        b0.units.theta[2] = 0.3
    round_gates(model)
    assert isinstance(model.blocks[0], ConvBlock) and len(model.blocks[0].units) == 1
    assert model.blocks[0].units.ids.tolist() == [2]  # the unit closest to being kept
    assert all(not g.active and float(g.theta.min()) == 1.0 for _, g in model.gate_sets())
    model.train()
    x = torch.randn(4, 1, 12, 12)
    model.resample()
    a = model(x)
    model.resample()
    torch.testing.assert_close(model(x), a)  # no sampling left


def test_sampling_in_training_rounding_in_eval() -> None:
    torch.manual_seed(0)
    model = ResMLP((1, 4, 4), width=8, hidden=400, blocks=1)
    gates = model.blocks[0].units
    gates.theta.data.fill_(0.3)
    g = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(20):
        model.resample(g)
        draws.append(gates.xi.clone())
    assert float(torch.stack(draws).mean()) == pytest.approx(0.3, abs=0.02)
    model.train()
    assert torch.equal(gates.value().detach(), gates.xi)
    model.eval()
    assert float(gates.value().sum()) == 0.0  # round(0.3) = 0
    gates.theta.data[:5] = 0.5
    assert float(gates.value().sum()) == 5.0


def test_ste_agrees_with_exact_two_pass_difference() -> None:
    """The difference estimator averaged over the other gates is exactly d E[L] / d theta
    (E[L] computed by enumerating all 2^3 block configurations); the straight-through
    estimate points the same way on this small net."""
    torch.manual_seed(0)
    model = ResMLP((1, 6, 6), width=12, hidden=8, blocks=3).configure(unit=False, block=True)
    x, y = torch.randn(64, 1, 6, 6), torch.randint(0, 10, (64,))
    theta = torch.tensor([0.7, 0.4, 0.6], requires_grad=True)
    blocks = model.gated_blocks()
    for b, t in zip(blocks, theta.detach(), strict=True):
        b.gate.theta.data.fill_(float(t))
    expected_loss = torch.zeros(())
    diff, ste = torch.zeros(3), torch.zeros(3)
    model.train()
    for conf in itertools.product([0.0, 1.0], repeat=3):
        xi = torch.tensor(conf)
        prob = torch.prod(torch.where(xi > 0, theta, 1 - theta))
        for b, v in zip(blocks, xi, strict=True):
            b.gate.xi = v.reshape(1)
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        expected_loss = expected_loss + prob * loss.detach()
        ste += prob.detach() * torch.stack([b.gate.theta.grad[0] for b in blocks])
        d = difference_grads(model, x, y)
        diff += prob.detach() * torch.tensor([d[b] for b in blocks])
    (exact,) = torch.autograd.grad(expected_loss, theta)
    torch.testing.assert_close(diff, exact, rtol=1e-4, atol=1e-6)
    assert torch.equal(torch.sign(ste), torch.sign(exact))
    assert float(F.cosine_similarity(ste, exact, 0)) > 0.9


def test_difference_passes_leave_batchnorm_statistics_alone() -> None:
    torch.manual_seed(0)
    model = ResNet((1, 8, 8), depth=8, width=3).configure(unit=True, block=True)
    model.train()
    model.resample()
    before = [b.clone() for b in model.buffers()]
    difference_grads(model, torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    after = list(model.buffers())
    for a, b in zip(before, after, strict=True):
        if a.dtype.is_floating_point:
            assert torch.equal(a, b)


def test_projected_steps_keep_theta_in_unit_interval() -> None:
    torch.manual_seed(0)
    model = ResMLP((1, 6, 6), width=8, hidden=6, blocks=2).configure(True, True, init=0.9)
    w = cost_weights(model, lam=5.0, flops_weight=0.5, layer_weight=0.5)
    opt = torch.optim.SGD(model.thetas(), lr=50.0)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 10, (8,))
    model.train()
    for _ in range(3):
        model.resample()
        opt.zero_grad()
        (F.cross_entropy(model(x), y) + complexity_term(model, w)).backward()
        opt.step()
        model.project()
        thetas = torch.cat([t.detach() for t in model.thetas()])
        assert float(thetas.min()) >= 0.0 and float(thetas.max()) <= 1.0
    assert float(thetas.min()) == 0.0  # a huge step lands on the boundary, not beyond
