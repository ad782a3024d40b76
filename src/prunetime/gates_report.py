"""Figures and summary of the structure-discovery study (THEORY.md D).

Four figures with the project's seaborn theme: test accuracy against the counted FLOPs and
against the parameter count (one line per variant across lambda, the baselines as points),
the theta trajectories of the combined variant, and the wall time per epoch. A Markdown
summary holds the run table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from prunetime.report import _new_figure, write_bytes, write_text
from prunetime.style import render_all

FIGURES = {
    "acc_flops": "accuracy_vs_flops",
    "acc_params": "accuracy_vs_params",
    "thetas": "theta_trajectories",
    "epoch_time": "epoch_time",
}
ORDER = ["combined", "unit", "layer", "dense", "magnitude"]
LABEL = {
    "combined": "unit + layer gates",
    "unit": "unit gates only",
    "layer": "layer gates only",
    "dense": "dense",
    "magnitude": "magnitude prune + retrain",
}


def _palette(variants: list[str]) -> dict[str, Any]:
    colors = sns.color_palette("colorblind", len(ORDER))
    return {v: colors[ORDER.index(v)] for v in variants}


def plot_tradeoff(runs: pd.DataFrame, x: str, xlabel: str) -> Figure:
    """Test accuracy against ``x`` (fraction of the full network), a panel per network."""
    nets = list(pd.unique(runs["net"]))
    fig = _new_figure(5.0 * len(nets) + 1.5, 4.2)
    axes = fig.subplots(1, len(nets), squeeze=False)[0]
    variants = [v for v in ORDER if v in set(runs["variant"])]
    pal = _palette(variants)
    for ax, net in zip(axes, nets, strict=True):
        sub = runs[runs["net"] == net]
        mean = sub.groupby(["variant", "lambda"], as_index=False)[[x, "test_acc"]].mean()
        for v in variants:
            d = mean[mean["variant"] == v].sort_values("lambda")
            if d.empty:
                continue
            style = "-o" if v in ("combined", "unit", "layer") else "s"
            ax.plot(d[x], d["test_acc"], style, color=pal[v], label=LABEL[v], ms=6)
            if v in ("combined", "unit", "layer"):
                for _, r in d.iterrows():
                    ax.annotate(f"{r['lambda']:g}", (r[x], r["test_acc"]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")  # fmt: skip
        sns.scatterplot(
            data=sub, x=x, y="test_acc", hue="variant", palette=pal, ax=ax, legend=False,
            alpha=0.35, s=18,
        )  # fmt: skip
        ax.set_title(str(net))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
    axes[0].legend(loc="lower right", fontsize=8, title="numbers: lambda", title_fontsize=8)
    return fig


def plot_thetas(thetas: pd.DataFrame) -> Figure:
    """Block thetas (one line per block) and mean unit theta per block, combined variant,
    first network and seed, one column per lambda."""
    th = thetas[thetas["variant"] == "combined"] if "combined" in set(thetas["variant"]) else thetas
    net, seed = th["net"].iloc[0], th["seed"].min()
    th = th[(th["net"] == net) & (th["seed"] == seed)]
    lams = sorted(pd.unique(th["lambda"]))
    fig = _new_figure(3.6 * len(lams) + 1.0, 6.0)
    axes = fig.subplots(2, len(lams), squeeze=False, sharey=True)
    for j, lam in enumerate(lams):
        d = th[th["lambda"] == lam]
        blocks = d[d["kind"] == "block"]
        units = d[d["kind"] == "unit"].groupby(["step", "block"], as_index=False)["theta"]
        if not blocks.empty:
            sns.lineplot(data=blocks, x="step", y="theta", hue="block", ax=axes[0][j],
                         palette="viridis", legend=j == 0)  # fmt: skip
        if len(d[d["kind"] == "unit"]):
            sns.lineplot(data=units.mean(), x="step", y="theta", hue="block", ax=axes[1][j],
                         palette="viridis", legend=False)  # fmt: skip
        axes[0][j].set_title(f"{net}, combined, lambda = {lam:g}")
        axes[0][j].set_ylabel("block theta")
        axes[1][j].set_ylabel("mean unit theta (kept units)")
        axes[1][j].set_xlabel("optimizer step")
    return fig


def plot_epoch_time(epochs: pd.DataFrame) -> Figure:
    """Wall time of each training epoch, a panel per lambda (first network, mean over seeds)."""
    net = epochs["net"].iloc[0]
    ep = epochs[epochs["net"] == net]
    dense = ep[ep["variant"] == "dense"]
    gated = ep[ep["variant"] != "dense"]
    lams = sorted(pd.unique(gated["lambda"])) or [0.0]
    fig = _new_figure(3.6 * len(lams) + 1.0, 3.8)
    axes = fig.subplots(1, len(lams), squeeze=False, sharey=True)[0]
    variants = [v for v in ORDER if v in set(ep["variant"])]
    pal = _palette(variants)
    for ax, lam in zip(axes, lams, strict=True):
        d = pd.concat([gated[gated["lambda"] == lam], dense])
        sns.lineplot(data=d, x="epoch", y="wall_s", hue="variant", palette=pal, marker="o",
                     ax=ax, legend=ax is axes[0], errorbar=None)  # fmt: skip
        ax.set_title(f"{net}, lambda = {lam:g}")
        ax.set_ylabel("training wall time per epoch (s)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def summary_markdown(study: str, runs: pd.DataFrame, figures: Mapping[str, Path], md_dir: Path):
    cols = ["net", "variant", "lambda", "test_acc", "params", "params_frac", "flops",
            "flops_frac", "blocks_kept", "units_kept", "epoch_time_ratio"]  # fmt: skip
    mean = runs.groupby(["net", "variant", "lambda"], as_index=False)[cols[3:]].mean()
    mean["order"] = mean["variant"].map(ORDER.index)
    mean = mean.sort_values(["net", "order", "lambda"])[cols]
    parts = [
        f"# Structure discovery during training: {study}",
        "",
        "Means over seeds. FLOPs: forward FLOPs per sample counted by torch's flop counter "
        "on the final network; the magnitude baseline's zeros do not reduce them. "
        "epoch_time_ratio: wall time of the last epoch over the first.",
        "",
        mean.to_markdown(index=False, floatfmt=".4g"),
        "",
        "## Figures",
        "",
    ]
    for key, path in figures.items():
        parts += [f"![{key}]({Path(os.path.relpath(path, md_dir)).as_posix()})", ""]
    return "\n".join(parts)


def run_gates_report(
    params: Mapping[str, Any],
    runs_path: Path,
    epochs_path: Path,
    thetas_path: Path,
    out_dir: Path,
    out_md: Path,
    workers: int = 1,
) -> dict[str, Path]:
    """The gates report job: four figures in ``out_dir`` (drawn by ``workers`` processes,
    :func:`prunetime.style.render_all`) and summary.md."""
    fmt, dpi = str(params["report"]["format"]), int(params["report"]["dpi"])
    runs = pd.read_csv(runs_path)
    epochs = pd.read_csv(epochs_path)
    thetas = pd.read_csv(thetas_path)
    written: dict[str, Path] = {}
    plots = {
        "acc_flops": lambda: plot_tradeoff(runs, "flops_frac", "FLOPs (fraction of full)"),
        "acc_params": lambda: plot_tradeoff(runs, "params_frac", "parameters (fraction)"),
        "thetas": lambda: plot_thetas(thetas),
        "epoch_time": lambda: plot_epoch_time(epochs),
    }
    for key, data in render_all(plots, fmt, dpi, workers).items():
        path = Path(out_dir) / f"{FIGURES[key]}.{fmt}"
        write_bytes(path, data)
        written[key] = path
    write_text(
        Path(out_md), summary_markdown(str(params.get("study", "")), runs, written, out_md.parent)
    )
    written["md"] = Path(out_md)
    return written
