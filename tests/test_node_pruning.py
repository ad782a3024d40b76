"""Node-level pruning: random, magnitude and clustered removal of units and filters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunetime import netdev
from prunetime.models import build_model, init_weights, weight_names
from prunetime.pruning import (
    PRUNERS,
    ClusteredPruning,
    _exact_k,
    apply_pruning,
    build_pruner,
    compact_state,
    fold_coefficients,
    kept_units,
    param_counts,
    unit_compaction,
    unit_layers,
)
from prunetime.training import make_optimizer, train_step

NODE_METHODS = ["random_node", "magnitude_node", "clustered"]
MODELS = {"lenet300100": 0.1, "lenet5": 0.3, "lenet5_classic": 0.1}
HIDDEN = {
    "lenet300100": {"fc1": 300, "fc2": 100},
    "lenet5": {"conv1": 6, "conv2": 16, "fc1": 84},
    "lenet5_classic": {"conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84},
}


def _model(name: str, seed: int = 0) -> nn.Module:
    model = build_model(name)
    init_weights(model, "normal", MODELS[name], torch.Generator().manual_seed(seed))
    return model


def _data(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


def _prune(model: nn.Module, method: str, amount: float, layers=None, seed: int = 1, **opts):
    if method == "clustered":
        opts.setdefault("n_init", 1)  # one k-means++ start keeps the suite fast
    return apply_pruning(
        model,
        build_pruner(method, **opts),
        layers or weight_names(model),
        amount,
        torch.Generator().manual_seed(seed),
        _data(),
    )


def test_unit_layers_describe_the_chains():
    got = {(u.name, u.units, u.consumer, u.per_unit) for u in unit_layers(_model("lenet5"))}
    assert got == {("conv1", 6, "conv2", 1), ("conv2", 16, "fc1", 49), ("fc1", 84, "fc2", 1)}
    classic = {u.name: u.per_unit for u in unit_layers(_model("lenet5_classic"))}
    assert classic == {"conv1": 1, "conv2": 25, "fc1": 1, "fc2": 1}
    assert [u.name for u in unit_layers(_model("lenet300100"))] == ["fc1", "fc2"]


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("method", NODE_METHODS)
@pytest.mark.parametrize("amount", [0.1, 0.9])
def test_exact_number_of_units_removed_everywhere(arch, method, amount):
    model = _model(arch)
    masks, sparsity = _prune(model, method, amount)
    params = dict(model.named_parameters())
    kept = kept_units(model, masks)
    for ul in unit_layers(model):
        n_removed = round(amount * ul.units)
        assert ul.units - len(kept[ul.name]) == n_removed, (ul.name, amount)
        gone = sorted(set(range(ul.units)) - set(kept[ul.name].tolist()))
        w_in = params[f"{ul.name}.weight"].detach()
        b = params[f"{ul.name}.bias"].detach()
        w_out = params[f"{ul.consumer}.weight"].detach()
        for u in gone:  # row, bias entry and outgoing columns are all zero and masked
            assert torch.all(w_in[u] == 0) and b[u] == 0
            assert not masks[f"{ul.name}.weight"][u].any()
            assert not masks[f"{ul.name}.bias"][u]
            assert torch.all(w_out[:, ul.columns(u)] == 0)
            assert not masks[f"{ul.consumer}.weight"][:, ul.columns(u)].any()
        first = ul == unit_layers(model)[0]
        for u in kept[ul.name].tolist():  # a kept unit keeps its bias and its row, except
            row = masks[f"{ul.name}.weight"][u]  # the columns of removed units before it
            assert masks[f"{ul.name}.bias"][u] and (row.all() if first else row.any())
    # output units are never pruned: the last layer keeps every row and its whole bias
    last = weight_names(model)[-1].removesuffix(".weight")
    assert masks[f"{last}.weight"].reshape(10, -1).any(1).all()
    assert f"{last}.bias" not in masks
    assert set(sparsity) == set(masks) | {"overall"}


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("method", NODE_METHODS)
def test_param_counts_are_exact_and_match_the_smaller_network(arch, method):
    model = _model(arch)
    before = model(_data(8)).detach()
    masks, sparsity = _prune(model, method, 0.6)
    counts = param_counts(model, masks)
    small = compact_state(model, masks)
    # the physically smaller network has exactly the remaining parameters ...
    assert sum(v.numel() for v in small.values()) == counts["n_params_remaining"]
    assert counts["n_params"] == sum(p.numel() for p in model.parameters())
    # ... consistent forward shapes, layer by layer ...
    kept = {k: len(v) for k, v in kept_units(model, masks).items()}
    for ul in unit_layers(model):
        assert small[f"{ul.name}.weight"].shape[0] == kept[ul.name]
        assert small[f"{ul.name}.bias"].shape == (kept[ul.name],)
        assert small[f"{ul.consumer}.weight"].shape[1] == kept[ul.name] * ul.per_unit
    x = _data(16, seed=3)
    ys_small = netdev.forward(model, x, small)
    ys_full = netdev.forward(model, x)
    for ul, y_s, y_f in zip(unit_layers(model), ys_small[1:], ys_full[1:], strict=False):
        assert y_s.shape[0] == 16 and y_s.shape[1] == kept[ul.name]
        assert y_f.shape[1] == ul.units
    # ... and the same outputs as the masked network
    out_small, out_masked = ys_small[-1], model(x).detach()
    assert out_small.shape == (16, 10)
    scale = out_masked.abs().max().clamp_min(1.0)
    assert torch.allclose(out_small, out_masked, atol=1e-5 * float(scale))
    # the weight sparsity is the share of weights the masks remove
    removed_w = counts["n_weights"] - counts["n_weights_remaining"]
    assert sparsity["overall"] == pytest.approx(removed_w / counts["n_weights"])
    assert not torch.equal(before, model(_data(8)).detach())


def test_param_counts_hand_case_lenet300100():
    model = _model("lenet300100")
    masks, _ = _prune(model, "random_node", 0.3)  # removes 90 of 300 and 30 of 100 units
    h1, h2 = 300 - 90, 100 - 30
    expected = (784 * h1 + h1) + (h1 * h2 + h2) + (h2 * 10 + 10)
    assert param_counts(model, masks)["n_params_remaining"] == expected
    assert param_counts(model, masks)["n_weights_remaining"] == 784 * h1 + h1 * h2 + h2 * 10


def test_layers_subset_prunes_only_listed_hidden_layers():
    model = _model("lenet300100")
    masks, _ = _prune(model, "random_node", 0.5, layers=["fc2.weight", "fc3.weight"])
    kept = kept_units(model, masks)
    assert len(kept["fc1"]) == 300 and len(kept["fc2"]) == 50
    assert set(masks) == {"fc2.weight", "fc2.bias", "fc3.weight"}  # the output layer is skipped


def test_random_node_is_seeded_and_uniform():
    a = kept_units(m := _model("lenet300100"), _prune(m, "random_node", 0.5, seed=4)[0])
    b = kept_units(m := _model("lenet300100"), _prune(m, "random_node", 0.5, seed=4)[0])
    c = kept_units(m := _model("lenet300100"), _prune(m, "random_node", 0.5, seed=5)[0])
    assert torch.equal(a["fc1"], b["fc1"]) and not torch.equal(a["fc1"], c["fc1"])
    # not a contiguous block: kept units spread over the whole layer
    assert a["fc1"].min() < 30 and a["fc1"].max() > 270


class TinyChain(nn.Module):
    """4 -> 5 (sigmoid) -> 3: a chain small enough to score by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.sigmoid(self.fc1(x.reshape(x.shape[0], -1))))


def test_magnitude_node_removes_the_units_of_smallest_in_plus_out_magnitude():
    model = TinyChain()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[1.0, -1, 0, 0]] * 5) * torch.arange(1, 6)[:, None])
        # in-scores 2, 4, 6, 8, 10; out-scores (column sums of |fc2|) 9, 0, 0, 0, 3
        model.fc2.weight.zero_()
        model.fc2.weight[:, 0] = torch.tensor([3.0, -3, 3])
        model.fc2.weight[:, 4] = torch.tensor([1.0, 1, -1])
    # totals 11, 4, 6, 8, 13 -> the two smallest are units 1 and 2
    masks, _ = apply_pruning(
        model, build_pruner("magnitude_node"), ["fc1.weight"], 0.4, torch.Generator(), None
    )
    assert kept_units(model, masks)["fc1"].tolist() == [0, 3, 4]


def test_node_trials_property():
    assert PRUNERS["random_node"].stochastic and PRUNERS["random_node"].n_trials(50) == 50
    for name in ("magnitude_node", "clustered", "magnitude"):
        assert PRUNERS[name].n_trials(50) == 1
    assert all(PRUNERS[m].level == "node" for m in NODE_METHODS)
    assert PRUNERS["clustered"].changes_weights and PRUNERS["clustered"].needs_data


def test_masked_retraining_keeps_removed_units_at_zero():
    model = _model("lenet300100")
    masks, _ = _prune(model, "random_node", 0.5)
    params = dict(model.named_parameters())
    opt = make_optimizer("adam", list(params.values()), 0.05)
    x, y = _data(32).reshape(32, -1), torch.arange(32) % 10
    for _ in range(3):
        train_step(model, opt, x, y, masks, params)
    for name, m in masks.items():
        assert torch.all(params[name].detach()[~m] == 0), name
    assert param_counts(model, masks)["n_params_remaining"] == sum(
        int((params[n].detach() != 0).sum()) if n in masks else params[n].numel() for n in params
    )


# --------------------------------------------------------------------------- clustered


def _duplicate_units(model: nn.Module, layer: str, groups: int) -> None:
    """Make units i and i + groups of ``layer`` exact copies (incoming weights and bias)."""
    params = dict(model.named_parameters())
    w, b = params[f"{layer}.weight"], params[f"{layer}.bias"]
    with torch.no_grad():
        w[groups : 2 * groups] = w[:groups]
        b[groups : 2 * groups] = b[:groups]


@pytest.mark.parametrize(
    ("arch", "layer", "units", "algorithm"),
    [
        ("lenet300100", "fc1", 300, "kmeans"),
        ("lenet300100", "fc2", 100, "ward"),
        ("lenet5", "conv1", 6, "kmeans"),  # filters feeding a padded conv
        ("lenet5", "conv2", 16, "kmeans"),  # filters feeding a fully connected layer
        ("lenet5", "fc1", 84, "ward"),
    ],
)
def test_clustered_fold_of_exact_duplicates_reproduces_the_output(arch, layer, units, algorithm):
    model = _model(arch, seed=2)
    _duplicate_units(model, layer, units // 2)
    x = _data(48, seed=7)
    before = model(x).detach()
    pruned = copy.deepcopy(model)
    masks, _ = apply_pruning(
        pruned,
        build_pruner("clustered", algorithm=algorithm, ridge=0.0, n_init=1),
        [f"{layer}.weight"],
        0.5,
        torch.Generator().manual_seed(0),
        x,
    )
    kept = kept_units(pruned, masks)[layer]
    assert len(kept) == units // 2
    if arch == "lenet300100":  # sigmoid units all differ: one of each duplicate pair survives
        assert sorted(int(u) % (units // 2) for u in kept) == list(range(units // 2))
    # (dead ReLU units are identical to each other and may share a cluster across pairs)
    # folding the removed units into the kept ones is exact: the unpruned output comes back
    after = pruned(x).detach()
    assert torch.allclose(after, before, atol=1e-4 * float(before.abs().max().clamp_min(1.0)))
    # on data the clustering never saw as well
    other = _data(16, seed=99)
    assert torch.allclose(pruned(other), model(other), atol=1e-4 * float(before.abs().max()))
    # while simply dropping the twins (no fold) changes it
    dropped = copy.deepcopy(model)
    apply_pruning(
        dropped, build_pruner("magnitude_node"), [f"{layer}.weight"], 0.5, torch.Generator(), x
    )
    assert not torch.allclose(dropped(x), before, atol=1e-2 * float(before.abs().max()))


def test_fold_coefficients_solve_both_equations_of_theory():
    g = torch.Generator().manual_seed(0)
    a_k = torch.rand(200, generator=g, dtype=torch.float64)
    a_u = 0.7 * a_k + 0.2 + 0.05 * torch.rand(200, generator=g, dtype=torch.float64)
    alpha, beta = fold_coefficients(a_u, a_k, 0.01)
    # the two equations exactly as THEORY.md writes them
    assert alpha == pytest.approx(float((a_u - beta) @ a_k) / (float(a_k @ a_k) + 0.01), rel=1e-12)
    assert beta == pytest.approx(float((a_u - alpha * a_k).mean()), rel=1e-12)
    # an exact duplicate: alpha = S / (S + ridge) with S the centred sum of squares
    s = float((a_k - a_k.mean()).pow(2).sum())
    alpha, beta = fold_coefficients(a_k.clone(), a_k, 0.01)
    assert alpha == pytest.approx(s / (s + 0.01), rel=1e-12)
    assert beta == pytest.approx((1 - alpha) * float(a_k.mean()), rel=1e-9)
    assert fold_coefficients(a_k.clone(), a_k, 0.0) == pytest.approx((1.0, 0.0), abs=1e-12)
    # a constant kept unit carries no information: alpha = 0, beta = mean(a_u)
    alpha, beta = fold_coefficients(a_u, torch.full_like(a_k, 0.5), 0.01)
    assert alpha == 0.0 and beta == pytest.approx(float(a_u.mean()))


def test_clustered_default_ridge_changes_the_duplicate_fold_by_the_predicted_amount():
    # five identical sigmoid units; at s = 0.8 four are folded into the one kept (unit 0)
    model = TinyChain()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[1.0, -2, 0.5, 1]] * 5))
        model.fc1.bias.fill_(0.1)
    x = torch.rand(40, 4, generator=torch.Generator().manual_seed(0))
    a = torch.sigmoid(model.fc1(x)).detach()[:, 0]
    w2, b2 = model.fc2.weight.detach().clone(), model.fc2.bias.detach().clone()
    before = model(x).detach()
    masks, _ = apply_pruning(
        model, build_pruner("clustered"), ["fc1.weight"], 0.8, torch.Generator(), x
    )
    assert kept_units(model, masks)["fc1"].tolist() == [0]
    # y' = a W2[:, 0] + (alpha a + beta) * sum_{u >= 1} W2[:, u] + b2, with the spec's ridge
    alpha, beta = fold_coefficients(a.double(), a.double(), 0.01)
    rest = w2[:, 1:].sum(1)
    expected = a[:, None] * w2[:, 0] + (alpha * a[:, None] + beta) * rest + b2
    assert torch.allclose(model(x).detach(), expected, atol=1e-6)
    # close to, but not exactly, the unpruned output: the ridge shrinks alpha below 1
    assert 0 < float((model(x).detach() - before).abs().max()) < 1e-2
    assert alpha < 1


def test_clustered_keep_rules():
    # fc1 units: pairs (0, 3), (1, 4), (2, 5) of near-duplicates with different biases
    model = TinyChain()
    model.fc1 = nn.Linear(4, 6)
    model.fc2 = nn.Linear(6, 3)
    with torch.no_grad():
        base = torch.tensor([[2.0, -1, 0, 1], [-1.0, 2, 1, 0], [0.0, 1, -2, 2]])
        model.fc1.weight.copy_(torch.cat([base, base * 1.01]))
        model.fc1.bias.copy_(torch.tensor([0.1, -0.2, 0.05, -0.15, 0.1, 0.08]))
        model.fc2.weight.copy_(torch.tensor([[1.0, 1, 1, 5, 1, 1]] * 3))
    x = torch.rand(50, 4, generator=torch.Generator().manual_seed(0))

    def keep(rule: str) -> list[int]:
        m = copy.deepcopy(model)
        masks, _ = apply_pruning(
            m, build_pruner("clustered", keep=rule), ["fc1.weight"], 0.5, torch.Generator(), x
        )
        return kept_units(m, masks)["fc1"].tolist()

    assert keep("bias") == [1, 3, 5]  # |bias| 0.15 > 0.1, 0.2 > 0.1, 0.08 > 0.05
    assert keep("norm") == [3, 4, 5]  # the 1.01-scaled copies (and unit 3's big out-weight)
    # centroid: the member nearest the mean of its cluster's activation vectors
    feats = torch.tensor([[0.0], [1.0], [10.0], [5.0]], dtype=torch.float64)
    rule = build_pruner("clustered", keep="centroid")
    assert rule._keeper([0, 1, 2], feats, torch.zeros(4)) == 1
    assert rule._keeper([2, 3], feats, torch.zeros(4)) == 2  # a tie goes to the lower index
    with pytest.raises(ValueError, match="keep"):
        build_pruner("clustered", keep="oldest")
    with pytest.raises(ValueError, match="algorithm"):
        build_pruner("clustered", algorithm="dbscan")


def test_clustered_identical_units_still_remove_exactly_round_s_n():
    model = TinyChain()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[0.5, -1, 2, 0]] * 5))
        model.fc1.bias.fill_(0.3)
    x = torch.rand(30, 4, generator=torch.Generator().manual_seed(1))
    before = model(x).detach()
    masks, _ = apply_pruning(
        model, build_pruner("clustered", ridge=0.0), ["fc1.weight"], 0.4, torch.Generator(), x
    )
    assert len(kept_units(model, masks)["fc1"]) == 3
    assert torch.allclose(model(x), before, atol=1e-5)
    assert sorted(_exact_k([0, 0, 0, 0, 0], 3)) == [0, 0, 0, 1, 2]


def test_clustered_needs_data():
    with pytest.raises(ValueError, match="pruning data"):
        build_pruner("clustered").masks(
            _model("lenet300100"), ["fc1.weight"], 0.5, torch.Generator()
        )


def test_clustered_is_deterministic_and_folds_into_the_kept_units():
    a, b = _model("lenet300100"), _model("lenet300100")
    masks, _ = _prune(a, "clustered", 0.5)
    _prune(b, "clustered", 0.5)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert isinstance(build_pruner("clustered"), ClusteredPruning)
    # the fold rewrites the kept units' outgoing weights and the next layer's bias, so the
    # network is not merely masked (and the pipeline stores its state)
    star = _model("lenet300100")
    kept = masks["fc3.weight"]
    assert not torch.allclose(a.fc3.weight.detach()[kept], star.fc3.weight.detach()[kept])
    assert not torch.allclose(a.fc3.bias.detach(), star.fc3.bias.detach())
    # and is better than dropping the same share of units at random (on the pruning data)
    x = _data()
    r = _model("lenet300100")
    _prune(r, "random_node", 0.5)
    err = lambda m: float((m(x) - star(x)).detach().norm(dim=1).mean())  # noqa: E731
    assert err(a) < err(r)


# --------------------------------------------------------------------------- jobs


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A prepared file of random images, a validated config and a densely trained LeNet."""
    from prunetime.config import validate_config
    from prunetime.study import run_dense, run_netdev_reference

    root = tmp_path_factory.mktemp("tiny")
    g = torch.Generator().manual_seed(0)
    blob = {}
    for split, n in (("train", 256), ("val", 64), ("test", 64)):
        blob[f"{split}_x"] = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        blob[f"{split}_y"] = torch.randint(0, 10, (n,), generator=g)
    torch.save(blob, root / "data.pt")
    cfg = validate_config(
        {
            "architectures": {
                "mlp": {
                    "model": "lenet300100",
                    "train": {"steps": 20, "batch_size": 32},
                    "retrain": {"max_iters": 3, "batch_size": 32, "eps": 1e-9},
                }
            },
            "data": {"n_val": 64},
            "eval": {"size": 32},
            "pruning": {"trials": 3, "data": {"size": 40, "seed": 1}},
        }
    )
    run_dense(cfg, "mlp", 0, root / "data.pt", root / "d.pt", root / "m.json", root / "c.csv")
    run_netdev_reference(cfg, "mlp", 0, root / "data.pt", root / "d.pt", root / "jac.json")
    return {"root": root, "cfg": cfg}


@pytest.mark.parametrize(
    ("method", "trials", "estimator"),
    [
        ("clustered", 1, "pl"),
        ("greedy_node", 1, "pl"),
        ("random_node", 3, "pl"),
        ("random", 3, "secant"),
    ],
)
def test_prune_and_retrain_jobs(tiny_study, method, trials, estimator, monkeypatch):
    from prunetime import netdev
    from prunetime.io import load_torch, read_json
    from prunetime.plan import job_config
    from prunetime.study import run_prune, run_retrain

    root, cfg = tiny_study["root"], tiny_study["cfg"]
    pcfg = job_config(cfg, "mlp", "prune", method)["pruning"]
    assert ("trials" in pcfg) == (trials > 1) and ("clustered" in pcfg) == (method == "clustered")
    assert ("greedy_node" in pcfg) == (method == "greedy_node")
    assert ("with_replacement" in pcfg) == (method == "random") and pcfg["data"]["size"] == 40
    references = []
    reference = netdev.reference
    monkeypatch.setattr(netdev, "reference", lambda *a: references.append(1) or reference(*a))
    rows = run_prune(
        cfg, "mlp", 0, method, 0.5, root / "data.pt", root / "d.pt", root / f"{method}.pt",
        root / f"{method}.csv", netdev_ref=root / "jac.json",
    )  # fmt: skip
    assert [r["trial"] for r in rows] == list(range(trials))  # one trial if deterministic
    assert len(references) == 1  # the unpruned network's forward, once for all trials
    h1, h2 = (150, 50) if method != "random" else (300, 100)
    for r in rows:
        assert r["mu_estimator"] == estimator and r["mu1"] == r[f"mu1_{estimator}"] > 0
        assert r["mu2"] == r[f"mu2_{estimator}"] > 0
        assert r["ndev_lhs"] <= r["ndev_rhs"] and r["ndev_dev"] < 0
        assert r["n_params_remaining"] <= (784 * h1 + h1) + (h1 * h2 + h2) + (h2 * 10 + 10)
        if method != "random":
            assert r["units_removed"] == 0.5 and r["units_removed[fc1]"] == 150
            assert r["n_params_remaining"] == (784 * h1 + h1) + (h1 * h2 + h2) + (h2 * 10 + 10)
    stored = load_torch(root / f"{method}.pt")["trials"]
    folds = method in ("clustered", "greedy_node")  # methods that change the kept weights
    assert len(stored) == trials and ("state" in stored[0]) == folds
    # W_init and W* are recomputed from the checkpoint: the same losses as dense training
    dense = read_json(root / "m.json")
    mu1_pl = dense["g_init"] / (2 * abs(dense["loss_init"] - dense["loss_star"]))
    assert rows[0]["mu1_pl"] == pytest.approx(mu1_pl, rel=1e-5)
    out = run_retrain(
        cfg, "mlp", 0, method, 0.5, root / "data.pt", root / "d.pt", root / f"{method}.pt",
        root / "m.json", root / f"{method}_r.csv", root / f"{method}_c.csv",
    )  # fmt: skip
    assert [r["trial"] for r in out] == list(range(trials))
    assert all(r["status"] == "capped" and r["iterations"] == 3 for r in out)


@pytest.mark.parametrize("method", ["magnitude", "clustered"])
def test_repeat_deterministic_retrains_one_mask_with_different_minibatch_orders(tiny_study, method):
    """repeat_deterministic: a deterministic method prunes once, lists `trials` copies of that
    trial (one stored record), and each copy is retrained with its own minibatch order."""
    import copy
    import csv

    from prunetime.io import load_torch
    from prunetime.plan import job_config
    from prunetime.pruning import unpack_masks
    from prunetime.study import run_prune, run_retrain

    root = tiny_study["root"]
    cfg = copy.deepcopy(tiny_study["cfg"])
    cfg["pruning"]["repeat_deterministic"] = True
    pcfg = job_config(cfg, "mlp", "prune", method)["pruning"]
    assert pcfg["trials"] == 3 and pcfg["repeat_deterministic"] is True
    assert "repeat_deterministic" not in job_config(cfg, "mlp", "prune", "random")["pruning"]
    args = (root / "data.pt", root / "d.pt")
    rows = run_prune(cfg, "mlp", 0, method, 0.5, *args, root / "rep.pt", root / "rep.csv")
    once = run_prune(
        tiny_study["cfg"], "mlp", 0, method, 0.5, *args, root / "one.pt", root / "one.csv"
    )
    assert [r["trial"] for r in rows] == [0, 1, 2] and len(once) == 1
    for r in rows:
        assert {k: v for k, v in r.items() if k != "trial"} == {
            k: v for k, v in once[0].items() if k != "trial"
        }
    assert len(list(csv.DictReader((root / "rep.csv").open()))) == 3
    stored = load_torch(root / "rep.pt")["trials"]
    assert len(stored) == 3
    first = unpack_masks(stored[0]["masks"])
    for s in stored[1:]:
        assert all(torch.equal(m, first[k]) for k, m in unpack_masks(s["masks"]).items())
    # the masks (and a clustered state) are written once, not once per trial
    assert (root / "rep.pt").stat().st_size < 1.2 * (root / "one.pt").stat().st_size
    out = run_retrain(
        cfg, "mlp", 0, method, 0.5, *args, root / "rep.pt", root / "m.json",
        root / "rep_r.csv", root / "rep_c.csv",
    )  # fmt: skip
    assert [r["trial"] for r in out] == [0, 1, 2]
    curves = list(csv.DictReader((root / "rep_c.csv").open()))
    after = [
        [float(c["eval_loss"]) for c in curves if int(c["trial"]) == t and int(c["step"]) == 3]
        for t in range(3)
    ]
    assert len({a[0] for a in after}) == 3  # three minibatch orders, three loss values


def test_runs_ending_with_the_same_weights_are_evaluated_on_the_test_split_once(
    tiny_study, monkeypatch
):
    """A repeated deterministic mask already within eps ends every run with the same weights
    (0 iterations): the test split is evaluated once for all of them; distinct weights
    (random masks) once each. The validation split is not evaluated per run."""
    import copy

    from prunetime import study
    from prunetime.study import run_prune, run_retrain

    root = tiny_study["root"]
    cfg = copy.deepcopy(tiny_study["cfg"])
    cfg["pruning"]["repeat_deterministic"] = True
    cfg["architectures"]["mlp"]["retrain"]["eps"] = 1e6  # within eps before any step
    args = (root / "data.pt", root / "d.pt")
    calls: list[torch.Tensor] = []
    real = study.evaluate
    test_y = torch.load(root / "data.pt")["test_y"]

    def counted(model, split, *a, **kw):
        calls.append(split.y)
        return real(model, split, *a, **kw)

    monkeypatch.setattr(study, "evaluate", counted)
    for method, evaluations in (("magnitude", 1), ("random", 3)):
        run_prune(cfg, "mlp", 0, method, 0.5, *args, root / "ev.pt", root / "ev.csv")
        calls.clear()
        out = run_retrain(
            cfg, "mlp", 0, method, 0.5, *args, root / "ev.pt", root / "m.json",
            root / "ev_r.csv", root / "ev_c.csv",
        )  # fmt: skip
        assert [r["iterations"] for r in out] == [0, 0, 0]
        assert len(calls) == evaluations  # the test images, never the validation split
        assert all(torch.equal(y, test_y) for y in calls)
        assert len({(r["test_loss"], r["test_acc"]) for r in out}) == evaluations
        assert "val_acc" not in out[0]


def test_the_check_screen_is_in_the_job_slice_only_when_off_and_reaches_the_trials(
    tiny_study, monkeypatch
):
    """On (the default) the retraining slice is as it was before the key existed, so finished
    results are not rerun; off, the slice changes (a rerun) and the trials check every image."""
    import copy

    from prunetime import study
    from prunetime.config import validate_config
    from prunetime.plan import job_config

    root, cfg = tiny_study["root"], tiny_study["cfg"]
    assert cfg["retrain"]["screen"] is True
    assert "screen" not in job_config(cfg, "mlp", "retrain")["retrain"]
    off = copy.deepcopy(cfg)
    off["retrain"]["screen"] = False
    assert validate_config(off)["retrain"]["screen"] is False
    assert job_config(off, "mlp", "retrain")["retrain"]["screen"] is False
    seen: list[bool] = []
    real = study.retrain_trials

    def spy(*a, **kw):
        seen.append(kw["screen"])
        return real(*a, **kw)

    monkeypatch.setattr(study, "retrain_trials", spy)
    args = (root / "data.pt", root / "d.pt")
    study.run_prune(cfg, "mlp", 0, "random", 0.5, *args, root / "sc.pt", root / "sc.csv")
    for slice_, name in (
        (job_config(cfg, "mlp", "retrain"), "on"),
        (job_config(off, "mlp", "retrain"), "off"),
    ):
        study.run_retrain(
            slice_, "mlp", 0, "random", 0.5, *args, root / "sc.pt", root / "m.json",
            root / f"sc_{name}_r.csv", root / f"sc_{name}_c.csv",
        )  # fmt: skip
    assert seen == [True, False]


def test_pruning_data_is_a_fixed_seeded_subset_of_the_training_split():
    from prunetime.study import pruning_indices

    a = pruning_indices(1000, 50, 3)
    assert torch.equal(a, pruning_indices(1000, 50, 3))
    assert not torch.equal(a, pruning_indices(1000, 50, 4))
    assert len(set(a.tolist())) == 50 and int(a.max()) < 1000 and torch.equal(a, a.sort().values)
    with pytest.raises(ValueError, match="pruning.data.size"):
        pruning_indices(1000, 1001, 0)


# --------------------------------------------------------------------------- compaction


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("method", NODE_METHODS)
def test_unit_compaction_cuts_out_exactly_the_removed_units(arch, method):
    from torch.func import functional_call

    model = _model(arch)
    masks, _ = _prune(model, method, 0.6)
    comp = unit_compaction(model, masks)
    assert comp is not None
    state = {k: v.detach() for k, v in model.named_parameters()}
    small = comp.shrink(state)
    reference = compact_state(model, masks)
    assert set(small) == set(reference)
    for k in small:
        assert torch.equal(small[k], reference[k]), k
    # back to full size: the masked tensors exactly, zeros where the units were
    assert all(torch.equal(v, state[k]) for k, v in comp.expand(small).items())
    # the smaller network computes the masked network's outputs through the same module
    x = _data(16, seed=3).reshape(16, -1)
    with torch.no_grad():
        out_small, out_full = functional_call(model, small, (x,)), model(x)
    assert out_small.shape == out_full.shape
    assert torch.allclose(out_small, out_full, atol=1e-5 * float(out_full.abs().max()))
    # masks shrink the same way; within the kept units nothing is masked
    assert all(bool(m.all()) for m in comp.shrink(masks).values())


def test_unit_compaction_only_for_whole_unit_removal():
    model = _model("lenet300100")
    masks, _ = _prune(model, "random", 0.5)  # connection level: no unit goes whole
    assert unit_compaction(model, masks) is None
    node, _ = _prune(_model("lenet300100"), "random_node", 0.5)
    assert unit_compaction(model, {}) is None
    # a removed row whose bias survives is not a removed unit
    partial = {k: v.clone() for k, v in node.items()}
    gone = int(torch.nonzero(~partial["fc1.bias"])[0])
    partial["fc1.bias"][gone] = True
    assert unit_compaction(model, partial) is None
    # nor one whose outgoing column survives
    partial = {k: v.clone() for k, v in node.items()}
    partial["fc2.weight"][:, gone] = True
    assert unit_compaction(model, partial) is None


@pytest.mark.parametrize(("arch", "n_trials"), [("lenet300100", 3), ("lenet5", 1)])
def test_retraining_the_smaller_network_equals_masked_retraining(arch, n_trials):
    from prunetime.data import Split
    from prunetime.ensemble import TrialSpec, _InputCut, retrain_trials
    from prunetime.study import _compact

    g = torch.Generator().manual_seed(5)
    train = Split(torch.rand(256, 784, generator=g), torch.randint(0, 10, (256,), generator=g))
    evalset = Split(torch.rand(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g))
    evalset.x[:, :84] = 0  # blank top rows: LeNet-300-100's checks cut those input columns
    model = _model(arch)
    assert (_InputCut.of(model, train, evalset) is not None) == (arch == "lenet300100")
    dense = {k: v.detach().clone() for k, v in model.named_parameters()}

    def specs() -> list[TrialSpec]:
        out = []
        for t in range(n_trials):
            m = copy.deepcopy(model)
            masks, _ = _prune(m, "random_node", 0.5, seed=10 + t)
            state = {k: v.detach().clone() for k, v in m.named_parameters()}
            out.append(TrialSpec(state, masks, torch.Generator().manual_seed(t)))
        return out

    def run(trials):
        return retrain_trials(
            model, trials, train, evalset, target_loss=0.0, eps=1e-9, optimizer="adam",
            lr=0.01, batch_size=32, max_iters=25,
        )  # fmt: skip

    full = run(specs())
    small_specs = specs()
    comps = _compact(model, small_specs)
    assert comps is not None and all(s.masks is None for s in small_specs)
    assert small_specs[0].state["fc1.weight"].shape[0] < dense["fc1.weight"].shape[0]
    small = run(small_specs)
    for a, b, c in zip(full, small, comps, strict=True):
        assert a.iterations == b.iterations == 25 and a.status == b.status == "capped"
        la, lb = [v for _, v in a.eval_losses], [v for _, v in b.eval_losses]
        assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)
        back = c.expand(b.state)
        # Float summation order only; Adam's 1/sqrt(v) can move an entry whose gradient is
        # near zero by a few 1e-5 (the batched ensemble's tolerance, tests/test_ensemble.py).
        for k in a.state:
            assert torch.allclose(a.state[k], back[k], atol=1e-4, rtol=0), k
            assert torch.equal(back[k] == 0, a.state[k] == 0) or k.endswith("bias"), k
