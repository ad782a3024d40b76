"""The pre-training threshold study (THEORY.md C) as job-sized functions.

Two jobs per (m, seed): :func:`run_pretrain_train` pre-trains the two-layer ReLU network on a
balanced m-image subset with a fixed learning rate and saves its weights at log-spaced
iteration counts; :func:`run_pretrain_prune` runs greedy forward selection at every saved
checkpoint (with and without replacement), evaluates and optionally fine-tunes the
subnetworks, and estimates the NTK's lambda0 at initialisation. Splitting them lets a change
of the greedy or fine-tune settings rerun selection without retraining. Neither imports
pandas, seaborn or torchvision; tables and figures live in :mod:`prunetime.threshold` and
:mod:`prunetime.pretrain_report`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from prunetime.data import load_prepared
from prunetime.greedy import (
    TwoLayerNet,
    build_two_layer,
    greedy_select,
    kappa_of,
    loss_value,
    prepare_inputs,
    scale_factor,
    subnetwork,
)
from prunetime.io import load_torch, save_torch, write_csv, write_json
from prunetime.ntk import (
    empirical_ntk,
    infinite_width_gram,
    smallest_eigenvalue,
    two_layer_ntk,
)
from prunetime.study import derive_seed, setup_torch
from prunetime.training import batches

VARIANTS = {"with_replacement": True, "without_replacement": False}
N_CLASSES = 10


def checkpoint_steps(steps: int, count: int, first: int = 1) -> list[int]:
    """0 (the initialisation) and ``count`` log-spaced iteration counts from ``first`` to ``steps``.

    Rounding can merge neighbours at the low end, so the list may be shorter than count + 1.
    """
    if not 1 <= first <= steps:
        raise ValueError(f"need 1 <= first ({first}) <= steps ({steps})")
    if count < 2:
        return [0, steps]
    ratio = (steps / first) ** (1.0 / (count - 1))
    grid = {round(first * ratio**i) for i in range(count)} | {first, steps}
    return [0, *sorted(s for s in grid if first <= s <= steps)]


def balanced_subset(
    labels: torch.Tensor, m: int, seed: int, n_classes: int = N_CLASSES
) -> tuple[torch.Tensor, int]:
    """Indices of a class-balanced subset of m images, capped at the largest balanced size.

    Each class contributes m // n_classes images (the first m % n_classes classes one more)
    drawn by a per-class permutation that depends on the seed only, so the subsets of one seed
    are nested (the 2k subset contains the 1k subset). When m exceeds n_classes times the
    rarest class's count, the subset is that balanced maximum (60k -> 49530 images of the
    default 55k-image training split); the effective m is returned.
    """
    labels = labels.cpu()
    avail = torch.bincount(labels, minlength=n_classes)
    cap = int(avail.min()) * n_classes
    m_eff = min(m, cap)
    want = [m_eff // n_classes + (1 if c < m_eff % n_classes else 0) for c in range(n_classes)]
    parts = []
    for c in range(n_classes):
        members = torch.nonzero(labels == c).flatten()
        gen = torch.Generator().manual_seed(derive_seed(seed, "pretrain-subset", c))
        parts.append(members[torch.randperm(len(members), generator=gen)[: want[c]]])
    return torch.cat(parts).sort().values, m_eff


def _load_inputs(
    params: dict[str, Any], data_path: Path, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    prep = load_prepared(data_path, params["data"]["normalize"], device)
    norm = params["pretrain"]["model"]["input_norm"]
    return (
        prepare_inputs(prep.train.x, norm),
        prep.train.y,
        prepare_inputs(prep.test.x, norm),
        prep.test.y,
    )


def _sgd_run(
    model: TwoLayerNet,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str,
    lr: float,
    batch_size: int,
    steps: int,
    loss: str,
    generator: torch.Generator,
    snapshot_at: set[int] | None = None,
) -> tuple[list[tuple[int, dict[str, torch.Tensor]]], list[dict[str, float]]]:
    """Plain fixed-step gradient descent: minibatch SGD or full-batch GD ('gd').

    Returns the snapshots taken after the listed step counts (0 = before any step) and the
    mean minibatch loss between consecutive snapshots. Raises on a non-finite loss, since a
    diverged run has no threshold to measure.
    """
    snapshot_at = snapshot_at or set()
    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=lr)
    stream = batches(len(y), batch_size, generator) if method == "sgd" else None
    snaps: list[tuple[int, dict[str, torch.Tensor]]] = []
    curve: list[dict[str, float]] = []

    def snap(step: int) -> None:
        snaps.append((step, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}))

    if 0 in snapshot_at:
        snap(0)
    running, count = 0.0, 0
    for step in range(1, steps + 1):
        if stream is not None:
            idx = next(stream)
            xb, yb = x[idx], y[idx]
        else:
            xb, yb = x, y
        opt.zero_grad(set_to_none=True)
        value = loss_value(model(xb), yb, loss)
        value.backward()
        opt.step()
        v = float(value.detach())
        if not math.isfinite(v):
            raise FloatingPointError(
                f"training diverged at step {step} (loss {v}); lower pretrain.train.lr"
            )
        running, count = running + v, count + 1
        if step in snapshot_at:
            snap(step)
            curve.append({"step": step, "batch_loss": running / count})
            running, count = 0.0, 0
    return snaps, curve


def run_pretrain_train(
    params: dict[str, Any],
    m: int,
    seed: int,
    data_path: Path,
    out_ckpt: Path,
    out_metrics: Path,
    device: str = "auto",
    threads: int = 1,
) -> dict[str, Any]:
    """Pre-train on the balanced m-subset and save the weights at every checkpoint."""
    device = setup_torch(device, threads)
    p = params["pretrain"]
    mc, tr, ck = p["model"], p["train"], p["checkpoints"]
    x_all, y_all, _, _ = _load_inputs(params, data_path, device)
    subset, m_eff = balanced_subset(y_all, m, seed)
    subset = subset.to(device)
    x, y = x_all[subset], y_all[subset]
    # The same initial network for every m of a seed: differences between m are the data's.
    gen = torch.Generator().manual_seed(derive_seed(seed, "pretrain", "init"))
    model = build_two_layer(
        x.shape[1], mc["width"], N_CLASSES, mc["scaling"], mc["init_std"], gen, mc["train_output"]
    ).to(device)
    steps = checkpoint_steps(tr["steps"], ck["count"], ck["first"])
    batch_gen = torch.Generator(device=device).manual_seed(
        derive_seed(seed, m, "pretrain", "batches")
    )
    t0 = time.perf_counter()
    snaps, curve = _sgd_run(
        model,
        x,
        y,
        method=tr["method"],
        lr=tr["lr"],
        batch_size=min(tr["batch_size"], m_eff),
        steps=tr["steps"],
        loss=tr["loss"],
        generator=batch_gen,
        snapshot_at=set(steps),
    )
    wall = time.perf_counter() - t0
    save_torch(
        out_ckpt,
        {
            "steps": torch.tensor([s for s, _ in snaps]),
            "w": torch.stack([st["w"] for _, st in snaps]),
            "a": torch.stack([st["a"] for _, st in snaps]),
            "subset": subset.cpu(),
            "m": m_eff,
            "m_requested": m,
            "seed": seed,
            "out_scale": model.out_scale,
        },
    )
    metrics = {
        "m": m_eff,
        "m_requested": m,
        "capped": m_eff < m,
        "seed": seed,
        "width": mc["width"],
        "steps": tr["steps"],
        "checkpoints": [s for s, _ in snaps],
        "lr": tr["lr"],
        "method": tr["method"],
        "loss": tr["loss"],
        "train_wall_s": wall,
        "curve": curve,
    }
    write_json(out_metrics, metrics)
    return metrics


@torch.no_grad()
def _scores(out: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[float, float]:
    return float(loss_value(out, y, loss)), float((out.argmax(1) == y).float().mean())


def _finetune(
    sub: TwoLayerNet,
    x: torch.Tensor,
    y: torch.Tensor,
    tr: dict[str, Any],
    ft: dict[str, Any],
    width: int,
    generator: torch.Generator,
) -> None:
    """A short fixed-step fine-tune of the subnetwork, same loss and optimizer as pre-training.

    The default step size is train.lr * |S| / N, which moves the subnetwork's output as far
    per step as a pre-training step moves the width-N network's (both scalings).
    """
    lr = ft["lr"] if ft["lr"] is not None else tr["lr"] * sub.width / width
    with torch.enable_grad():
        _sgd_run(
            sub,
            x,
            y,
            method=tr["method"],
            lr=lr,
            batch_size=min(tr["batch_size"], len(y)),
            steps=ft["steps"],
            loss=tr["loss"],
            generator=generator,
        )


def ntk_lambda0(
    model: TwoLayerNet, x: torch.Tensor, method: str = "torch_func"
) -> dict[str, float]:
    """lambda0 on a subsample of s points, normalised for the mean loss (divided by s).

    The training loss is a mean over samples, so gradient flow moves the residuals with the
    matrix eta * K / s; lambda0 = lambda_min(K) / s is the rate of its slowest mode, the
    quantity that makes T* * eta * lambda0 dimensionless. Reported for the empirical NTK of
    the network (its trained parameters; by torch.func, or by the same kernel written out,
    'closed_form') and for the infinite-width Gram H of THEORY.md C.
    """
    s = x.shape[0]
    if method == "torch_func":
        kernel = empirical_ntk(model, x)
    elif method == "closed_form":
        kernel = two_layer_ntk(model, x)
    else:
        raise ValueError(f"unknown ntk method {method!r}; allowed: 'torch_func', 'closed_form'")
    emp = smallest_eigenvalue(kernel)
    inf = smallest_eigenvalue(infinite_width_gram(x))
    return {
        "lambda0": emp / s,
        "lambda0_raw": emp,
        "lambda0_inf": inf / s,
        "lambda0_inf_raw": inf,
        "ntk_subsample": s,
    }


def run_pretrain_prune(
    params: dict[str, Any],
    m: int,
    seed: int,
    data_path: Path,
    ckpt_path: Path,
    out_rows: Path,
    out_metrics: Path,
    device: str = "auto",
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Greedy selection at every checkpoint of one (m, seed) run; dense and pruned scores."""
    device = setup_torch(device, threads)
    p = params["pretrain"]
    mc, tr, gr, ft = p["model"], p["train"], p["greedy"], p["finetune"]
    x_all, y_all, xt, yt = _load_inputs(params, data_path, device)
    ck = load_torch(ckpt_path)
    subset = ck["subset"].to(device)
    x, y = x_all[subset], y_all[subset]
    m_eff = int(ck["m"])
    width, train_out = mc["width"], mc["train_output"]
    if (
        ck["w"].shape[1] != width
        or abs(float(ck["out_scale"]) - scale_factor(width, mc["scaling"])) > 1e-12
    ):
        raise ValueError(f"{ckpt_path}: checkpoint does not match pretrain.model {mc}")
    base = {
        "m": m_eff,
        "m_requested": m,
        "seed": seed,
        "width": width,
        "scaling": mc["scaling"],
        "loss": tr["loss"],
        "method": tr["method"],
        "lr": tr["lr"],
    }
    rows: list[dict[str, Any]] = []
    selections: dict[str, list[int]] = {}
    t_start = time.perf_counter()
    select_wall = 0.0
    for i, step in enumerate(ck["steps"].tolist()):
        model = TwoLayerNet(x.shape[1], width, N_CLASSES, float(ck["out_scale"]), train_out)
        model.load_state_dict({"w": ck["w"][i], "a": ck["a"][i]})
        model.to(device)
        with torch.no_grad():
            h, ht, a = model.hidden(x), model.hidden(xt), model.a.detach()
            kappa = kappa_of(model)
            tl, ta = _scores(model.out_scale * h @ a, y, tr["loss"])
            vl, va = _scores(model.out_scale * ht @ a, yt, tr["loss"])
        row = {**base, "step": step, "variant": "dense", "stage": "dense", "size": width}
        rows.append(
            {
                **row,
                "distinct": width,
                "train_loss": tl,
                "train_acc": ta,
                "test_loss": vl,
                "test_acc": va,
                "select_wall_s": 0.0,
                "stopped_by": "",
            }
        )
        for variant in gr["variants"]:
            t0 = time.perf_counter()
            with torch.no_grad():
                sel = greedy_select(
                    h,
                    a,
                    kappa,
                    y,
                    gr["size"],
                    loss=tr["loss"],
                    replacement=VARIANTS[variant],
                    loss_target=gr["loss_target"],
                )
            sel_wall = time.perf_counter() - t0
            select_wall += sel_wall
            selections[f"{step}/{variant}"] = sel.indices
            n = len(sel.indices)
            with torch.no_grad():
                weights = sel.counts(width).to(device).unsqueeze(1) * a * (kappa / n)
                tl, ta = _scores(h @ weights, y, tr["loss"])
                vl, va = _scores(ht @ weights, yt, tr["loss"])
            row = {**base, "step": step, "variant": variant, "size": n, "distinct": sel.distinct}
            rows.append(
                {
                    **row,
                    "stage": "pruned",
                    "train_loss": tl,
                    "train_acc": ta,
                    "test_loss": vl,
                    "test_acc": va,
                    "select_wall_s": sel_wall,
                    "stopped_by": sel.stopped_by,
                }
            )
            if ft["steps"] > 0:
                sub = subnetwork(model, sel.indices)
                gen = torch.Generator(device=device).manual_seed(
                    derive_seed(seed, m, step, variant, "pretrain", "finetune")
                )
                _finetune(sub, x, y, tr, ft, width, gen)
                with torch.no_grad():
                    tl, ta = _scores(sub(x), y, tr["loss"])
                    vl, va = _scores(sub(xt), yt, tr["loss"])
                rows.append(
                    {
                        **row,
                        "stage": "finetuned",
                        "train_loss": tl,
                        "train_acc": ta,
                        "test_loss": vl,
                        "test_acc": va,
                        "select_wall_s": sel_wall,
                        "stopped_by": sel.stopped_by,
                    }
                )
    # lambda0 of the network at initialisation (checkpoint 0) on a seeded subsample of the data.
    steps = ck["steps"].tolist()
    if 0 not in steps:
        raise ValueError(f"{ckpt_path}: no checkpoint at step 0 (the initialisation)")
    init = TwoLayerNet(x.shape[1], width, N_CLASSES, float(ck["out_scale"]), train_out)
    init.load_state_dict({"w": ck["w"][steps.index(0)], "a": ck["a"][steps.index(0)]})
    init.to(device)
    gen = torch.Generator().manual_seed(derive_seed(p["ntk"]["seed"], m, seed, "pretrain-ntk"))
    pick = torch.randperm(m_eff, generator=gen)[: p["ntk"]["subsample"]].to(device)
    lam = ntk_lambda0(init, x[pick], p["ntk"]["method"])
    metrics = {
        **base,
        **lam,
        "greedy_size": gr["size"],
        "finetune_steps": ft["steps"],
        "select_wall_s": select_wall,
        "job_wall_s": time.perf_counter() - t_start,
        "selections": selections,
    }
    write_csv(out_rows, rows)
    write_json(out_metrics, metrics)
    return rows
