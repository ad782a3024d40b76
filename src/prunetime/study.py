"""The retraining-bounds study (THEORY.md section A) as job-sized functions.

Each function is one Snakemake job: it reads its inputs, computes, and writes its outputs
atomically. None imports pandas, seaborn or torchvision, so training jobs start fast;
the table and figure steps live in :mod:`prunetime.analysis` and :mod:`prunetime.report`.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

import torch

from prunetime import bounds
from prunetime.data import Split, eval_indices, load_prepared
from prunetime.io import load_torch, read_json, save_torch, write_csv, write_json
from prunetime.models import build_model, init_weights, weight_names
from prunetime.pruning import apply_pruning, build_pruner, pack_masks, resolve_layers, unpack_masks
from prunetime.training import (
    evaluate,
    resolve_device,
    retrain_to_convergence,
    train_dense,
)


def job_config(config: dict[str, Any], arch_name: str, stage: str) -> dict[str, Any]:
    """The slice of the validated config one job depends on.

    Rules pass it as a param: Snakemake reruns a job exactly when its slice changes, so
    changing eps reruns retraining but not dense training or pruning.
    """
    arch = config["architectures"][arch_name]
    out: dict[str, Any] = {
        "data": {"normalize": config["data"]["normalize"]},
        "eval": config["eval"],
        "architectures": {arch_name: {"model": arch["model"]}},
    }
    sel = out["architectures"][arch_name]
    if stage == "dense":
        sel.update(init=arch["init"], train=arch["train"])
    elif stage == "prune":
        out["pruning"] = {k: config["pruning"][k] for k in ("trials", "layers", "with_replacement")}
    elif stage == "retrain":
        sel["retrain"] = arch["retrain"]
        out["retrain"] = config["retrain"]
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return out


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any identifying parts (same parts -> same seed, any machine)."""
    return zlib.crc32("|".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def fmt_amount(amount: float) -> str:
    """Canonical text of a pruning amount, used in file names and tables."""
    return f"{amount:g}"


def setup_torch(device: str = "auto", threads: int = 1) -> str:
    """Pin torch's thread count to the job's share of cores and pick the device."""
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return resolve_device(device)


def _load_data(
    config: dict[str, Any], data_path: Path, device: str
) -> tuple[Split, Split, Split, Split]:
    prep = load_prepared(data_path, config["data"]["normalize"], device)
    idx = eval_indices(len(prep.val), config["eval"]["size"], config["eval"]["seed"]).to(device)
    return prep.train, prep.val, prep.test, prep.val.subset(idx)


def _model_from_state(
    arch: dict[str, Any], state: dict[str, torch.Tensor], device: str
) -> torch.nn.Module:
    model = build_model(arch["model"])
    model.load_state_dict(state)
    return model.to(device)


def run_dense(
    config: dict[str, Any],
    arch_name: str,
    seed: int,
    data_path: Path,
    out_ckpt: Path,
    out_metrics: Path,
    out_curve: Path,
    device: str = "auto",
    threads: int = 1,
) -> dict[str, Any]:
    """Initial (dense) training: saves W_init and W*, the curve and the dense metrics."""
    device = setup_torch(device, threads)
    arch = config["architectures"][arch_name]
    train, val, test, evalset = _load_data(config, data_path, device)
    gen = torch.Generator().manual_seed(derive_seed(seed, arch_name, "init"))
    model = build_model(arch["model"])
    init_weights(model, arch["init"]["scheme"], arch["init"]["std"], gen)
    model.to(device)
    w_init = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    names = weight_names(model)
    g_init = bounds.grad_sq_norms(model, evalset, names)
    loss_init, _ = evaluate(model, evalset)

    tr = arch["train"]
    batch_gen = torch.Generator(device=device).manual_seed(derive_seed(seed, arch_name, "train"))
    t0 = time.perf_counter()
    result = train_dense(
        model,
        train,
        evalset,
        optimizer=tr["optimizer"],
        lr=tr["lr"],
        batch_size=tr["batch_size"],
        steps=tr["steps"],
        generator=batch_gen,
        log_every=tr["log_every"],
        momentum=tr["momentum"],
    )
    wall = time.perf_counter() - t0
    w_star = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    g_star = bounds.grad_sq_norms(model, evalset, names)
    eval_loss, eval_acc = evaluate(model, evalset)
    val_loss, val_acc = evaluate(model, val)
    test_loss, test_acc = evaluate(model, test)
    metrics = {
        "arch": arch_name,
        "model": arch["model"],
        "seed": seed,
        "t_init": result.steps,
        "epochs_init": result.steps * tr["batch_size"] / len(train),
        "lr_init": tr["lr"],
        "loss_init": loss_init,
        "loss_star": eval_loss,
        "eval_acc": eval_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "g_init": sum(g_init.values()),
        "g_star": sum(g_star.values()),
        "g_init_layers": g_init,
        "n_params": sum(v.numel() for v in w_star.values()),
        "n_weights": sum(w_star[n].numel() for n in names),
        "train_wall_s": wall,
        "n_train": len(train),
        "eval_size": len(evalset),
    }
    save_torch(out_ckpt, {"w_init": w_init, "w_star": w_star, "weight_names": names})
    write_csv(out_curve, [{"arch": arch_name, "seed": seed, **row} for row in result.curve])
    write_json(out_metrics, metrics)
    return metrics


def run_prune(
    config: dict[str, Any],
    arch_name: str,
    seed: int,
    method_name: str,
    amount: float,
    data_path: Path,
    dense_ckpt: Path,
    out_masks: Path,
    out_table: Path,
    device: str = "auto",
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Prune W* for every trial; record sparsity, g(W_s), ||W_s - W*||^2, loss after pruning."""
    device = setup_torch(device, threads)
    arch = config["architectures"][arch_name]
    pcfg = config["pruning"]
    _, _, _, evalset = _load_data(config, data_path, device)
    ckpt = load_torch(dense_ckpt)
    w_star = ckpt["w_star"]
    options = {"with_replacement": pcfg["with_replacement"]} if method_name == "random" else {}
    method = build_pruner(method_name, **options)
    probe = build_model(arch["model"])
    layers = resolve_layers(probe, pcfg["layers"])
    names = weight_names(probe)

    rows: list[dict[str, Any]] = []
    stored: list[dict[str, Any]] = []
    for trial in range(pcfg["trials"]):
        model = _model_from_state(arch, w_star, device)
        gen = torch.Generator().manual_seed(
            derive_seed(seed, arch_name, method_name, fmt_amount(amount), trial, "prune")
        )
        masks, sparsity = apply_pruning(model, method, layers, amount, gen)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        g_s = bounds.grad_sq_norms(model, evalset, names)
        loss_p, acc_p = evaluate(model, evalset)
        row = {
            "arch": arch_name,
            "seed": seed,
            "method": method_name,
            "amount": amount,
            "trial": trial,
            "sparsity": sparsity["overall"],
            "g_s": sum(g_s.values()),
            "d2": bounds.sq_distance(state, w_star, names),
            "loss_pruned": loss_p,
            "acc_pruned": acc_p,
        }
        row.update({f"sparsity[{n}]": sparsity[n] for n in layers})
        rows.append(row)
        rec: dict[str, Any] = {"masks": pack_masks(masks)}
        if method.changes_weights:
            rec["state"] = state
        stored.append(rec)
    save_torch(out_masks, {"method": method_name, "amount": amount, "trials": stored})
    write_csv(out_table, rows)
    return rows


def run_retrain(
    config: dict[str, Any],
    arch_name: str,
    seed: int,
    method_name: str,
    amount: float,
    data_path: Path,
    dense_ckpt: Path,
    prune_file: Path,
    dense_metrics: Path,
    out_table: Path,
    out_curves: Path,
    device: str = "auto",
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Retrain every trial's pruned model until |L(W_t) - L(W*)| <= eps (or the cap)."""
    device = setup_torch(device, threads)
    arch = config["architectures"][arch_name]
    rt = arch["retrain"]
    masked = config["retrain"]["masked"]
    train, val, test, evalset = _load_data(config, data_path, device)
    ckpt = load_torch(dense_ckpt)
    pruned = load_torch(prune_file)
    target = float(read_json(dense_metrics)["loss_star"])

    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    for trial, rec in enumerate(pruned["trials"]):
        masks = {k: v.to(device) for k, v in unpack_masks(rec["masks"]).items()}
        model = _model_from_state(arch, rec.get("state", ckpt["w_star"]), device)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, m in masks.items():
                params[name].mul_(m)
        gen = torch.Generator(device=device).manual_seed(
            derive_seed(seed, arch_name, method_name, fmt_amount(amount), trial, "retrain")
        )
        t0 = time.perf_counter()
        res = retrain_to_convergence(
            model,
            train,
            evalset,
            target_loss=target,
            eps=rt["eps"],
            optimizer=rt["optimizer"],
            lr=rt["lr"],
            batch_size=rt["batch_size"],
            max_iters=rt["max_iters"],
            generator=gen,
            masks=masks if masked else None,
            momentum=rt["momentum"],
        )
        wall = time.perf_counter() - t0
        val_loss, val_acc = evaluate(model, val)
        test_loss, test_acc = evaluate(model, test)
        rows.append(
            {
                "arch": arch_name,
                "seed": seed,
                "method": method_name,
                "amount": amount,
                "trial": trial,
                "iterations": res.iterations,
                "epochs": res.iterations * rt["batch_size"] / len(train),
                "status": res.status,
                "final_eval_loss": res.final_eval_loss,
                "val_acc": val_acc,
                "test_acc": test_acc,
                "test_loss": test_loss,
                "eps": rt["eps"],
                "eta": rt["lr"],
                "max_iters": rt["max_iters"],
                "masked": masked,
                "wall_s": wall,
            }
        )
        curves.extend(
            {"trial": trial, "step": t, "eval_loss": loss} for t, loss in enumerate(res.eval_losses)
        )
    write_csv(out_curves, curves)
    write_csv(out_table, rows)
    return rows
