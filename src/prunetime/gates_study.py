"""The structure-discovery study (THEORY.md D) as job-sized functions.

One job per (network, variant, lambda, seed) trains a gated network from scratch
(:func:`run_gates_train`): every minibatch samples the gates, the loss is the data loss plus
lambda times the normalised expected cost (the weight regulariser is the optimizer's weight
decay), the thetas take projected SGD steps, and every ``check_every`` steps a structure
whose theta stayed at or below ``threshold`` for ``patience`` checks in a row is removed
physically. At the end the gates are rounded, so the network is deterministic.

Variants: ``combined`` (unit and block gates), ``unit`` (block gates fixed at 1), ``layer``
(unit gates fixed at 1). Baselines: ``dense`` (no gates, same network, same training) and
``magnitude`` (:func:`run_gates_magnitude`: the dense network pruned connection-wise by
magnitude to the parameter count the combined variant reached at the same lambda and seed,
then retrained to the dense network's evaluation loss with the foundation's retraining).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prunetime.data import MNIST_MEAN, MNIST_STD, Split, eval_indices
from prunetime.gates import (
    BLOCK,
    GatedNet,
    build_gated,
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
from prunetime.io import load_torch, read_json, save_torch, write_csv, write_json
from prunetime.plan import fmt_lambda
from prunetime.study import derive_seed, setup_torch
from prunetime.training import BatchStream, evaluate

# Keys of each network model with their defaults (the schema lists the union).
VARIANTS = {"combined": (True, True), "unit": (True, False), "layer": (False, True)}
DENSE, MAGNITUDE = "dense", "magnitude"
log = logging.getLogger("prunetime")


# --------------------------------------------------------------------------- config


# --------------------------------------------------------------------------- data, model


def _to_float(x: torch.Tensor, normalize: str, device: str) -> torch.Tensor:
    """uint8 images -> float32 [N, C, H, W] in [0, 1] (or MNIST-standardised), on ``device``."""
    out = x.to(torch.float32).div_(255.0)
    if out.dim() == 3:
        out = out.unsqueeze(1)
    if normalize == "standardize":
        out = out.sub_(MNIST_MEAN).div_(MNIST_STD)
    return out.to(device)


def load_data(cfg: dict[str, Any], data_path: Path, device: str) -> tuple[Split, Split, Split]:
    """Training split (a fixed seeded subset when gates.train_size is set), eval set, test.

    Only the images a job uses are converted to float, so a job on a subset starts fast.
    """
    blob = torch.load(data_path, weights_only=True)
    norm = cfg["data"]["normalize"]
    tx, ty = blob["train_x"], blob["train_y"]
    n = cfg["gates"]["train_size"]
    if n is not None and n < len(ty):
        idx = torch.randperm(len(ty), generator=torch.Generator().manual_seed(0))[:n].sort()
        tx, ty = tx[idx.values], ty[idx.values]
    idx = eval_indices(len(blob["val_y"]), cfg["eval"]["size"], cfg["eval"]["seed"])
    return (
        Split(_to_float(tx, norm, device), ty.to(device)),
        Split(_to_float(blob["val_x"][idx], norm, device), blob["val_y"][idx].to(device)),
        Split(_to_float(blob["test_x"], norm, device), blob["test_y"].to(device)),
    )


def init_model(cfg: dict[str, Any], net: str, seed: int, input_shape: tuple[int, ...]):
    """The network of ``net`` with the initial weights of ``seed``, the same for every variant,
    lambda and baseline (so they differ only in what training does)."""
    torch.manual_seed(derive_seed("gates-init", net, seed))
    return build_gated(cfg["gates"]["networks"][net], input_shape)


def save_model(path: Path, model: GatedNet, spec: dict[str, Any]) -> None:
    from prunetime.gates import architecture

    save_torch(
        path,
        {
            "spec": spec,
            "input_shape": list(model.input_shape),
            "arch": architecture(model),
            "state": model.state_dict(),
        },
    )


def load_model(path: Path) -> GatedNet:
    """Rebuild a saved (possibly pruned) network: same blocks removed, same unit counts."""
    blob = load_torch(path)
    model = build_gated(blob["spec"], tuple(blob["input_shape"]))
    model.configure(unit=False, block=False)
    for rec in blob["arch"]:
        block = next(b for b in model.blocks if b.bid == rec["block"])
        if not rec["kept"]:
            remove_block(model, block)
        elif rec["units"] < len(block.units):
            drop = torch.zeros(len(block.units), dtype=torch.bool)
            drop[rec["units"] :] = True
            remove_units(block, drop)
    model.load_state_dict(blob["state"])
    model.configure(unit=False, block=False)
    return model


# --------------------------------------------------------------------------- training


def _optimizers(model: GatedNet, t: dict[str, Any], theta_lr: float):
    if t["optimizer"] == "adam":
        wopt: torch.optim.Optimizer = torch.optim.Adam(
            model.weights(), lr=t["lr"], weight_decay=t["weight_decay"]
        )
    else:
        wopt = torch.optim.SGD(
            model.weights(), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"]
        )
    thetas = model.thetas()
    return wopt, (torch.optim.SGD(thetas, lr=theta_lr) if thetas else None)


def _theta_rows(model: GatedNet, step: int, epoch: int) -> list[dict[str, Any]]:
    rows = []
    for b, g in model.gate_sets():
        if not g.active:
            continue
        for sid, th in zip(g.ids.tolist(), g.theta.detach().tolist(), strict=True):
            unit = -1 if g.kind == BLOCK else sid
            rows.append(
                {"step": step, "epoch": epoch, "block": b.bid, "kind": g.kind, "unit": unit,
                 "theta": th}
            )  # fmt: skip
    return rows


def prune_check(model: GatedNet, opts: list[torch.optim.Optimizer], g: dict[str, Any]):
    """Count checks at or below the threshold; remove what stayed there ``patience`` times."""
    units = blocks = 0
    for b in list(model.gated_blocks()):
        for gs in (b.gate, b.units):
            if gs.active:
                low = gs.theta.detach() <= g["threshold"]
                gs.low_count = torch.where(low, gs.low_count + 1, torch.zeros_like(gs.low_count))
        if b.gate.active and int(b.gate.low_count[0]) >= g["patience"]:
            remove_block(model, b, opts)
            blocks += 1
            continue
        if b.units.active:
            drop = b.units.low_count >= g["patience"]
            if bool(drop.all()):  # keep one unit: only the block gate removes a whole block
                drop[int(torch.argmax(b.units.theta.detach()))] = False
            units += remove_units(b, drop, opts)
    return units, blocks


def train_gated(
    model: GatedNet,
    train: Split,
    evalset: Split,
    cfg: dict[str, Any],
    variant: str,
    lam: float,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Train ``model`` in place with its gates (``variant``) or without (``dense``)."""
    t, g, c = cfg["gates"]["train"], cfg["gates"].get("gates"), cfg["gates"].get("complexity")
    unit, block = VARIANTS.get(variant, (False, False))
    if variant != DENSE:
        model.configure(unit, block, g["estimator"], g["theta_init"])
    else:
        model.configure(False, False)
    wopt, topt = _optimizers(model, t, g["theta_lr"] if g else 0.0)
    opts = [o for o in (wopt, topt) if o is not None]
    weights = (
        cost_weights(model, lam, c["flops_weight"], c["layer_weight"])
        if c
        else cost_weights(model, 0.0, 1.0, 0.0)
    )
    flops_full, params_full = full_cost(model)
    stream = BatchStream(len(train), t["batch_size"], generator)
    steps_per_epoch = len(train) // t["batch_size"]
    shape = model.input_shape
    epochs: list[dict[str, Any]] = []
    thetas = _theta_rows(model, 0, 0)
    removed = {"units_training": 0, "blocks_training": 0}
    step = 0
    model.train()
    for epoch in range(1, t["epochs"] + 1):
        start = time.perf_counter()
        loss_sum = 0.0
        for _ in range(steps_per_epoch):
            step += 1
            idx = next(stream)
            x, y = train.batch(idx)
            model.resample(generator)
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            total = loss + complexity_term(model, weights) if lam else loss
            total.backward()
            if g is not None and g["estimator"] == "difference":
                for b, d in difference_grads(model, x, y).items():
                    th = b.gate.theta
                    th.grad = torch.full_like(th, d) if th.grad is None else th.grad + d
            for o in opts:
                o.step()
            model.project()
            loss_sum += float(loss.detach())
            if g is not None and step % g["check_every"] == 0:
                thetas += _theta_rows(model, step, epoch)
                u, bl = prune_check(model, opts, g)
                removed["units_training"] += u
                removed["blocks_training"] += bl
        wall = time.perf_counter() - start
        eval_loss, eval_acc = evaluate(model, evalset)
        with torch.no_grad():
            cost = expected_cost(model)
            c_norm = float(normalised_cost(model, weights))
        epochs.append(
            {
                "epoch": epoch,
                "step": step,
                "wall_s": wall,
                "train_loss": loss_sum / steps_per_epoch,
                "eval_loss": eval_loss,
                "eval_acc": eval_acc,
                "flops": count_flops(model, shape),
                "params": count_params(model),
                "expected_flops": float(cost.flops),
                "expected_params": float(cost.params),
                "cost": c_norm,
            }
        )
        log.info(
            "%s lam=%g epoch %d: %.2f s, eval acc %.4f, params %d, C=%.3f",
            variant, lam, epoch, wall, eval_acc, epochs[-1]["params"], c_norm,
        )  # fmt: skip
    thetas += _theta_rows(model, step, t["epochs"])
    u, bl = round_gates(model, opts)
    removed.update(units_rounding=u, blocks_rounding=bl)
    return {
        "epochs": epochs,
        "thetas": thetas,
        "removed": removed,
        "steps": step,
        "flops_full": flops_full,
        "params_full": params_full,
    }


def _final_metrics(model: GatedNet, evalset: Split, test: Split) -> dict[str, Any]:
    from prunetime.gates import architecture

    eval_loss, eval_acc = evaluate(model, evalset)
    test_loss, test_acc = evaluate(model, test)
    arch = architecture(model)
    return {
        "eval_loss": eval_loss,
        "eval_acc": eval_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "flops": count_flops(model, model.input_shape),
        "params": count_params(model),
        "architecture": arch,
        "blocks_kept": sum(r["kept"] for r in arch),
        "units_kept": sum(r["units"] for r in arch),
        "thetas_binary": all(
            bool(((g.theta == 0) | (g.theta == 1)).all()) for _, g in model.gate_sets()
        ),
    }


def run_gates_train(
    params: dict[str, Any],
    net: str,
    variant: str,
    lam: float,
    seed: int,
    data_path: Path,
    out_model: Path,
    out_metrics: Path,
    out_epochs: Path,
    out_thetas: Path,
    device: str = "auto",
    threads: int = 1,
) -> dict[str, Any]:
    """One gated (or dense) training run; writes the model, metrics, epochs and thetas."""
    device = setup_torch(device, threads)
    train, evalset, test = load_data(params, data_path, device)
    shape = tuple(train.x.shape[1:])
    model = init_model(params, net, seed, shape).to(device)
    gen = torch.Generator(device=device).manual_seed(derive_seed("gates-train", net, seed))
    start = time.perf_counter()
    hist = train_gated(model, train, evalset, params, variant, lam, gen)
    wall = time.perf_counter() - start
    metrics = {
        "net": net,
        "variant": variant,
        "lambda": lam,
        "seed": seed,
        "train_size": len(train),
        "steps": hist["steps"],
        "train_wall_s": wall,
        "flops_full": hist["flops_full"],
        "params_full": hist["params_full"],
        "removed": hist["removed"],
        **_final_metrics(model, evalset, test),
    }
    metrics["flops_frac"] = metrics["flops"] / hist["flops_full"]
    metrics["params_frac"] = metrics["params"] / hist["params_full"]
    tag = {"net": net, "variant": variant, "lambda": lam, "seed": seed}
    save_model(out_model, model, params["gates"]["networks"][net])
    write_csv(out_epochs, [{**tag, **r} for r in hist["epochs"]])
    write_csv(out_thetas, [{**tag, **r} for r in hist["thetas"]])
    write_json(out_metrics, metrics)
    return metrics


# --------------------------------------------------------------------------- magnitude


def magnitude_amount(model: GatedNet, budget: int) -> tuple[float, list[str]]:
    """Per-tensor connection amount that leaves ``budget`` parameters (biases, BN kept)."""
    layers = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    sizes = dict(model.named_parameters())
    prunable = sum(sizes[n].numel() for n in layers)
    total = count_params(model)
    amount = (total - budget) / prunable if prunable else 0.0
    return min(max(amount, 0.0), 0.999), layers


def run_gates_magnitude(
    params: dict[str, Any],
    net: str,
    lam: float,
    seed: int,
    data_path: Path,
    dense_model: Path,
    dense_metrics: Path,
    budget_metrics: Path,
    out_metrics: Path,
    device: str = "auto",
    threads: int = 1,
) -> dict[str, Any]:
    """Prune the dense net by magnitude to the combined variant's parameter count, retrain."""
    from prunetime.pruning import build_pruner
    from prunetime.training import retrain_to_convergence

    device = setup_torch(device, threads)
    train, evalset, test = load_data(params, data_path, device)
    model = load_model(dense_model).to(device)
    dense = read_json(dense_metrics)
    budget = int(read_json(budget_metrics)["params"])
    amount, layers = magnitude_amount(model, budget)
    gen = torch.Generator().manual_seed(derive_seed("gates-magnitude", net, lam, seed))
    masks = build_pruner("magnitude").masks(model, layers, amount, gen)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            named[name].mul_(m.to(device))
    zeros = sum(int((~m).sum()) for m in masks.values())
    pruned_loss, pruned_acc = evaluate(model, evalset)
    m = params["gates"]["magnitude"]
    rgen = torch.Generator(device=device).manual_seed(derive_seed("gates-retrain", net, lam, seed))
    start = time.perf_counter()
    res = retrain_to_convergence(
        model,
        train,
        evalset,
        target_loss=dense["eval_loss"],
        eps=m["eps"],
        optimizer=m["optimizer"],
        lr=m["lr"],
        batch_size=params["gates"]["train"]["batch_size"],
        max_iters=m["max_iters"],
        generator=rgen,
        masks={k: v.to(device) for k, v in masks.items()},
    )
    wall = time.perf_counter() - start
    eval_loss, eval_acc = evaluate(model, evalset)
    test_loss, test_acc = evaluate(model, test)
    params_kept = count_params(model) - zeros
    metrics = {
        "net": net,
        "variant": MAGNITUDE,
        "lambda": lam,
        "seed": seed,
        "budget_params": budget,
        "amount": amount,
        "params": params_kept,
        "params_full": dense["params_full"],
        "params_frac": params_kept / dense["params_full"],
        # unstructured zeros do not shrink dense matrix products: the counter's FLOPs stay
        "flops": count_flops(model, model.input_shape),
        "flops_full": dense["flops_full"],
        "flops_frac": count_flops(model, model.input_shape) / dense["flops_full"],
        "pruned_eval_loss": pruned_loss,
        "pruned_eval_acc": pruned_acc,
        "retrain_iterations": res.iterations,
        "retrain_status": res.status,
        "retrain_wall_s": wall,
        "eval_loss": eval_loss,
        "eval_acc": eval_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "train_wall_s": dense["train_wall_s"] + wall,
    }
    write_json(out_metrics, metrics)
    return metrics


# --------------------------------------------------------------------------- summary

RUN_COLUMNS = (
    "net variant lambda seed test_acc eval_acc eval_loss params flops params_frac flops_frac "
    "blocks_kept units_kept train_wall_s first_epoch_s last_epoch_s epoch_time_ratio"
).split()


def run_gates_summary(
    params: dict[str, Any],
    metrics_files: list[Path],
    epoch_files: list[Path],
    theta_files: list[Path],
    out_runs: Path,
    out_epochs: Path,
    out_thetas: Path,
    out_metrics: Path,
) -> dict[str, Any]:
    """Join every run into tables and a headline metrics JSON (keys: config/README.md)."""
    import pandas as pd

    ep = pd.concat([pd.read_csv(p) for p in epoch_files], ignore_index=True)
    # a dense run has no gates, so its theta file is empty
    th = pd.concat(
        [pd.read_csv(p) for p in theta_files if Path(p).read_text().strip()], ignore_index=True
    )
    rows = []
    for path in metrics_files:
        m = read_json(path)
        row = {k: m.get(k, math.nan) for k in RUN_COLUMNS}
        mine = ep[
            (ep["net"] == m["net"])
            & (ep["variant"] == (DENSE if m["variant"] == MAGNITUDE else m["variant"]))
            & (ep["lambda"] == (0.0 if m["variant"] in (DENSE, MAGNITUDE) else m["lambda"]))
            & (ep["seed"] == m["seed"])
        ].sort_values("epoch")
        if len(mine) and m["variant"] != MAGNITUDE:
            row["first_epoch_s"] = float(mine["wall_s"].iloc[0])
            row["last_epoch_s"] = float(mine["wall_s"].iloc[-1])
            row["epoch_time_ratio"] = row["last_epoch_s"] / row["first_epoch_s"]
        rows.append(row)
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS)).sort_values(
        ["net", "variant", "lambda", "seed"]
    )
    for frame, path in ((runs, out_runs), (ep, out_epochs), (th, out_thetas)):
        write_csv(path, frame.to_dict("records"))
    headline: dict[str, Any] = {"nets": {}}
    cols = ["test_acc", "params", "flops", "params_frac", "flops_frac", "epoch_time_ratio"]
    for net, sub in runs.groupby("net"):
        entry: dict[str, Any] = {}
        for variant, vs in sub.groupby("variant"):
            per_lam = {}
            for lam, ls in vs.groupby("lambda"):
                mean = ls[cols].mean()
                per_lam[fmt_lambda(float(lam))] = {
                    k: (None if pd.isna(v) else float(v)) for k, v in mean.items()
                } | {"seeds": int(len(ls))}
            entry[str(variant)] = per_lam
        headline["nets"][str(net)] = entry
    headline["runs"] = len(runs)
    write_json(out_metrics, headline)
    return headline
