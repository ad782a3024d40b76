"""Pruning methods, masks, layer resolution and the method registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from prunetime import pruning
from prunetime.models import build_model, init_weights, weight_names
from prunetime.pruning import (
    PRUNERS,
    PruningMethod,
    apply_pruning,
    build_pruner,
    pack_masks,
    register_pruner,
    resolve_layers,
    unpack_masks,
)


def _holder(*shapes: tuple[int, ...], seed: int = 0) -> tuple[nn.Module, list[str]]:
    """A module with one random parameter per shape, named p0, p1, ..."""
    g = torch.Generator().manual_seed(seed)
    mod = nn.Module()
    names = []
    for i, shape in enumerate(shapes):
        setattr(mod, f"p{i}", nn.Parameter(torch.randn(shape, generator=g)))
        names.append(f"p{i}")
    return mod, names


def _lenet(seed: int = 0) -> nn.Module:
    model = build_model("lenet300100")
    init_weights(model, "normal", 0.1, torch.Generator().manual_seed(seed))
    return model


SHAPES = [(7,), (3, 5), (10, 10), (6, 1, 5, 5), (13, 11)]


@pytest.mark.parametrize("amount", [0.05, 0.1, 0.25, 0.5, 0.7, 0.9, 0.99])
def test_random_removes_exactly_round_s_n_without_replacement(amount):
    mod, names = _holder(*SHAPES)
    masks = build_pruner("random").masks(mod, names, amount, torch.Generator().manual_seed(1))
    assert list(masks) == names
    for name, shape in zip(names, SHAPES, strict=True):
        m = masks[name]
        n = math.prod(shape)
        assert m.dtype == torch.bool and tuple(m.shape) == shape
        assert int((~m).sum()) == round(amount * n), (name, amount)


def test_random_is_seeded_and_varies_with_seed():
    mod, names = _holder((40, 40))
    method = build_pruner("random")
    a = method.masks(mod, names, 0.5, torch.Generator().manual_seed(3))["p0"]
    b = method.masks(mod, names, 0.5, torch.Generator().manual_seed(3))["p0"]
    c = method.masks(mod, names, 0.5, torch.Generator().manual_seed(4))["p0"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # uniform: every row loses about half its weights, not a contiguous block
    per_row = (~a).sum(1).float()
    assert per_row.min() > 5 and per_row.max() < 35


def test_random_with_replacement_draws_int_s_n_indices():
    # n = 10, s = 0.19: int(1.9) = 1 draw -> exactly one weight removed, whatever collides;
    # without replacement round(1.9) = 2 weights go
    mod, names = _holder((10,))
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        with_r = build_pruner("random", with_replacement=True).masks(mod, names, 0.19, gen)
        assert int((~with_r["p0"]).sum()) == 1
        gen = torch.Generator().manual_seed(seed)
        without = build_pruner("random").masks(mod, names, 0.19, gen)
        assert int((~without["p0"]).sum()) == 2


@pytest.mark.parametrize("amount", [0.3, 0.6, 0.9])
def test_random_with_replacement_sparsity_is_one_minus_exp(amount):
    n = 200_000
    mod, names = _holder((n,))
    masks = build_pruner("random", with_replacement=True).masks(
        mod, names, amount, torch.Generator().manual_seed(11)
    )
    sparsity = float((~masks["p0"]).sum()) / n
    expected = 1.0 - math.exp(-amount)
    # the standard deviation of the fraction is below sqrt(0.25 / n) ~ 0.0011
    assert abs(sparsity - expected) < 0.006
    # collisions make it clearly less than the nominal amount
    assert sparsity < amount - 0.03


@pytest.mark.parametrize("amount", [0.1, 0.5, 0.83])
def test_magnitude_removes_the_k_smallest(amount):
    mod, names = _holder(*SHAPES, seed=2)
    masks = build_pruner("magnitude").masks(mod, names, amount, torch.Generator().manual_seed(0))
    params = dict(mod.named_parameters())
    for name in names:
        w = params[name].detach().numpy().ravel()
        k = round(amount * w.size)
        smallest = set(np.argsort(np.abs(w), kind="stable")[:k].tolist())
        dropped = set(np.flatnonzero(~masks[name].numpy().ravel()).tolist())
        assert dropped == smallest
        if 0 < k < w.size:
            assert np.abs(w[list(dropped)]).max() <= np.abs(np.delete(w, list(dropped))).min()


def test_magnitude_ignores_generator():
    mod, names = _holder((20, 20), seed=5)
    method = build_pruner("magnitude")
    a = method.masks(mod, names, 0.4, torch.Generator().manual_seed(0))
    b = method.masks(mod, names, 0.4, torch.Generator().manual_seed(99))
    assert torch.equal(a["p0"], b["p0"])


@pytest.mark.parametrize("method", ["random", "magnitude"])
def test_apply_pruning_zeroes_masked_weights_only(method):
    model = _lenet()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = weight_names(model)
    masks, sparsity = apply_pruning(
        model, build_pruner(method), names, 0.3, torch.Generator().manual_seed(8)
    )
    after = model.state_dict()
    for name in names:
        m = masks[name]
        assert torch.all(after[name][~m] == 0)
        assert torch.equal(after[name][m], before[name][m])
        n = m.numel()
        assert sparsity[name] == pytest.approx(round(0.3 * n) / n)
        assert sparsity[name] == pytest.approx(float((after[name] == 0).sum()) / n)
    for bias in ("fc1.bias", "fc2.bias", "fc3.bias"):
        assert torch.equal(after[bias], before[bias])
    total = sum(masks[n].numel() for n in names)
    removed = sum(round(0.3 * masks[n].numel()) for n in names)
    assert sparsity["overall"] == pytest.approx(removed / total)
    assert set(sparsity) == {*names, "overall"}


def test_apply_pruning_on_a_subset_of_layers():
    model = _lenet()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks, sparsity = apply_pruning(
        model, build_pruner("random"), ["fc2.weight"], 0.5, torch.Generator().manual_seed(0)
    )
    after = model.state_dict()
    assert list(masks) == ["fc2.weight"]
    assert torch.equal(after["fc1.weight"], before["fc1.weight"])
    assert torch.equal(after["fc3.weight"], before["fc3.weight"])
    assert int((after["fc2.weight"] == 0).sum()) == 15000
    assert sparsity == {"fc2.weight": 0.5, "overall": 0.5}


def test_resolve_layers():
    model = _lenet()
    assert resolve_layers(model, "all") == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert resolve_layers(model, ["fc1", "fc3.weight"]) == ["fc1.weight", "fc3.weight"]
    with pytest.raises(ValueError, match="fc9") as info:
        resolve_layers(model, ["fc1", "fc9", "fc1.bias"])
    msg = str(info.value)
    assert "fc1.bias" in msg and "pruning.layers" in msg
    assert "'fc1'" not in msg.split("allowed")[0]  # the valid name is not reported as bad


def test_build_pruner_rejects_unknown_method_and_options():
    with pytest.raises(ValueError, match="nosuch") as info:
        build_pruner("nosuch")
    assert "magnitude" in str(info.value) and "random" in str(info.value)
    with pytest.raises(ValueError, match="bogus") as info:
        build_pruner("random", bogus=1)
    assert "with_replacement" in str(info.value)
    with pytest.raises(ValueError, match="with_replacement"):
        build_pruner("magnitude", with_replacement=True)
    assert build_pruner("random", with_replacement=True).opts == {"with_replacement": True}
    assert build_pruner("random").opts == {"with_replacement": False}


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (13, 11), (6, 1, 5, 5), (9, 3, 1)])
def test_pack_unpack_round_trip(shape, tmp_path):
    g = torch.Generator().manual_seed(sum(shape))
    masks = {"a": torch.rand(shape, generator=g) < 0.5, "b": torch.ones(shape, dtype=torch.bool)}
    packed = pack_masks(masks)
    n = math.prod(shape)
    assert packed["a"]["bits"].numel() == math.ceil(n / 8)
    # survives a weights_only save/load as the pipeline does it
    torch.save(packed, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=True)
    out = unpack_masks(loaded)
    assert set(out) == {"a", "b"}
    for k in masks:
        assert out[k].dtype == torch.bool
        assert tuple(out[k].shape) == shape
        assert torch.equal(out[k], masks[k])


def test_registry_has_builtin_methods():
    assert {"random", "magnitude", "random_node", "magnitude_node", "clustered"} <= set(PRUNERS)
    assert PRUNERS["random"].stochastic and not PRUNERS["magnitude"].stochastic
    assert PRUNERS["random"].name == "random"
    # a deterministic method runs one trial: more would be copies of the same pruning
    assert PRUNERS["random"].n_trials(50) == 50 and PRUNERS["magnitude"].n_trials(50) == 1
    assert {m for m, cls in PRUNERS.items() if cls.level == "connection"} >= {"random", "magnitude"}


def test_register_new_method():
    name = "test_first_k"
    try:

        @register_pruner(name)
        class FirstK(PruningMethod):
            """Drops the first round(s*n) weights of every tensor (flattened order)."""

            options = {"offset": 0}

            def masks(self, model, layers, amount, generator, data=None):
                params = dict(model.named_parameters())
                out = {}
                for layer in layers:
                    w = params[layer]
                    keep = torch.ones(w.numel(), dtype=torch.bool)
                    start = self.opts["offset"]
                    keep[start : start + round(amount * w.numel())] = False
                    out[layer] = keep.view_as(w)
                return out

        assert PRUNERS[name] is FirstK and FirstK.name == name
        method = build_pruner(name, offset=2)
        assert isinstance(method, PruningMethod)
        mod, names = _holder((10,))
        before = mod.p0.detach().clone()
        masks, sparsity = apply_pruning(mod, method, names, 0.3, torch.Generator())
        assert torch.equal(mod.p0.detach()[2:5], torch.zeros(3))
        assert torch.equal(mod.p0.detach()[[0, 1, 5, 6, 7, 8, 9]], before[[0, 1, 5, 6, 7, 8, 9]])
        assert sparsity["overall"] == pytest.approx(0.3)
        with pytest.raises(ValueError, match="registered twice"):
            register_pruner(name)(FirstK)
    finally:
        PRUNERS.pop(name, None)
    assert name not in pruning.PRUNERS
