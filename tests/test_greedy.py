"""Greedy forward selection: planted optima, the Frank-Wolfe guarantees, vectorised = naive."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from prunetime.greedy import (
    build_two_layer,
    candidate_losses,
    candidate_losses_naive,
    greedy_select,
    kappa_of,
    loss_value,
    one_hot,
    prepare_inputs,
    scale_factor,
    subnetwork,
)
from prunetime.pretrain import balanced_subset, checkpoint_steps

C = 3  # classes of the constructed cases


def planted_case(
    m: int = 60, n_distractors: int = 9, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Activations whose average over three planted neurons is exactly the one-hot target.

    Planted neuron c fires 3 on the samples of class c with output weights e_c, so
    (1/3) sum_c g_c = Y and the MSE of that subnetwork is 0, the smallest possible. The
    distractors fire U(0, 3) on every sample with a random class direction.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(m) % C
    n = C + n_distractors
    hidden = torch.rand(m, n, generator=g) * 3
    a = one_hot(torch.randint(0, C, (n,), generator=g), C)
    planted = torch.randperm(n, generator=g)[:C].tolist()
    for c, r in enumerate(planted):
        hidden[:, r] = 3.0 * (y == c).float()
        a[r] = one_hot(torch.tensor([c]), C)[0]
    return hidden, a, y, planted


@pytest.mark.parametrize("replacement", [True, False])
def test_greedy_picks_the_planted_neurons(replacement: bool) -> None:
    hidden, a, y, planted = planted_case()
    sel = greedy_select(hidden, a, 1.0, y, 3, loss="mse", replacement=replacement)
    assert sorted(sel.indices) == sorted(planted)
    assert sel.losses[-1] == pytest.approx(0.0, abs=1e-10)
    # The planted set is the unique best 3-subset: exhaustive search agrees.
    best = min(
        itertools.combinations(range(hidden.shape[1]), 3),
        key=lambda s: float(loss_value(hidden[:, list(s)] @ a[list(s)] / 3, y, "mse")),
    )
    assert sorted(best) == sorted(planted)


def convex_hull_case(
    m: int = 90, per_class: int = 12, n_distractors: int = 20, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Neurons whose uniform average over a 'support' set is exactly Y (Y in their convex hull).

    Support neurons of class c fire 3 (1 + e_ri) on class-c samples with noise e that sums
    to zero over the neurons of a class, so their mean is exactly 3 * 1{y = c}. Returns
    V = mean over the support of L(g_r), the constant of the Frank-Wolfe bounds.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(m) % C
    cols, dirs = [], []
    for c in range(C):
        e = torch.rand(m, per_class, generator=g, dtype=torch.float64) * 2 - 1
        e = e - e.mean(1, keepdim=True)
        e = 0.9 * e / e.abs().max()  # keeps 1 + e > 0: valid ReLU outputs
        for j in range(per_class):
            cols.append(3.0 * (y == c).double() * (1 + e[:, j]))
            dirs.append(one_hot(torch.tensor([c]), C)[0].double())
    support = len(cols)
    for _ in range(n_distractors):
        cols.append(torch.rand(m, generator=g, dtype=torch.float64) * 2)
        dirs.append(one_hot(torch.randint(0, C, (1,), generator=g), C)[0].double())
    hidden, a = torch.stack(cols, 1), torch.stack(dirs)
    assert torch.allclose(hidden[:, :support] @ a[:support] / support, one_hot(y, C).double())
    v = sum(float(loss_value(hidden[:, r : r + 1] * a[r], y, "mse")) for r in range(support))
    return hidden, a, y, v / support


def test_with_replacement_follows_the_frank_wolfe_guarantees() -> None:
    """Y = sum_r p_r g_r, squared loss. With a = k/(k+1), b = 1/(k+1), averaging over r ~ p gives
    min_r L(a f_S + b g_r) <= a^2 L_k + b^2 V, hence L_k <= V / k after every step k, and
    L_{k+1} <= L_k at every step where L_k >= V / (2k + 1). Where that condition fails, the
    theory promises nothing, and the loss indeed goes up at some steps."""
    hidden, a, y, v = convex_hull_case()
    losses = greedy_select(hidden, a, 1.0, y, 40, loss="mse", replacement=True).losses
    for k, lk in enumerate(losses, start=1):
        assert lk <= v / k + 1e-12
    guaranteed, rises = 0, 0
    for k in range(1, len(losses)):
        if losses[k - 1] >= v / (2 * k + 1):
            assert losses[k] <= losses[k - 1] + 1e-12
            guaranteed += 1
        elif losses[k] > losses[k - 1]:
            rises += 1
    assert guaranteed >= 2  # the condition is not vacuous here
    assert rises >= 1  # and it matters: outside it the with-replacement loss can rise


def test_selecting_every_neuron_without_replacement_gives_the_dense_network() -> None:
    g = torch.Generator().manual_seed(5)
    net = build_two_layer(30, 12, 4, "mean_field", 1.0, g)
    x = prepare_inputs(torch.rand(50, 30, generator=g))
    y = torch.randint(0, 4, (50,), generator=g)
    with torch.no_grad():
        h = net.hidden(x)
        sel = greedy_select(h, net.a, kappa_of(net), y, 12, loss="mse", replacement=False)
        dense_loss = float(loss_value(net(x), y, "mse"))
    assert sorted(sel.indices) == list(range(12))
    assert sel.losses[-1] == pytest.approx(dense_loss, rel=1e-5)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("scaling", ["mean_field", "ntk"])
def test_vectorised_scores_equal_the_naive_loop(loss: str, scaling: str) -> None:
    g = torch.Generator().manual_seed(6)
    net = build_two_layer(40, 24, 10, scaling, 1.0, g, train_output=True)
    with torch.no_grad():
        net.a.mul_(torch.rand(24, 10, generator=g))  # not just +-1
        x = prepare_inputs(torch.rand(300, 40, generator=g))
        y = torch.randint(0, 10, (300,), generator=g)
        h, a, kappa = net.hidden(x), net.a, kappa_of(net)
        base = torch.zeros(300, 10)
        for k, r in enumerate([3, 7, 7, 0, 11]):  # a partial selection with a repeat
            fast = candidate_losses(base, h, a, kappa, k, y, loss, chunk=64)
            slow = candidate_losses_naive(base, h, a, kappa, k, y, loss)
            assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-6), (k, (fast - slow).abs().max())
            base = (k * base + kappa * h[:, r : r + 1] * a[r]) / (k + 1)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("replacement", [True, False])
def test_vectorised_selection_equals_the_naive_selection(loss: str, replacement: bool) -> None:
    g = torch.Generator().manual_seed(7)
    net = build_two_layer(784, 48, 10, "mean_field", 1.0, g)
    x = prepare_inputs(torch.rand(200, 1, 28, 28, generator=g))
    y = torch.randint(0, 10, (200,), generator=g)
    with torch.no_grad():
        h = net.hidden(x)
        kw = {"loss": loss, "replacement": replacement}
        fast = greedy_select(h, net.a, kappa_of(net), y, 10, **kw)
        slow = greedy_select(h, net.a, kappa_of(net), y, 10, naive=True, **kw)
    assert fast.indices == slow.indices
    assert fast.losses == pytest.approx(slow.losses, rel=1e-5)
    if not replacement:
        assert len(set(fast.indices)) == 10


def test_subnetwork_module_reproduces_the_selection() -> None:
    g = torch.Generator().manual_seed(8)
    for scaling in ("mean_field", "ntk"):
        net = build_two_layer(20, 16, 10, scaling, 1.0, g)
        x = prepare_inputs(torch.rand(80, 20, generator=g))
        y = torch.randint(0, 10, (80,), generator=g)
        with torch.no_grad():
            sel = greedy_select(net.hidden(x), net.a, kappa_of(net), y, 6, loss="cross_entropy")
            sub = subnetwork(net, sel.indices)
            assert sub.width == 6 and not sub.a.requires_grad
            assert sub.out_scale == pytest.approx(16 * scale_factor(16, scaling) / 6)
            assert float(loss_value(sub(x), y, "cross_entropy")) == pytest.approx(
                sel.losses[-1], rel=1e-5
            )


def test_loss_target_stops_early() -> None:
    hidden, a, y, _ = convex_hull_case()
    full = greedy_select(hidden, a, 1.0, y, 40)
    target = full.losses[9]
    stopped = greedy_select(hidden, a, 1.0, y, 40, loss_target=target)
    first = next(k for k, v in enumerate(full.losses) if v <= target)
    assert stopped.stopped_by == "loss_target"
    assert len(stopped.indices) == first + 1
    assert stopped.indices == full.indices[: first + 1]


def test_greedy_rejects_impossible_sizes() -> None:
    hidden, a, y, _ = planted_case()
    with pytest.raises(ValueError, match="without replacement"):
        greedy_select(hidden, a, 1.0, y, hidden.shape[1] + 1, replacement=False)
    with pytest.raises(ValueError, match=">= 1"):
        greedy_select(hidden, a, 1.0, y, 0)


def test_balanced_subsets_are_balanced_nested_and_capped() -> None:
    g = torch.Generator().manual_seed(9)
    labels = torch.randint(0, 10, (3000,), generator=g)
    small, m_small = balanced_subset(labels, 1000, seed=4)
    big, m_big = balanced_subset(labels, 2000, seed=4)
    assert (m_small, m_big) == (1000, 2000)
    assert torch.bincount(labels[small], minlength=10).tolist() == [100] * 10
    assert set(small.tolist()) <= set(big.tolist())  # nested for one seed
    capped, m_cap = balanced_subset(labels, 60_000, seed=4)
    assert m_cap == 10 * int(torch.bincount(labels).min()) == len(capped)
    other, _ = balanced_subset(labels, 1000, seed=5)
    assert set(other.tolist()) != set(small.tolist())
    odd, m_odd = balanced_subset(labels, 1003, seed=4)
    assert m_odd == 1003 and torch.bincount(labels[odd], minlength=10).tolist()[:4] == [101] * 3 + [
        100
    ]


def test_checkpoint_steps_are_log_spaced_and_start_at_zero() -> None:
    steps = checkpoint_steps(4096, 13, 1)
    assert steps[0] == 0 and steps[1] == 1 and steps[-1] == 4096
    assert steps == sorted(set(steps))
    assert checkpoint_steps(1000, 4, 10) == [0, 10, 46, 215, 1000]


# --------------------------------------------------------------------------- deep, layer-wise


def _lenet(seed: int = 0):
    from prunetime.models import build_model, init_weights

    net = build_model("lenet300100_relu")
    init_weights(net, "normal", 0.1, torch.Generator().manual_seed(seed))
    return net


def test_layerwise_greedy_keeps_exact_counts_and_masks_whole_units(split_factory) -> None:
    from prunetime.greedy_node import GreedyForwardNodePruning
    from prunetime.pruning import apply_pruning, weight_names

    data = split_factory(200, 0).x
    net = _lenet()
    dense = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        ref = net(data)
    method = GreedyForwardNodePruning()
    masks, _ = apply_pruning(net, method, weight_names(net), 0.0, torch.Generator(), data)
    with torch.no_grad():
        assert torch.allclose(net(data), ref, atol=1e-5)  # keeping every unit changes nothing
    assert all(m.all() for m in masks.values())

    net.load_state_dict(dense)
    masks, sparsity = apply_pruning(net, method, weight_names(net), 0.5, torch.Generator(), data)
    kept1 = masks["fc1.weight"].any(1)
    kept2 = masks["fc2.weight"].any(1)
    assert int(kept1.sum()) == 150 and int(kept2.sum()) == 50
    assert sparsity["fc1.weight"] == pytest.approx(0.5)
    p = dict(net.named_parameters())
    assert (p["fc1.weight"][~kept1] == 0).all() and (p["fc1.bias"][~kept1] == 0).all()
    assert (p["fc2.weight"][:, ~kept1] == 0).all() and (p["fc3.weight"][:, ~kept2] == 0).all()
    # Kept outgoing columns are the dense ones times U / k (each unit picked once).
    assert torch.allclose(p["fc3.weight"][:, kept2], dense["fc3.weight"][:, kept2] * 2)


def test_layerwise_greedy_beats_random_units_at_its_objective(split_factory) -> None:
    """fc1 pruned to 100 of 300 units: the rescaled average of the greedy units reproduces the
    dense fc2 pre-activation better than any of several random choices of 100 units."""
    from prunetime.greedy_node import GreedyForwardNodePruning, _input_of
    from prunetime.pruning import apply_pruning

    data = split_factory(200, 1).x
    net = _lenet(1)
    with torch.no_grad():
        acts, w = _input_of(net, net.fc2, data), net.fc2.weight.detach().clone()
    target = acts @ w.T
    for repl in (False, True):
        pruned = _lenet(1)
        method = GreedyForwardNodePruning(with_replacement=repl)
        apply_pruning(pruned, method, ["fc1.weight"], 2 / 3, torch.Generator(), data)
        with torch.no_grad():
            z = _input_of(pruned, pruned.fc2, data) @ pruned.fc2.weight.T
        greedy_err = float((z - target).pow(2).mean())
        g = torch.Generator().manual_seed(2)
        for _ in range(5):
            keep = torch.randperm(300, generator=g)[:100]
            random_err = float((acts[:, keep] @ w[:, keep].T * 3 - target).pow(2).mean())
            assert greedy_err < random_err


def test_layerwise_greedy_rejects_conv_nets(split_factory) -> None:
    from prunetime.greedy_node import GreedyForwardNodePruning
    from prunetime.models import build_model, weight_names

    net = build_model("lenet5")
    with pytest.raises(ValueError, match="fully connected"):
        GreedyForwardNodePruning().masks(
            net, weight_names(net), 0.5, torch.Generator(), split_factory(8, 0).x
        )


def test_greedy_node_is_a_registered_fully_connected_only_method() -> None:
    from prunetime.config import ConfigError, validate_config
    from prunetime.models import build_model
    from prunetime.plan import job_combos, job_config
    from prunetime.pruning import build_pruner
    from prunetime.study import method_options

    pruner = build_pruner("greedy_node", with_replacement=True)
    assert pruner.level == "node" and pruner.opts["with_replacement"] is True
    assert pruner.applies_to(build_model("lenet300100"))
    assert not pruner.applies_to(build_model("lenet5"))
    base = {
        "architectures": {"mlp": {"model": "lenet300100"}, "cnn": {"model": "lenet5"}},
        "pruning": {"methods": ["random", "greedy_node"]},
    }
    cfg = validate_config(copy.deepcopy(base))
    assert job_combos(cfg) == [("mlp", "random"), ("mlp", "greedy_node"), ("cnn", "random")]
    assert method_options(cfg, "greedy_node") == {"with_replacement": False}
    assert job_config(cfg, "mlp", "prune", "greedy_node")["pruning"]["greedy_node"] == {
        "with_replacement": False
    }
    only_conv = copy.deepcopy(base)
    del only_conv["architectures"]["mlp"]
    with pytest.raises(ConfigError, match="pruning.methods.*greedy_node.*fully connected"):
        validate_config(only_conv)
