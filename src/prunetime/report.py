"""Figures and summary documents of the retraining-bounds study (THEORY.md sections A and B).

The report shows what the tables say without hiding censoring: capped runs (true count >= the
cap) and diverged runs are drawn with their own markers and counted, the bounds are drawn as
computed (never rescaled), and every caveat found in the data is written next to the numbers.
Figures are rendered once in memory, written atomically and embedded in a self-contained HTML.
"""

from __future__ import annotations

import base64
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from jinja2 import Environment, select_autoescape
from markupsafe import Markup
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from prunetime import style
from prunetime.io import read_json

log = logging.getLogger("prunetime")

FORMATS = style.FORMATS
FIGURES = {
    "iterations": "iterations_vs_sparsity",
    "accuracy": "accuracy_vs_sparsity",
    "dense": "dense_training",
    "netdev": "netdev_vs_amount",
    "accuracy_amount": "accuracy_vs_amount",
    "epochs": "epochs_vs_amount",
}
RUN_COLUMNS = [
    "arch", "seed", "method", "amount", "trial", "sparsity", "acc_pruned", "iterations",
    "status", "test_acc", "eps", "eta", "max_iters", "masked", "t_init", "loss_star",
    "final_eval_loss", "upper", "lower_g1", "gamma_max", "gamma_fit", "lower_fit",
    "within_g1", "within_fit", "level", "epochs", "ndev_lhs", "ndev_rhs", "ndev_dev", "D",
    "lower_ep_g1", "lower_ep_fit", "gamma_ep_fit",
]  # fmt: skip
SUMMARY_COLUMNS = [
    "arch", "method", "amount", "n_runs", "n_capped", "n_diverged", "sparsity",
    "iterations_mean", "iterations_ci_lo", "iterations_ci_hi", "lower_g1_mean",
    "lower_fit_mean", "upper_mean", "gamma_fit",
]  # fmt: skip
STATUSES = ("converged", "capped", "diverged")
# Display tables written for the Snakemake report: key -> (file stem, title).
TABLES = {
    "dense": ("dense_networks", "Dense networks: accuracies and L(W*)"),
    "retrain": ("retraining_by_method", "Retraining per architecture and method"),
    "summary": ("retraining_by_amount", "Retraining per pruning amount"),
    "setup": ("setup", "Settings behind the numbers"),
    "netdev": ("net_deviation", "Net Deviation per architecture, method and amount"),
    "curvature": ("curvature_epochs", "Curvature estimates and the epoch lower bound"),
}
CURVE_COLUMNS = ["arch", "seed", "step", "eval_loss", "eval_acc"]

# One palette for everything (prunetime.style); red and grey are reserved for diverged runs
# and for bounds.
_PAL = style.PALETTE
DIVERGED_COLOR = style.DIVERGED_COLOR
BOUND_COLOR = style.BOUND_COLOR
_METHOD_ORDER = style.METHOD_ORDER
_ARCH_ORDER = style.ARCH_ORDER
SYMLOG_LINTHRESH = 1.0  # iterations below 1 (i.e. 0) sit in the linear part of the axis
X_LABEL = "real sparsity (fraction of weights removed)"
AMOUNT_LABEL = "pruning amount s (connection: share of weights; node: share of units/filters)"
ACC_LABEL = "accuracy (fraction correct)"

theme = style.theme
render = style.render
write_bytes = style.write_bytes
write_text = style.write_text
_new_figure = style.new_figure
_colors = style.colors


def _require(df: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}")


def _order(values: pd.Series) -> list[Any]:
    """Keys in order of first appearance: the order of the config, as the tables keep it."""
    return list(pd.unique(values))


def _with_mean_sparsity(runs: pd.DataFrame) -> pd.DataFrame:
    """Add x = mean real sparsity per (arch, method, amount): one x per nominal amount."""
    df = runs.copy()
    df["x"] = df.groupby(["arch", "method", "amount"])["sparsity"].transform("mean")
    return df


# --------------------------------------------------------------------------- figure 1


def _gamma_text(gamma: float, zero_runs: int) -> str:
    if not math.isfinite(gamma):
        return "fitted γ: none (no usable run)"
    text = f"fitted γ = {fmt_gamma(gamma)}"
    if zero_runs:
        text += f"\n({zero_runs} run(s) needed 0 iterations)"
    return text


def _iterations_panel(
    ax: Axes, r: pd.DataFrame, s: pd.DataFrame, color: Any, rng: np.random.Generator
) -> None:
    x = s["sparsity"].to_numpy(dtype=float)
    lo_fit = s["lower_fit_mean"].to_numpy(dtype=float)
    up = s["upper_mean"].to_numpy(dtype=float)
    g1 = s["lower_g1_mean"].to_numpy(dtype=float)
    xb = x if len(x) > 1 else np.array([x[0] - 0.02, x[0] + 0.02])
    rep = (lambda a: a) if len(x) > 1 else (lambda a: np.repeat(a, 2))
    ax.fill_between(xb, rep(lo_fit), rep(up), color=BOUND_COLOR, alpha=0.22, lw=0, zorder=1)
    ax.plot(xb, rep(up), color=BOUND_COLOR, lw=1.5, zorder=2)
    ax.plot(xb, rep(lo_fit), color=BOUND_COLOR, lw=1.5, zorder=2)
    ax.plot(xb, rep(g1), color="black", lw=1.3, ls="--", zorder=2)
    caps = r["max_iters"].dropna().unique()
    for cap in caps:
        ax.axhline(cap, color="black", lw=1.0, ls=":", zorder=1)

    span = float(np.ptp(x)) if len(x) > 1 else 0.5
    jitter = rng.uniform(-1.0, 1.0, len(r)) * 0.04 * max(span, 0.5)
    xr = r["x"].to_numpy(dtype=float) + jitter
    y = r["iterations"].to_numpy(dtype=float)
    for status, marker, kw in (
        ("converged", "o", {"color": color, "alpha": 0.45, "s": 28}),
        ("capped", "^", {"color": color, "alpha": 0.8, "s": 48, "edgecolor": "black"}),
        ("diverged", "X", {"color": DIVERGED_COLOR, "alpha": 0.9, "s": 60}),
    ):
        m = (r["status"] == status).to_numpy()
        if m.any():
            sns.scatterplot(x=xr[m], y=y[m], marker=marker, ax=ax, legend=False, zorder=3, **kw)

    mean = s["iterations_mean"].to_numpy(dtype=float)
    lo = np.clip(s["iterations_ci_lo"].to_numpy(dtype=float), 0.0, None)  # counts are >= 0
    hi = s["iterations_ci_hi"].to_numpy(dtype=float)
    yerr = np.nan_to_num(np.vstack([mean - lo, hi - mean]), nan=0.0)
    capped = s["n_capped"].to_numpy() > 0
    for sel, face in ((~capped, "black"), (capped, "white")):
        if sel.any():
            ax.errorbar(
                x[sel], mean[sel], yerr=yerr[:, sel], fmt="D", color="black", mfc=face,
                ms=6, capsize=4, elinewidth=1.5, zorder=4,
            )  # fmt: skip


def plot_iterations(runs: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    """Retraining iterations against sparsity, with the band between fitted lower and upper bound.

    Rows are pruning methods and columns architectures (a tall figure stays legible when a
    page scales it to its width). The y axis is symlog (linear below 1)
    because the upper bounds are 1e4 to 1e8 while runs need 0 to max_iters iterations.
    """
    runs = _with_mean_sparsity(runs)
    archs, methods = _order(runs["arch"]), _order(runs["method"])
    colors = _colors(methods, _METHOD_ORDER)
    rng = np.random.default_rng(0)  # reproducible jitter
    nr, nc = len(methods), len(archs)
    fig = _new_figure(5.2 * nc + 0.9, 3.5 * nr + 2.2)
    axes = fig.subplots(nr, nc, sharex=True, sharey=True, squeeze=False)
    top = 1.0
    for i, arch in enumerate(archs):
        for j, method in enumerate(methods):
            ax = axes[j, i]
            r = runs[(runs["arch"] == arch) & (runs["method"] == method)]
            s = summary[(summary["arch"] == arch) & (summary["method"] == method)]
            s = s.sort_values("sparsity")
            n_cap = int((r["status"] == "capped").sum())
            n_div = int((r["status"] == "diverged").sum())
            ax.set_title(
                f"{arch} · {method}\n{len(r)} runs: {n_cap} capped, {n_div} diverged",
                color=DIVERGED_COLOR if n_div else "black",
            )
            if r.empty or s.empty:
                ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center")
                continue
            _iterations_panel(ax, r, s, colors[method], rng)
            gamma = (
                float(s["gamma_fit"].dropna().iloc[0]) if s["gamma_fit"].notna().any() else math.nan
            )
            zero = int(((r["iterations"] == 0) & (r["status"] != "diverged")).sum())
            ax.text(
                0.03, 0.97, _gamma_text(gamma, zero), transform=ax.transAxes, va="top",
                fontsize=10, bbox={"boxstyle": "round", "fc": "white", "ec": BOUND_COLOR},
            )  # fmt: skip
            vals = np.concatenate(
                [s["upper_mean"].to_numpy(float), r["iterations"].to_numpy(float)]
            )
            vals = vals[np.isfinite(vals)]
            top = max(top, float(vals.max()) if len(vals) else 1.0)
    for ax in axes.flat:
        ax.set_yscale("symlog", linthresh=SYMLOG_LINTHRESH, linscale=0.6)
        ax.set_ylim(-0.6, top * 8)
        ax.set_xlim(0, 1)
    for ax in axes[-1]:
        ax.set_xlabel(X_LABEL)
    fig.supylabel(
        "retraining iterations (optimizer steps)\nsymlog axis, linear in [0, 1]: 0 is shown"
    )
    handles = [
        Line2D([], [], ls="", marker="o", color="grey", alpha=0.6, label="run, converged"),
        Line2D(
            [], [], ls="", marker="^", color="grey", mec="black", label="run, capped (true ≥ cap)"
        ),
        Line2D([], [], ls="", marker="X", color=DIVERGED_COLOR, label="run, diverged (at step)"),
        Line2D([], [], ls="-", marker="D", color="black", label="mean ± CI, diverged excluded"),
        Line2D(
            [], [], ls="-", marker="D", color="black", mfc="white", label="mean incl. capped (≥)"
        ),
        Patch(color=BOUND_COLOR, alpha=0.35, label="fitted lower bound … upper bound"),
        Line2D([], [], ls="--", color="black", label="lower bound at γ = 1"),
        Line2D([], [], ls=":", color="black", label="iteration cap (max_iters)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=11)
    return fig


# --------------------------------------------------------------------------- figure 2


def plot_accuracy(
    runs: pd.DataFrame, dense: pd.DataFrame, eval_size: int | None, by: str = "sparsity"
) -> Figure:
    """Accuracy right after pruning and after retraining, one panel per arch.

    ``by`` = 'sparsity': against the real fraction of weights removed (comparable across
    connection and node pruning); 'amount': against the nominal amount s. The pruned
    accuracy is measured on the evaluation subset, the retrained one on the test set (the
    stage labels say so); diverged runs have no meaningful retrained accuracy and are left
    out of that curve. Error bars are bootstrap 95 % CIs over trials.
    """
    runs = _with_mean_sparsity(runs)
    if by == "amount":
        runs["x"] = runs["amount"]
    archs, methods = _order(runs["arch"]), _order(runs["method"])
    n_eval = f", n = {eval_size}" if eval_size else ""
    after = "after retraining (test set)"
    before = f"right after pruning (eval subset{n_eval})"
    ok = runs[runs["status"] != "diverged"]
    long = pd.concat(
        [
            ok.assign(stage=after, accuracy=ok["test_acc"]),
            runs.assign(stage=before, accuracy=runs["acc_pruned"]),
        ],
        ignore_index=True,
    )
    ref = dense.groupby("arch")["test_acc"].mean() if "test_acc" in dense else pd.Series()
    fig = _new_figure(5.0 * len(archs) + 3.6, 4.8)
    fig.get_layout_engine().set(wspace=0.06)  # keep "1.0" and "0.0" of adjacent panels apart
    axes = fig.subplots(1, len(archs), sharey=True, squeeze=False)[0]
    for ax, arch in zip(axes, archs, strict=True):
        sub = long[long["arch"] == arch]
        sns.lineplot(
            data=sub, x="x", y="accuracy", hue="method", style="stage", hue_order=methods,
            style_order=[after, before], palette=_colors(methods, _METHOD_ORDER), markers=True,
            errorbar=("ci", 95), err_style="bars", seed=0, ax=ax, legend=ax is axes[0],
        )  # fmt: skip
        if arch in ref.index:
            ax.axhline(ref[arch], color="black", ls="--", lw=1.3)
            ax.text(
                0.02, ref[arch] + 0.01, f"dense: {ref[arch]:.4f}", va="bottom", fontsize=10,
                transform=ax.get_yaxis_transform(),
            )  # fmt: skip
        ax.set_title(arch)
        ax.set_xlabel("")
        ax.set_ylabel(ACC_LABEL)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    fig.supxlabel(AMOUNT_LABEL if by == "amount" else X_LABEL)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].get_legend().remove()
    handles.append(Line2D([], [], color="black", ls="--"))
    labels.append("dense network (test set)")
    fig.legend(handles, labels, loc="outside right center", fontsize=10)
    return fig


# --------------------------------------------------------------------------- figure 3


def plot_dense(curves: pd.DataFrame, eval_size: int | None) -> Figure:
    """Initial (dense) training: evaluation loss and accuracy against optimizer step."""
    df = curves.copy()
    df["seed"] = df["seed"].astype(str)
    archs = _order(df["arch"])
    n_eval = f" (n = {eval_size})" if eval_size else ""
    fig = _new_figure(11.5, 4.4)
    ax_loss, ax_acc = fig.subplots(1, 2, squeeze=True)
    kw: dict[str, Any] = {
        "data": df, "x": "step", "hue": "arch", "hue_order": archs, "style": "seed",
        "palette": _colors(archs, _ARCH_ORDER), "estimator": None, "lw": 2,
    }  # fmt: skip
    sns.lineplot(y="eval_loss", ax=ax_loss, legend=True, **kw)
    sns.lineplot(y="eval_acc", ax=ax_acc, legend=False, **kw)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("cross-entropy loss (nats, log scale)")
    ax_loss.set_title(f"evaluation-subset loss{n_eval}")
    ax_acc.set_ylabel(ACC_LABEL)
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_title(f"evaluation-subset accuracy{n_eval}")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("optimizer step (minibatch update)")
    handles, labels = ax_loss.get_legend_handles_labels()
    ax_loss.get_legend().remove()
    fig.legend(handles, labels, loc="outside right center", fontsize=10)
    return fig


# --------------------------------------------------------------------------- section B


def _level_styles(runs: pd.DataFrame) -> dict[str, Any]:
    return {"connection": (4, 2), "node": ""} if "level" in runs else {}


def plot_netdev(runs: pd.DataFrame) -> Figure:
    """Normalised Net Deviation D (top) and its two terms (bottom) against the pruning amount.

    One column per architecture, one colour per method, dashed lines for connection-level
    methods. Top: D = |dev| / max |dev| of the method's sweep (mean over trials, bootstrap
    95 % CI). Bottom, log scale: the measured output change ||dY(L)|| (solid, circles) and
    the propagation bound's right-hand side (dotted, squares); dev is their difference.
    """
    archs, methods = _order(runs["arch"]), _order(runs["method"])
    colors = _colors(methods, _METHOD_ORDER)
    fig = _new_figure(5.2 * len(archs) + 3.2, 8.4)
    axes = fig.subplots(2, len(archs), sharex=True, squeeze=False)
    for j, arch in enumerate(archs):
        sub = runs[runs["arch"] == arch]
        ax = axes[0, j]
        sns.lineplot(
            data=sub, x="amount", y="D", hue="method", hue_order=methods, palette=colors,
            style="level", dashes=_level_styles(sub), markers=False, errorbar=("ci", 95),
            err_style="bars", seed=0, ax=ax, legend=j == 0, marker="o",
        )  # fmt: skip
        ax.set_title(f"{arch}: normalised Net Deviation")
        ax.set_ylabel("D = |dev| / max |dev| of the sweep")
        ax.set_ylim(-0.02, 1.08)
        ax.axhline(1.0, color="black", lw=0.8, ls=":")
        ax = axes[1, j]
        means = sub.groupby(["method", "amount"], as_index=False)[["ndev_lhs", "ndev_rhs"]].mean()
        for method in methods:
            m = means[means["method"] == method].sort_values("amount")
            ax.plot(m["amount"], m["ndev_lhs"], color=colors[method], marker="o", lw=1.8)
            ax.plot(m["amount"], m["ndev_rhs"], color=colors[method], marker="s", lw=1.2, ls=":")
        ax.set_yscale("log")
        ax.set_title(f"{arch}: the two terms of dev (mean over trials)")
        ax.set_ylabel("output change, logits (log scale)")
    for ax in axes.flat:
        ax.set_xlim(0, 1)
        ax.set_xlabel("")
    fig.supxlabel(AMOUNT_LABEL)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    axes[0, 0].get_legend().remove()
    handles += [
        Line2D([], [], color="grey", marker="o", lw=1.8, label="measured ||dY(L)||"),
        Line2D([], [], color="grey", marker="s", lw=1.2, ls=":", label="bound (right-hand side)"),
    ]
    labels += ["measured ||dY(L)||", "bound (right-hand side)"]
    fig.legend(handles, labels, loc="outside right center", fontsize=10)
    return fig


def plot_epochs(runs: pd.DataFrame) -> Figure:
    """Retraining epochs against the amount with section B's curvature-based lower bound.

    Rows are methods and columns architectures. Points: single runs; diamonds: mean over
    non-diverged runs (capped runs at the cap). Dashed: (mu1/mu2)(g(W_s)/g(W_init)) t_init
    in epochs (gamma = 1, mean over runs); solid grey: the same with the fitted gamma. The
    y axis is symlog, linear below one iteration's worth of epochs, so 0 is visible.
    """
    archs, methods = _order(runs["arch"]), _order(runs["method"])
    colors = _colors(methods, _METHOD_ORDER)
    rng = np.random.default_rng(0)
    nr, nc = len(methods), len(archs)
    fig = _new_figure(5.0 * nc + 0.9, 3.2 * nr + 1.8)
    axes = fig.subplots(nr, nc, sharex=True, sharey=True, squeeze=False)
    per_iter = (runs["epochs"] / runs["iterations"]).replace([np.inf, -np.inf], np.nan).dropna()
    lin = float(per_iter.min()) if len(per_iter) else 1e-3
    top = lin
    for i, arch in enumerate(archs):
        for j, method in enumerate(methods):
            ax = axes[j, i]
            r = runs[(runs["arch"] == arch) & (runs["method"] == method)]
            ax.set_title(f"{arch} · {method}")
            if r.empty:
                ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center")
                continue
            ok = r[r["status"] != "diverged"]
            x = r["amount"].to_numpy(float) + rng.uniform(-0.012, 0.012, len(r))
            capped = (r["status"] == "capped").to_numpy()
            ax.scatter(x[~capped], r["epochs"][~capped], color=colors[method], alpha=0.45, s=22)
            if capped.any():
                ax.scatter(
                    x[capped], r["epochs"][capped], color=colors[method], marker="^",
                    edgecolor="black", s=40,
                )  # fmt: skip
            g = ok.groupby("amount")
            mean = g["epochs"].mean()
            ax.plot(mean.index, mean.values, "D-", color="black", ms=5, lw=1.2, zorder=4)
            lo1, lofit = g["lower_ep_g1"].mean(), g["lower_ep_fit"].mean()
            ax.plot(lo1.index, lo1.values, ls="--", color="black", lw=1.2)
            ax.plot(lofit.index, lofit.values, color=BOUND_COLOR, lw=2.2)
            gamma = r["gamma_ep_fit"].dropna()
            est = r["mu_estimator"].iloc[0] if "mu_estimator" in r else "?"
            gtext = fmt_gamma(gamma.iloc[0] if len(gamma) else math.nan)
            ax.text(
                0.03, 0.97, f"μ: {est} estimator\nfitted γ = {gtext}",
                transform=ax.transAxes, va="top", fontsize=9,
                bbox={"boxstyle": "round", "fc": "white", "ec": BOUND_COLOR},
            )  # fmt: skip
            vals = np.concatenate([r["epochs"].to_numpy(float), lo1.to_numpy(float)])
            vals = vals[np.isfinite(vals)]
            top = max(top, float(vals.max()) if len(vals) else lin)
    for ax in axes.flat:
        ax.set_yscale("symlog", linthresh=lin, linscale=0.5)
        ax.set_ylim(-0.3 * lin, top * 6)
        ax.set_xlim(0, 1)
    for ax in axes[-1]:
        ax.set_xlabel("pruning amount s")
    fig.supylabel("retraining epochs (symlog; linear below one iteration)")
    handles = [
        Line2D([], [], ls="", marker="o", color="grey", alpha=0.6, label="run"),
        Line2D([], [], ls="", marker="^", color="grey", mec="black", label="run, capped"),
        Line2D([], [], ls="-", marker="D", color="black", label="mean (diverged excluded)"),
        Line2D([], [], ls="--", color="black", label="lower bound, γ = 1, estimated μ1/μ2"),
        Line2D([], [], ls="-", lw=2.2, color=BOUND_COLOR, label="lower bound, fitted γ"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=11)
    return fig


def netdev_findings(summary: pd.DataFrame, tol: float = 1e-6) -> list[str]:
    """Per architecture: the method with the lowest mean D at each amount ('tie' when the
    lowest values agree within ``tol``, as at an amount where every sweep peaks)."""
    if "D" not in summary or summary["D"].isna().all():
        return []
    out = []
    for arch, g in summary.dropna(subset=["D"]).groupby("arch", sort=False):
        parts = []
        for amount, a in g.groupby("amount", sort=True):
            if len(a) < 2:
                continue
            a = a.sort_values(["D", "method"])
            d = a["D"].to_numpy(float)
            tied = a["method"][d <= d[0] + tol].tolist()
            who = a["method"].iloc[0] if len(tied) == 1 else "tie of " + " = ".join(tied)
            parts.append(f"{amount:g}: {who} ({d[0]:.3f})")
        if parts:
            out.append(f"{arch}, lowest D by amount: " + "; ".join(parts) + ".")
    return out


# --------------------------------------------------------------------------- tables


def fmt_num(v: Any, spec: str) -> str:
    """Format a number, with an en dash for missing or non-finite values."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "–"
    return format(f, spec) if math.isfinite(f) else "–"


def fmt_acc(v: Any) -> str:
    return fmt_num(v, ".4f")


def fmt_gamma(v: Any) -> str:
    return fmt_num(v, ".4g")


def fmt_share(v: Any) -> str:
    s = fmt_num(v, ".1%")
    return s if s == "–" else s.replace("%", " %")


def dense_table(dense: pd.DataFrame) -> pd.DataFrame:
    """Dense accuracies per (arch, seed): the reference every pruned network is held against."""
    cols = {
        "arch": "architecture", "seed": "seed", "t_init": "t_init (steps)",
        "test_acc": "test accuracy", "val_acc": "validation accuracy", "loss_star": "L(W*) eval",
    }  # fmt: skip
    out = pd.DataFrame({v: dense[k] for k, v in cols.items() if k in dense})
    for k in ("test accuracy", "validation accuracy"):
        if k in out:
            out[k] = out[k].map(fmt_acc)
    if "L(W*) eval" in out:
        out["L(W*) eval"] = out["L(W*) eval"].map(lambda v: fmt_num(v, ".4g"))
    return out


def retrain_headline(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, method): counts, mean iterations, fitted gamma and coverage of the bounds.

    Means exclude diverged runs and include capped runs at the cap (a lower estimate), as in
    summary.csv; coverage shares are over converged runs, as in metrics.json.
    """
    rows = []
    for (arch, method), g in runs.groupby(["arch", "method"], sort=False):
        ok = g[g["status"] != "diverged"]
        conv = g[g["status"] == "converged"]
        gamma = g["gamma_fit"].dropna()
        rows.append(
            {
                "architecture": arch,
                "method": method,
                "runs": len(g),
                "converged": int((g["status"] == "converged").sum()),
                "capped": int((g["status"] == "capped").sum()),
                "diverged": int((g["status"] == "diverged").sum()),
                "mean iterations": fmt_num(ok["iterations"].mean(), ".1f"),
                "fitted γ": fmt_gamma(gamma.iloc[0] if len(gamma) else math.nan),
                "median γ_max": fmt_gamma(ok["gamma_max"].median()),
                "within [fitted lower, upper]": fmt_share(conv["within_fit"].astype(float).mean()),
                "within γ = 1 bounds": fmt_share(conv["within_g1"].astype(float).mean()),
            }
        )
    return pd.DataFrame(rows)


def _join(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def setup_table(runs: pd.DataFrame, dense: pd.DataFrame) -> pd.DataFrame:
    """The settings behind the numbers, read from the tables themselves (not from a config)."""
    rows = []
    eval_size = dense.groupby("arch")["eval_size"].first() if "eval_size" in dense else None
    for arch, g in runs.groupby("arch", sort=False):
        trials = g.groupby(["seed", "method", "amount"]).size()
        span = f"{trials.min()}" + (f"–{trials.max()}" if trials.nunique() > 1 else "")
        known = eval_size is not None and arch in eval_size.index
        rows.append(
            {
                "architecture": arch,
                "t_init (steps)": _join(int(v) for v in sorted(g["t_init"].unique())),
                "η (retrain lr)": _join(f"{v:g}" for v in sorted(g["eta"].unique())),
                "ε": _join(f"{v:g}" for v in sorted(g["eps"].unique())),
                "max_iters": _join(int(v) for v in sorted(g["max_iters"].unique())),
                "masked": _join(g["masked"].unique()),
                "methods": _join(_order(g["method"])),
                "amounts": _join(f"{v:g}" for v in sorted(g["amount"].unique())),
                "trials per amount": span,
                "seeds": _join(sorted(g["seed"].unique())),
                "eval subset size": str(eval_size[arch]) if known else "–",
            }
        )
    return pd.DataFrame(rows)


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """summary.csv with readable headers and rounded numbers."""
    s = summary
    out = pd.DataFrame(
        {
            "arch": s["arch"],
            "method": s["method"],
            "amount": s["amount"].map(lambda v: f"{v:g}"),
            "sparsity": s["sparsity"].map(lambda v: fmt_num(v, ".3f")),
            "runs": s["n_runs"],
            "capped": s["n_capped"],
            "diverged": s["n_diverged"],
            "mean iterations": s["iterations_mean"].map(lambda v: fmt_num(v, ".1f")),
            "CI": [
                f"[{fmt_num(max(lo, 0.0) if lo == lo else lo, '.1f')}, {fmt_num(hi, '.1f')}]"
                for lo, hi in zip(s["iterations_ci_lo"], s["iterations_ci_hi"], strict=True)
            ],
            "lower (γ=1)": s["lower_g1_mean"].map(fmt_gamma),
            "lower (fitted)": s["lower_fit_mean"].map(fmt_gamma),
            "upper": s["upper_mean"].map(fmt_gamma),
        }
    )
    optional = {
        "gamma_max_median": ("median γ_max", fmt_gamma),
        "share_within_fit": ("within fitted", fmt_share),
        "share_within_g1": ("within γ=1", fmt_share),
        "acc_pruned_mean": ("acc. pruned", fmt_acc),
        "test_acc_mean": ("test acc. retrained", fmt_acc),
    }
    for col, (name, f) in optional.items():
        if col in s:
            out[name] = s[col].map(f)
    return out


def netdev_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Net Deviation per (arch, method, amount) with the network size and accuracies."""
    s = summary
    return pd.DataFrame(
        {
            "arch": s["arch"],
            "method": s["method"],
            "level": s["level"],
            "amount": s["amount"].map(lambda v: f"{v:g}"),
            "units removed": s["units_removed"].map(lambda v: fmt_num(v, ".3f")),
            "weights removed": s["sparsity"].map(lambda v: fmt_num(v, ".3f")),
            "params left": [
                f"{fmt_num(r, '.0f')} / {fmt_num(n, '.0f')}"
                for r, n in zip(s["n_params_remaining"], s["n_params"], strict=True)
            ],
            "‖dY(L)‖": s["ndev_lhs_mean"].map(fmt_gamma),
            "bound RHS": s["ndev_rhs_mean"].map(fmt_gamma),
            "dev": s["ndev_dev_mean"].map(fmt_gamma),
            "D": s["D"].map(lambda v: fmt_num(v, ".3f")),
            "loss pruned": s["loss_pruned_mean"].map(lambda v: fmt_num(v, ".4g")),
            "acc. pruned": s["acc_pruned_mean"].map(fmt_acc),
            "test acc. retrained": s["test_acc_mean"].map(fmt_acc),
        }
    )


def curvature_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Curvature estimates and the epoch lower bound per (arch, method, amount)."""
    s = summary
    return pd.DataFrame(
        {
            "arch": s["arch"],
            "method": s["method"],
            "amount": s["amount"].map(lambda v: f"{v:g}"),
            "μ estimator": s["mu_estimator"],
            "μ1": s["mu1_mean"].map(fmt_gamma),
            "μ2 (mean)": s["mu2_mean"].map(fmt_gamma),
            "μ1/μ2 (median)": s["mu_ratio_median"].map(fmt_gamma),
            "epochs (mean)": s["epochs_mean"].map(lambda v: fmt_num(v, ".4g")),
            "lower (γ=1)": s["lower_ep_g1_mean"].map(fmt_gamma),
            "lower (fitted)": s["lower_ep_fit_mean"].map(fmt_gamma),
            "fitted γ": s["gamma_ep_fit"].map(fmt_gamma),
        }
    )


def _where(g: pd.DataFrame) -> str:
    keys = g[["arch", "method", "amount"]].drop_duplicates()
    return ", ".join(f"{a}/{m}/{x:g}" for a, m, x in keys.itertuples(index=False))


def caveats(runs: pd.DataFrame, summary: pd.DataFrame, metrics: Mapping[str, Any]) -> list[str]:
    """Plain-language warnings about what the data cannot support, found in the data itself."""
    notes: list[str] = []
    for (arch, method), g in runs.groupby(["arch", "method"], sort=False):
        gamma = g["gamma_fit"].dropna()
        zero = g[(g["iterations"] == 0) & (g["status"] != "diverged")]
        if gamma.empty:
            notes.append(f"{arch}/{method}: no fitted γ (no usable run).")
        if len(zero):
            notes.append(
                f"{arch}/{method}: {len(zero)} run(s) were already within ε right after pruning "
                f"(0 iterations; {_where(zero)}): no γ > 0 fits them, so they are left out of "
                "the γ fit and count as outside the fitted lower bound."
            )
    capped = runs[runs["status"] == "capped"]
    if len(capped):
        notes.append(
            f"{len(capped)} capped run(s) ({_where(capped)}): their iteration count is the cap, a "
            "lower estimate of the true count. Means include them at the cap (hollow markers); "
            "the shares within the bounds are over converged runs only, since the upper bound "
            "cannot be tested for a capped run."
        )
        below = capped[capped["final_eval_loss"] < capped["loss_star"] - capped["eps"]]
        if len(below):
            notes.append(
                f"{len(below)} capped run(s) ({_where(below)}) ended with a loss more than ε "
                "below L(W*): the two-sided criterion |L - L(W*)| ≤ ε was missed by overshooting."
            )
    diverged = runs[runs["status"] == "diverged"]
    if len(diverged):
        notes.append(
            f"{len(diverged)} diverged run(s) ({_where(diverged)}): excluded from means, accuracy "
            "after retraining and γ fit; shown as red crosses at the step of divergence."
        )
    neg = summary[summary["iterations_ci_lo"] < 0]
    if len(neg):
        notes.append(
            f"Confidence intervals reaching below 0 ({_where(neg)}) are clipped at 0 in the "
            "figure and table: with few trials the t-interval is wider than the data allow."
        )
    return notes


FIGURE_TEXT = {
    "iterations": (
        "Retraining iterations against real sparsity",
        "Light points: single runs (jittered in x); diamonds: mean ± CI per amount (hollow: the "
        "mean includes capped runs at the cap, so the true mean is at least as high). Grey band: "
        "between the fitted lower bound (γ in the panel) and the upper bound ‖W_s − W*‖²/(2ηε); "
        "dashed: lower bound at γ = 1; dotted: the iteration cap. A run agrees with the theory "
        "when it lies in the band.",
    ),
    "accuracy": (
        "Accuracy against real sparsity",
        "Solid: test accuracy after retraining (diverged runs excluded); dashed: accuracy right "
        "after pruning, on the evaluation subset. Bars: bootstrap 95 % CI over trials. Dashed "
        "black line: the dense network's test accuracy.",
    ),
    "dense": (
        "Initial (dense) training",
        "Evaluation-subset loss (log scale) and accuracy against optimizer step; the last point "
        "is W*, whose loss L(W*) is the retraining target.",
    ),
    "netdev": (
        "Net Deviation against the pruning amount",
        "Top: normalised Net Deviation D = |dev| / max |dev| of each method's sweep (mean over "
        "trials, bootstrap 95 % CI; dashed: connection-level methods), measured on the pruning "
        "data. Lower D is read as a better pruning method. Bottom (log scale): the measured "
        "output change ‖dY(L)‖ (solid) and the right-hand side of the layer-wise propagation "
        "bound (dotted); dev is their difference.",
    ),
    "accuracy_amount": (
        "Accuracy against the pruning amount",
        "As the accuracy figure above, against the nominal amount s: the share of weights per "
        "tensor for connection pruning, the share of hidden units/filters per layer for node "
        "pruning.",
    ),
    "epochs": (
        "Retraining epochs with the curvature-based lower bound",
        "Points: single runs (triangles: capped); diamonds: mean. Dashed: the lower bound "
        "(μ1/μ2)·(g(W_s)/g(W_init))·t_init in epochs with estimated curvatures (secant estimator "
        "for connection pruning, PL for node pruning) at γ = 1; solid grey: with γ fitted per "
        "architecture and method.",
    ),
}

HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; }
.notes li { margin-bottom: 0.3em; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p>How many iterations does retraining need after pruning, compared with the lower and upper
bounds of John, Mishra &amp; Johnson (2020)? Study <code>{{ study }}</code>.</p>

<h2>Headline</h2>
<h3>Dense networks</h3>
{{ dense_html }}
<h3>Retraining, per architecture and method</h3>
{{ retrain_html }}
{% if notes %}
<h3>Caveats found in the data</h3>
<ul class="notes">
{% for n in notes %}  <li>{{ n }}</li>
{% endfor %}</ul>
{% endif %}
<h2>Setup</h2>
{{ setup_html }}
<h2>Summary per pruning amount</h2>
{{ summary_html }}
{% for sec in sections %}
<h2>{{ sec.title }}</h2>
<p>{{ sec.intro }}</p>
{% if sec.notes %}<ul class="notes">
{% for n in sec.notes %}  <li>{{ n }}</li>
{% endfor %}</ul>{% endif %}
{{ sec.table }}
{% endfor %}
<h2>Figures</h2>
{% for f in figures %}
<figure id="{{ f.key }}">
  <img alt="{{ f.title }}" src="data:{{ f.mime }};base64,{{ f.b64 }}">
  <figcaption><strong>{{ f.title }}.</strong> {{ f.text }}</figcaption>
</figure>
{% endfor %}
</body>
</html>
"""


@dataclass(frozen=True)
class RenderedFigure:
    key: str
    path: Path
    fmt: str
    data: bytes

    @property
    def mime(self) -> str:
        return "image/svg+xml" if self.fmt == "svg" else "image/png"


def _html_table(df: pd.DataFrame) -> Markup:
    return Markup(df.to_html(index=False, border=0, escape=True, na_rep="–"))


def _md_table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, disable_numparse=True)


@dataclass(frozen=True)
class Section:
    """An extra titled table of the summary documents (section B's results)."""

    title: str
    intro: str
    notes: Sequence[str]
    table: pd.DataFrame


def section_b(summary: pd.DataFrame) -> list[Section]:
    """Net Deviation and curvature sections, when the summary carries their columns."""
    if "D" not in summary:
        return []
    return [
        Section(
            "Net Deviation (THEORY.md B)",
            "On the pruning data (a fixed subset of the training split): the measured output "
            "change ‖dY(L)‖, the right-hand side of the layer-wise propagation bound, "
            "dev = ‖dY(L)‖ − RHS, and D = |dev| / max |dev| over each method's sweep of amounts "
            "(means over trials). Parameter counts are exact; node pruning yields a masked "
            "network equivalent to the physically smaller one.",
            netdev_findings(summary),
            netdev_table(summary),
        ),
        Section(
            "Curvature estimates and the epoch lower bound (THEORY.md B)",
            "μ1 (initial training) and μ2 (retraining) on the evaluation set: secant estimator "
            "for connection pruning, Polyak–Łojasiewicz for node pruning; lower bound "
            "γ·(μ1/μ2)·(g(W_s)/g(W_init))·t_init in epochs, at γ = 1 and with γ fitted per "
            "architecture and method.",
            [],
            curvature_table(summary),
        ),
    ]


def build_markdown(
    title: str,
    tables: Mapping[str, pd.DataFrame],
    notes: Sequence[str],
    figures: Sequence[RenderedFigure],
    md_dir: Path,
    sections: Sequence[Section] = (),
) -> str:
    """summary.md: the same content as the HTML, figures linked by relative path."""
    parts = [
        f"# {title}",
        "",
        "How many iterations does retraining need after pruning, compared with the lower and "
        "upper bounds of John, Mishra & Johnson (2020)?",
        "",
        "## Headline",
        "",
        "### Dense networks",
        "",
        _md_table(tables["dense"]),
        "",
        "### Retraining, per architecture and method",
        "",
        _md_table(tables["retrain"]),
        "",
    ]
    if notes:
        parts += ["### Caveats found in the data", ""] + [f"- {n}" for n in notes] + [""]
    parts += ["## Setup", "", _md_table(tables["setup"]), ""]
    parts += [
        "## Summary per pruning amount",
        "",
        _md_table(tables["summary"]),
        "",
    ]
    for sec in sections:
        parts += [f"## {sec.title}", "", sec.intro, ""]
        if sec.notes:
            parts += [f"- {n}" for n in sec.notes] + [""]
        parts += [_md_table(sec.table), ""]
    parts += ["## Figures", ""]
    for f in figures:
        head, text = FIGURE_TEXT[f.key]
        rel = Path(os.path.relpath(f.path, md_dir)).as_posix()
        parts += [f"![{head}]({rel})", "", f"**{head}.** {text}", ""]
    return "\n".join(parts)


def build_html(
    title: str,
    study: str,
    tables: Mapping[str, pd.DataFrame],
    notes: Sequence[str],
    figures: Sequence[RenderedFigure],
    sections: Sequence[Section] = (),
) -> str:
    """summary.html: self-contained, the figures embedded as base64 data URIs."""
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    figs = [
        {
            "key": f.key,
            "title": FIGURE_TEXT[f.key][0],
            "text": FIGURE_TEXT[f.key][1],
            "mime": f.mime,
            "b64": base64.b64encode(f.data).decode("ascii"),
        }
        for f in figures
    ]
    return env.from_string(HTML_TEMPLATE).render(
        title=title,
        study=study,
        dense_html=_html_table(tables["dense"]),
        retrain_html=_html_table(tables["retrain"]),
        setup_html=_html_table(tables["setup"]),
        summary_html=_html_table(tables["summary"]),
        sections=[
            {"title": x.title, "intro": x.intro, "notes": x.notes, "table": _html_table(x.table)}
            for x in sections
        ],
        notes=notes,
        figures=figs,
    )


def load_curves(paths: Sequence[Path]) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in paths]
    for p, f in zip(paths, frames, strict=True):
        _require(f, CURVE_COLUMNS, str(p))
    return pd.concat(frames, ignore_index=True)


def run_report(
    params: Mapping[str, Any],
    runs_path: Path,
    summary_path: Path,
    dense_path: Path,
    metrics_path: Path,
    curve_paths: Sequence[Path],
    out_dir: Path,
    out_md: Path,
    out_html: Path,
    table_dir: Path | None = None,
    workers: int = 1,
) -> dict[str, Path]:
    """The `report` job: six figures in ``out_dir``, summary.md and a self-contained HTML.

    With ``table_dir``, every table of the summary is also written there as a standalone HTML
    page (``TABLES`` names them): the Snakemake report shows them as report items.
    ``params`` holds ``report: {format, dpi}`` and ``study``. ``workers``: processes that
    draw the figures (:func:`prunetime.style.render_all`). Returns the written paths.
    """
    fmt, dpi = style.check_format(params["report"]["format"], params["report"]["dpi"])
    study = str(params.get("study", ""))

    runs = pd.read_csv(runs_path)
    summary = pd.read_csv(summary_path)
    dense = pd.read_csv(dense_path)
    metrics = read_json(metrics_path)
    curves = load_curves(curve_paths)
    _require(runs, RUN_COLUMNS, str(runs_path))
    _require(summary, SUMMARY_COLUMNS, str(summary_path))
    unknown = set(runs["status"]) - set(STATUSES)
    if unknown:
        raise ValueError(f"{runs_path}: unknown run status {sorted(unknown)}; know {STATUSES}")
    if "test_acc" not in dense and "dense_test_acc" in runs:
        dense = runs.groupby(["arch", "seed"], as_index=False)["dense_test_acc"].first()
        dense = dense.rename(columns={"dense_test_acc": "test_acc"})
    eval_size = int(dense["eval_size"].max()) if "eval_size" in dense else None

    out_dir = Path(out_dir)
    plots = {
        "iterations": lambda: plot_iterations(runs, summary),
        "accuracy": lambda: plot_accuracy(runs, dense, eval_size),
        "dense": lambda: plot_dense(curves, eval_size),
        "netdev": lambda: plot_netdev(runs),
        "accuracy_amount": lambda: plot_accuracy(runs, dense, eval_size, by="amount"),
        "epochs": lambda: plot_epochs(runs),
    }
    figures = [
        RenderedFigure(key, out_dir / f"{FIGURES[key]}.{fmt}", fmt, data)
        for key, data in style.render_all(plots, fmt, dpi, workers).items()
    ]
    for f in figures:
        write_bytes(f.path, f.data)
        log.info("wrote %s (%d bytes)", f.path, len(f.data))

    tables = {
        "dense": dense_table(dense),
        "retrain": retrain_headline(runs),
        "setup": setup_table(runs, dense),
        "summary": summary_table(summary),
    }
    notes = caveats(runs, summary, metrics)
    for n in notes:
        log.warning("%s", n)
    sections = section_b(summary)
    for line in sections[0].notes if sections else []:
        log.info("Net Deviation: %s", line)
    title = f"Retraining after pruning: iterations against bounds ({study})"
    md = build_markdown(title, tables, notes, figures, Path(out_md).parent, sections)
    write_text(Path(out_md), md)
    write_text(Path(out_html), build_html(title, study, tables, notes, figures, sections))
    written = {f.key: f.path for f in figures}
    written.update(md=Path(out_md), html=Path(out_html))
    if table_dir is not None:
        display = dict(tables)
        if sections:
            display.update(netdev=sections[0].table, curvature=sections[1].table)
        for key, (name, title) in TABLES.items():
            if key in display:
                path = Path(table_dir) / f"{name}.html"
                write_text(path, style.table_html(title, _html_table(display[key])))
                written[f"table_{key}"] = path
    return written
