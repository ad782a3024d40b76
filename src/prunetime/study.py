"""The retraining-bounds study (THEORY.md sections A and B) as job-sized functions.

Each function is one Snakemake job: it reads its inputs, computes, and writes its outputs
atomically. None imports pandas, seaborn or torchvision, so training jobs start fast;
the table and figure steps live in :mod:`prunetime.analysis` and :mod:`prunetime.report`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.utils.deterministic

from prunetime import bounds, curvature, netdev
from prunetime.data import Split, eval_indices, load_prepared
from prunetime.ensemble import TrialResult, TrialSpec, retrain_trials
from prunetime.io import load_torch, read_json, save_torch, write_csv, write_json
from prunetime.journal import TrialJournal
from prunetime.models import build_model, init_weights, weight_names
from prunetime.plan import fmt_amount, retrain_runs
from prunetime.pruning import (
    UnitCompaction,
    apply_pruning,
    build_pruner,
    kept_units,
    pack_masks,
    param_counts,
    resolve_layers,
    selected_unit_layers,
    unit_compaction,
    unpack_masks,
)
from prunetime.training import ProgressLog, evaluate, resolve_device, train_dense

log = logging.getLogger("prunetime")


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any identifying parts (same parts -> same seed, any machine)."""
    return zlib.crc32("|".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def setup_torch(device: str = "auto", threads: int = 1) -> str:
    """Pin torch's thread count to the job's share of cores, keep GPU arithmetic in full
    float32, and pick the device."""
    torch.set_num_threads(threads)
    _deterministic_algorithms()
    full_fp32()
    return resolve_device(device)


def full_fp32() -> None:
    """No reduced precision on a GPU: cuDNN runs float32 convolutions in TF32 (10-bit
    mantissa) by default on Ampere and later GPUs, which would blur the losses compared with
    eps and the squared weight distances the bounds are built from. Nothing here uses
    autocast either, so every job computes in IEEE float32 on any device."""
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cudnn.rnn.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"


def _deterministic_algorithms() -> None:
    """torch.use_deterministic_algorithms(True, warn_only=True) without its import of
    torch._inductor, which costs about 4 s of CPU per job and only configures torch.compile
    (never used here); jobs that build an optimizer import it anyway, pruning jobs do not.

    Deterministic mode also fills every new uninitialized tensor with NaN by default, a debug
    aid against reading uninitialized memory (which no op here does: results are the same).
    It is a full write pass per allocation: 14 % of a LeNet-5 retraining job's CPU time.
    So that fill is switched off.
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # a torch without the private setter: the public call
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]


def _load_data(
    config: dict[str, Any], data_path: Path, device: str
) -> tuple[Split, Split, Split, Split]:
    prep = load_prepared(data_path, config["data"]["normalize"], device)
    idx = eval_indices(len(prep.val), config["eval"]["size"], config["eval"]["seed"]).to(device)
    return prep.train, prep.val, prep.test, prep.val.subset(idx)


def pruning_indices(n_train: int, size: int, seed: int) -> torch.Tensor:
    """The fixed, seeded pruning data: ``size`` images of the training split (never test).

    Clustered pruning describes units by their activations on it, and the Net Deviation
    is measured on it (THEORY.md B: on the data that drove the pruning).
    """
    if not 0 < size <= n_train:
        raise ValueError(
            f"config key 'pruning.data.size': {size} must lie in (0, {n_train}] "
            "(the training split)"
        )
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    return perm[:size].sort().values


def pruning_data(config: dict[str, Any], train: Split) -> Split:
    d = config["pruning"]["data"]
    return train.subset(pruning_indices(len(train), d["size"], d["seed"]).to(train.y.device))


def method_options(config: dict[str, Any], method_name: str) -> dict[str, Any]:
    """The options a method takes from the config (``pruning.with_replacement``, ...)."""
    if method_name == "random":
        return {"with_replacement": config["pruning"]["with_replacement"]}
    if method_name in ("clustered", "greedy_node"):
        return dict(config["pruning"][method_name])
    return {}


def use_ensemble(setting: bool | str, model: torch.nn.Module, device: str = "cpu") -> bool:
    """``retrain.ensemble``: ``auto`` batches the trials of fully connected networks on a GPU.

    On the CPU a step is FLOP-bound once evaluation runs in cache-sized chunks: 50 batched
    LeNet-300-100 trials measured 0.92x the speed of the same trials one by one, below the
    1.5x that would justify it (benchmarks/README.md). On a GPU batching removes the
    per-kernel launch cost that dominates such small networks. vmap turns convs into
    grouped convs, which were 2x slower, so conv networks always run one by one.
    """
    if setting == "auto":
        conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        return device.startswith("cuda") and not conv
    return bool(setting)


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
    resume = out_ckpt.with_name("dense.resume.pt")  # periodic state of a killed job
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
        resume=resume,
        checkpoint_every=tr["checkpoint_every"],
        fingerprint=fingerprint(config, arch_name, seed, data_path),
        progress=ProgressLog(f"train_dense {arch_name} seed {seed}", tr["steps"]),
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
    resume.unlink(missing_ok=True)
    return metrics


def run_netdev_reference(
    config: dict[str, Any],
    arch_name: str,
    seed: int,
    data_path: Path,
    dense_ckpt: Path,
    out_json: Path,
    device: str = "auto",
    threads: int = 1,
) -> dict[str, Any]:
    """Mean Jacobian norms ||dY(i)/dY(i-1)|| of W* on the pruning data (THEORY.md B).

    They depend on the unpruned network only, so one job per (architecture, seed) computes
    them for every pruning job (the per-sample Jacobians of a conv stage are the costly part).
    """
    device = setup_torch(device, threads)
    arch = config["architectures"][arch_name]
    train, _, _, _ = _load_data(config, data_path, device)
    x = pruning_data(config, train).x
    model = _model_from_state(arch, load_torch(dense_ckpt)["w_star"], device)
    t0 = time.perf_counter()
    jac = netdev.jacobian_norms(model, x, config["netdev"]["norm"])
    out = {
        "arch": arch_name,
        "seed": seed,
        "norm": config["netdev"]["norm"],
        "data": config["pruning"]["data"],
        "jacobian_norms": jac,
        "wall_s": time.perf_counter() - t0,
    }
    write_json(out_json, out)
    return out


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
    netdev_ref: Path | None = None,
) -> list[dict[str, Any]]:
    """Prune W* for every trial and measure the pruned network before any retraining.

    Per trial: real sparsity, units removed and exact parameter counts, g(W_s),
    ||W_s - W*||^2, loss and accuracy on the evaluation set, the curvature estimates mu1, mu2
    (both estimators; ``mu1``/``mu2`` hold the one for the method's level) and, with
    ``netdev_ref``, the Net Deviation on the pruning data. A deterministic method prunes
    once; with ``pruning.repeat_deterministic`` its mask is listed as ``pruning.trials``
    trials (retrained with different minibatch orders), else as one trial.
    """
    device = setup_torch(device, threads)
    arch = config["architectures"][arch_name]
    pcfg = config["pruning"]
    train, _, _, evalset = _load_data(config, data_path, device)
    pdata = pruning_data(config, train)
    ckpt = load_torch(dense_ckpt)
    w_star = ckpt["w_star"]
    method = build_pruner(method_name, **method_options(config, method_name))
    probe = build_model(arch["model"])
    if not method.applies_to(probe):
        raise ValueError(
            f"pruning method {method_name!r} does not apply to architecture {arch_name!r} "
            f"(model {arch['model']!r} has conv layers; the method is fully connected only)"
        )
    layers = resolve_layers(probe, pcfg["layers"])
    names = weight_names(probe)
    hidden = selected_unit_layers(probe, layers) if method.level == "node" else []

    # Reference quantities of the unpruned and the initial network (evaluation set).
    star = _model_from_state(arch, w_star, device)
    init = _model_from_state(arch, ckpt["w_init"], device)
    grad_star = curvature.grad_vectors(star, evalset, names)
    grad_init = curvature.grad_vectors(init, evalset, names)
    loss_star, _ = evaluate(star, evalset)
    loss_init, _ = evaluate(init, evalset)
    mu1_secant = curvature.secant(grad_init, grad_star, ckpt["w_init"], w_star, names)
    mu1_pl = curvature.pl(curvature.sq_norm(grad_init), loss_init, loss_star)
    jac = None
    if netdev_ref is not None:
        ref = read_json(netdev_ref)
        if ref["norm"] != config["netdev"]["norm"] or ref["data"] != pcfg["data"]:
            raise ValueError(f"{netdev_ref}: computed for other netdev/pruning.data settings")
        jac = ref["jacobian_norms"]
    ys_star = netdev.reference(star, pdata.x) if jac is not None else None
    estimator = curvature.estimator_for(method.level)

    rows: list[dict[str, Any]] = []
    stored: list[dict[str, Any]] = []
    for trial in range(method.n_trials(pcfg.get("trials", 1))):
        model = _model_from_state(arch, w_star, device)
        gen = torch.Generator().manual_seed(
            derive_seed(seed, arch_name, method_name, fmt_amount(amount), trial, "prune")
        )
        masks, sparsity = apply_pruning(model, method, layers, amount, gen, pdata.x)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        grad_s = curvature.grad_vectors(model, evalset, names)
        g_s = {n: float(grad_s[n].pow(2).sum()) for n in names}
        loss_p, acc_p = evaluate(model, evalset)
        mu = {
            "mu1_secant": mu1_secant,
            "mu2_secant": curvature.secant(grad_s, grad_star, state, w_star, names),
            "mu1_pl": mu1_pl,
            "mu2_pl": curvature.pl(sum(g_s.values()), loss_p, loss_star),
        }
        row: dict[str, Any] = {
            "arch": arch_name,
            "seed": seed,
            "method": method_name,
            "amount": amount,
            "trial": trial,
            "level": method.level,
            "sparsity": sparsity["overall"],
            "g_s": sum(g_s.values()),
            "d2": bounds.sq_distance(state, w_star, names),
            "loss_pruned": loss_p,
            "acc_pruned": acc_p,
            **param_counts(model, masks),
        }
        if hidden:
            kept = kept_units(model, masks)
            removed = {u.name: u.units - len(kept[u.name]) for u in hidden}
            row["units_removed"] = sum(removed.values()) / sum(u.units for u in hidden)
            row.update({f"units_removed[{n}]": v for n, v in removed.items()})
        else:
            row["units_removed"] = 0.0
        row.update(mu)
        row.update(mu_estimator=estimator, mu1=mu[f"mu1_{estimator}"], mu2=mu[f"mu2_{estimator}"])
        if jac is not None:
            pruned = {k: v.detach() for k, v in model.named_parameters()}
            row.update(netdev.net_deviation(star, pruned, pdata.x, jac, ys_star))
        row.update({f"sparsity[{n}]": sparsity[n] for n in layers if n in sparsity})
        rows.append(row)
        rec: dict[str, Any] = {"masks": pack_masks(masks)}
        if method.changes_weights:
            rec["state"] = state
        stored.append(rec)
    # A deterministic method with repeat_deterministic: its one mask, retrained `trials` times
    # (each trial's retraining has its own minibatch order). The rows are copies and the
    # saved trials share one record (torch.save writes shared tensors once).
    runs = retrain_runs(pcfg, method.stochastic)
    rows += [dict(rows[0], trial=t) for t in range(len(rows), runs)]
    stored += [stored[0]] * (runs - len(stored))
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
    train, _, test, evalset = _load_data(config, data_path, device)
    ckpt = load_torch(dense_ckpt)
    pruned = load_torch(prune_file)
    target = float(read_json(dense_metrics)["loss_star"])

    # Finished trials survive a killed job: a rerun of the same job resumes after them.
    journal = TrialJournal(
        out_table.with_name(f"{out_table.stem}.journal.pt"),
        fingerprint(config, arch_name, seed, method_name, amount, dense_ckpt, prune_file),
    )
    if journal.records:
        log.info("resumed %d finished trial(s) from the journal", len(journal.records))
    todo = [t for t in range(len(pruned["trials"])) if t not in journal]
    template = _model_from_state(arch, ckpt["w_star"], device)
    specs = []
    for trial in todo:
        rec = pruned["trials"][trial]
        masks = {k: v.to(device) for k, v in unpack_masks(rec["masks"]).items()}
        state = rec.get("state", ckpt["w_star"])
        start = {
            k: v.to(device) * masks[k] if k in masks else v.to(device) for k, v in state.items()
        }
        gen = torch.Generator(device=device).manual_seed(
            derive_seed(seed, arch_name, method_name, fmt_amount(amount), trial, "retrain")
        )
        specs.append(TrialSpec(start, masks if masked else None, gen))
    compactions = _compact(template, specs) if masked else None
    n_train = len(train)
    t0 = time.perf_counter()

    # Test metrics by the digest of the weights: trials that end with the same weights (a
    # repeated deterministic mask already within eps, 0 iterations) are evaluated once.
    # (The validation split is not evaluated per run: no table or figure reads it, and for
    # LeNet-5 its 5000 images cost a third of each run's final evaluation.)
    evaluated: dict[str, tuple[float, float]] = {}

    def finished(index: int, res: TrialResult) -> None:
        """Evaluate and journal a trial as soon as it stops (a killed job keeps it)."""
        trial = todo[index]
        state = compactions[index].expand(res.state) if compactions else res.state
        key = _state_digest(state)
        if key not in evaluated:
            evaluated[key] = evaluate(_model_from_state(arch, state, device), test)
        test_loss, test_acc = evaluated[key]
        row = {
            "arch": arch_name,
            "seed": seed,
            "method": method_name,
            "amount": amount,
            "trial": trial,
            "iterations": res.iterations,
            "epochs": res.iterations * rt["batch_size"] / n_train,
            "status": res.status,
            "final_eval_loss": res.final_eval_loss,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "eps": rt["eps"],
            "eta": rt["lr"],
            "max_iters": rt["max_iters"],
            "batch_size": rt["batch_size"],
            "n_train": n_train,
            "masked": masked,
            "wall_s": time.perf_counter() - t0,  # since the ensemble started
        }
        curve = [{"trial": trial, "step": t, "eval_loss": loss} for t, loss in res.eval_losses]
        journal.add(trial, {"row": row, "curve": curve})

    progress = ProgressLog(f"retrain {arch_name} {method_name} s={fmt_amount(amount)}", len(todo))
    retrain_trials(
        template,
        specs,
        train,
        evalset,
        target_loss=target,
        eps=rt["eps"],
        optimizer=rt["optimizer"],
        lr=rt["lr"],
        batch_size=rt["batch_size"],
        max_iters=rt["max_iters"],
        momentum=rt["momentum"],
        divergence_factor=rt["divergence_factor"],
        check_every=config["retrain"]["check_every"],
        screen=config["retrain"].get("screen", True),  # the job slice holds it only when off
        batched=use_ensemble(config["retrain"]["ensemble"], template, device),
        progress=progress,
        on_result=finished,
    )
    rows = [journal[t]["row"] for t in range(len(pruned["trials"]))]
    curves = [c for t in range(len(pruned["trials"])) for c in journal[t]["curve"]]
    write_csv(out_curves, curves)
    write_csv(out_table, rows)
    journal.discard()
    return rows


def _compact(template: torch.nn.Module, specs: list[TrialSpec]) -> list[UnitCompaction] | None:
    """Retrain node-pruned trials as the physically smaller networks (specs edited in place).

    Every step and check then costs the FLOPs of the kept units only; the trained weights
    are expanded back to full size afterwards. Only when every trial's masks remove whole
    units and all trials keep the same number per layer (their tensors are stacked);
    otherwise the trials are retrained at full size with their masks, as before.
    """
    comps = [unit_compaction(template, s.masks) if s.masks else None for s in specs]
    if not comps or any(c is None for c in comps):
        return None
    small = [c.shrink(s.state) for c, s in zip(comps, specs, strict=True)]  # type: ignore[union-attr]
    shapes = {tuple((k, tuple(v.shape)) for k, v in st.items()) for st in small}
    if len(shapes) > 1:
        return None
    masks = [c.shrink(s.masks) for c, s in zip(comps, specs, strict=True)]  # type: ignore[union-attr,arg-type]
    # Within the kept units node masks are all ones: no masking left to do.
    keep_masks = any(not bool(m.all()) for ms in masks for m in ms.values())
    for spec, st, ms in zip(specs, small, masks, strict=True):
        spec.state, spec.masks = st, (ms if keep_masks else None)
    log.info(
        "retraining the physically smaller networks (removed units cut out): %s",
        ", ".join(f"{k} {list(v.shape)}" for k, v in small[0].items() if k.endswith("weight")),
    )
    return comps  # type: ignore[return-value]


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    """Identity of a set of weights: names, dtypes, shapes and bytes."""
    h = hashlib.sha1()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}".encode())
        h.update(v.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(config: dict[str, Any], *parts: Any) -> str:
    """Identity of a job: its config slice, its identifying parts and its input files' bytes.

    Resume state is reused only under the same fingerprint, so a changed config or input
    never resumes from stale state.
    """
    paths = [p for p in parts if isinstance(p, Path)]
    others = [str(p) for p in parts if not isinstance(p, Path)]
    blob = json.dumps([config, others, [_digest(p) for p in paths]], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()
