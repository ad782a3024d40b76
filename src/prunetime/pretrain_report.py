"""Figures and summary of the pre-training threshold study (THEORY.md C).

Three figures, drawn with the project's seaborn theme (:mod:`prunetime.style`):
the pruned subnetwork's training loss against pre-training iterations (one curve per m),
T*(m) with the three fitted laws, and the normalised threshold T* * eta * lambda0 against m.
A Markdown summary collects the T*(m) table, the fit statistics and the caveats.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from prunetime.io import read_json
from prunetime.style import (
    PALETTE,
    check_format,
    render_all,
    sequential,
    table_html,
    write_bytes,
    write_text,
)
from prunetime.style import new_figure as _new_figure
from prunetime.threshold import DEFINITIONS, LAWS, Fit

FIGURES = {
    "loss": "pruned_loss_vs_pretraining",
    "accuracy": "accuracy_vs_pretraining",
    "threshold": "threshold_vs_m",
    "normalised": "normalised_threshold_vs_m",
}
VARIANT_LABEL = {
    "dense": "dense network (all N neurons)",
    "with_replacement": "greedy, with replacement",
    "without_replacement": "greedy, without replacement",
}
LAW_STYLE = {"log": "-", "power": "--", "linear": ":"}
X_STEPS = "pre-training iterations t (optimizer steps; symlog axis, 0 = initialisation)"


def _m_palette(ms: Sequence[int]) -> dict[int, Any]:
    return sequential(ms)


def _steps_axis(ax: Any) -> None:
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.4)
    ax.set_xlim(left=0)


def plot_loss(
    curves: pd.DataFrame, th: pd.DataFrame, primary: Mapping[str, str], metric: str = "train_loss"
) -> Figure:
    """Training loss against pre-training iterations: dense network and each greedy variant.

    Lines are means over seeds, bands the range over seeds (no bootstrap: few seeds); a diamond
    marks the primary T* of each m (mean over seeds) on its curve.
    """
    variants = [v for v in VARIANT_LABEL if v in set(curves["variant"])]
    stages = [s for s in ("pruned", "finetuned") if s in set(curves["stage"])]
    ms = sorted(curves["m"].unique())
    pal = _m_palette(ms)
    nrow = len(stages)
    fig = _new_figure(4.4 * len(variants) + 1.6, 3.6 * nrow + 0.8)
    axes = fig.subplots(nrow, len(variants), squeeze=False, sharey=True, sharex=True)
    for i, stage in enumerate(stages):
        for j, variant in enumerate(variants):
            ax = axes[i, j]
            if variant == "dense" and i > 0:
                ax.axis("off")  # the dense network has no fine-tuning stage
                continue
            if variant == "dense":
                sub = curves[curves["variant"] == "dense"]
                title = VARIANT_LABEL["dense"]
            else:
                sub = curves[(curves["variant"] == variant) & (curves["stage"] == stage)]
                title = f"{VARIANT_LABEL[variant]}\n" + (
                    "right after selection" if stage == "pruned" else "after fine-tuning"
                )
            sns.lineplot(
                data=sub,
                x="step",
                y=metric,
                hue="m",
                palette=pal,
                hue_order=ms,
                errorbar=("pi", 100),
                ax=ax,
                legend=(i == 0 and j == len(variants) - 1),
                marker="o",
                ms=3.5,
                lw=1.6,
            )
            if variant != "dense" and metric == "train_loss":
                t = th[(th["variant"] == variant) & (th["stage"] == stage)]
                t = t[t["definition"] == primary["definition"]]
                for m, g in t.groupby("m"):
                    c = sub[sub["m"] == m].groupby("step")[metric].mean()
                    ts = float(g["t_star"].mean())
                    y = float(np.interp(np.log1p(ts), np.log1p(c.index.to_numpy(float)), c.values))
                    ax.plot([ts], [y], marker="D", ms=8, mfc="white", mec=pal[m], mew=2, zorder=5)
            ax.set_title(title)
            _steps_axis(ax)
            ax.tick_params(labelleft=True, labelbottom=True)  # the panel beside may be hidden
            ax.set_xlabel("")
            first = j == 0 or (j == 1 and variants[0] == "dense" and i > 0)
            ax.set_ylabel(
                f"{metric.replace('_', ' ')} on the m-image training subset" if first else ""
            )
    leg = axes[0, -1].get_legend()
    if leg is not None:
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1.0), title="m (images)")
    fig.supxlabel(X_STEPS)
    fig.suptitle(
        f"Training loss (mean over seeds, band: range); ◇ = T* ({primary['definition']})"
        if metric == "train_loss"
        else metric
    )
    return fig


def plot_accuracy(curves: pd.DataFrame) -> Figure:
    """Training and test accuracy against pre-training iterations, per variant and stage."""
    variants = [v for v in VARIANT_LABEL if v in set(curves["variant"])]
    ms = sorted(curves["m"].unique())
    pal = _m_palette(ms)
    fig = _new_figure(4.4 * len(variants) + 1.6, 7.6)
    axes = fig.subplots(2, len(variants), squeeze=False, sharex=True, sharey=True)
    for i, metric in enumerate(("train_acc", "test_acc")):
        for j, variant in enumerate(variants):
            ax = axes[i, j]
            sub = curves[curves["variant"] == variant]
            sns.lineplot(
                data=sub,
                x="step",
                y=metric,
                hue="m",
                palette=pal,
                hue_order=ms,
                style="stage",
                style_order=["dense", "pruned", "finetuned"],
                errorbar=None,
                ax=ax,
                legend=(i == 0 and j == len(variants) - 1),
                lw=1.5,
            )
            ax.set_title(VARIANT_LABEL[variant] if i == 0 else "")
            ax.set_ylabel("training accuracy" if i == 0 else "test accuracy (10k test images)")
            ax.set_ylim(0, 1.02)
            _steps_axis(ax)
            ax.set_xlabel("")
    leg = axes[0, -1].get_legend()
    if leg is not None:
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1.0))
    fig.supxlabel(X_STEPS)
    fig.suptitle("Accuracy of the dense network and of the greedy subnetworks (mean over seeds)")
    return fig


def _fit_from_row(r: Any) -> Fit:
    return Fit(r.law, r.a, r.b, math.nan, r.r2, r.aic, int(r.n_points))


def plot_threshold(
    th: pd.DataFrame, summary: pd.DataFrame, fits: pd.DataFrame, primary: Mapping[str, str]
) -> Figure:
    """T*(m) (primary definition, before fine-tuning) with the log, power and linear fits."""
    variants = [v for v in VARIANT_LABEL if v in set(th["variant"])]
    fig = _new_figure(5.6 * len(variants) + 0.4, 6.6)
    axes = fig.subplots(1, len(variants), squeeze=False, sharey=True)[0]
    rng = np.random.default_rng(0)
    for ax, variant in zip(axes, variants, strict=True):
        sel = (th["variant"] == variant) & (th["stage"] == "pruned")
        t = th[sel & (th["definition"] == primary["definition"])]
        s = summary[
            (summary["variant"] == variant)
            & (summary["stage"] == "pruned")
            & (summary["definition"] == primary["definition"])
        ].sort_values("m")
        f = fits[
            (fits["variant"] == variant)
            & (fits["stage"] == "pruned")
            & (fits["definition"] == primary["definition"])
        ]
        jitter = np.exp(rng.uniform(-0.04, 0.04, len(t)))
        ax.scatter(t["m"] * jitter, t["t_star"], s=22, alpha=0.5, color="grey", label="seed")
        yerr = np.vstack(
            [s["t_star_mean"] - s["t_star_ci_lo"], s["t_star_ci_hi"] - s["t_star_mean"]]
        )
        ax.errorbar(
            s["m"],
            s["t_star_mean"],
            yerr=np.nan_to_num(yerr),
            fmt="D",
            color="black",
            capsize=4,
            ms=6,
            label="mean ± 95 % CI (seeds)",
            zorder=4,
        )
        grid = np.geomspace(t["m"].min(), t["m"].max(), 200)
        for r in f.itertuples():
            if not math.isfinite(r.aic):
                continue
            best = " (best AIC)" if r.best else ""
            ax.plot(
                grid,
                _fit_from_row(r).predict(grid),
                ls=LAW_STYLE[r.law],
                lw=2,
                label=f"{r.law}: {LAWS[r.law][0]}, R² {r.r2:.2f}, ΔAIC {r.delta_aic:.1f}{best}",
            )
        ax.set_xscale("log")
        ax.set_xlabel("training-set size m (images, log scale)")
        ax.set_ylabel("T* (pre-training iterations)")
        ax.set_title(VARIANT_LABEL[variant])
        ax.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1)
    fig.suptitle(f"Threshold T*(m), definition '{primary['definition']}', before fine-tuning")
    return fig


def plot_normalised(th: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    """T* * eta * lambda0 against m for every definition: the theory predicts ~ 2 log m + c."""
    variants = [v for v in VARIANT_LABEL if v in set(th["variant"])]
    fig = _new_figure(5.0 * len(variants) + 1.8, 4.4)
    axes = fig.subplots(1, len(variants), squeeze=False, sharey=True)[0]
    defs = [d for d in DEFINITIONS if d in set(summary["definition"])]
    pal = {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(defs)}
    for ax, variant in zip(axes, variants, strict=True):
        s = summary[(summary["variant"] == variant) & (summary["stage"] == "pruned")]
        for d in defs:
            g = s[s["definition"] == d].sort_values("m")
            yerr = np.vstack(
                [
                    g["t_star_normalised_mean"] - g["t_star_normalised_ci_lo"],
                    g["t_star_normalised_ci_hi"] - g["t_star_normalised_mean"],
                ]
            )
            ax.errorbar(
                g["m"],
                g["t_star_normalised_mean"],
                yerr=np.nan_to_num(yerr),
                marker="o",
                capsize=3,
                color=pal[d],
                label=d,
                lw=1.5,
            )
        ax.set_xscale("log")
        ax.set_xlabel("training-set size m (images, log scale)")
        ax.set_ylabel("T* · η · λ0 (dimensionless)")
        ax.set_title(VARIANT_LABEL[variant])
    axes[-1].legend(title="T* definition", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Normalised threshold T* · η · λ0 (λ0: empirical NTK at initialisation)")
    return fig


def _md(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, disable_numparse=True)


def _f(v: Any, spec: str = ".4g") -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "–" if not math.isfinite(x) else format(x, spec)


# Display tables written for the Snakemake report: key -> (file stem, title).
TABLES = {
    "setup": ("pretrain_setup", "Pre-training threshold study: settings"),
    "tstar": ("threshold_by_m", "T*(m), primary definition, before fine-tuning"),
    "sensitivity": ("threshold_definitions", "Mean T*(m) under every threshold definition"),
    "dense": ("pretrain_dense", "Dense network at the last checkpoint (mean over seeds)"),
    "fits": ("threshold_fits", "Fits of T*(m): log, power and linear laws"),
}


def summary_tables(
    summary: pd.DataFrame,
    fits: pd.DataFrame,
    metrics: Mapping[str, Any],
    curves: pd.DataFrame,
) -> dict[str, pd.DataFrame]:
    """The study's tables, formatted for reading (TABLES names them)."""
    primary = metrics["primary"]
    d = curves[curves["variant"] == "dense"]
    last = d[d["step"] == d["step"].max()]
    setup = pd.DataFrame(
        [
            {
                "width N": int(curves["width"].iloc[0]),
                "scaling": curves["scaling"].iloc[0],
                "loss": curves["loss"].iloc[0],
                "optimizer": curves["method"].iloc[0],
                "η": _f(curves["lr"].iloc[0]),
                "greedy size n": int(curves[curves["variant"] != "dense"]["size"].max()),
                "checkpoints": int(curves["step"].nunique()),
                "max iterations": int(curves["step"].max()),
                "m": ", ".join(str(int(m)) for m in sorted(curves["m"].unique())),
                "seeds": ", ".join(str(int(s)) for s in sorted(curves["seed"].unique())),
            }
        ]
    )
    s = summary[(summary["stage"] == "pruned") & (summary["definition"] == primary["definition"])]
    tstar = pd.DataFrame(
        {
            "variant": s["variant"],
            "m": s["m"].astype(int),
            "m requested": s["m_requested"].astype(int),
            "T* mean": s["t_star_mean"].map(lambda v: _f(v, ".1f")),
            "95% CI": [
                f"[{_f(a, '.1f')}, {_f(b, '.1f')}]"
                for a, b in zip(s["t_star_ci_lo"], s["t_star_ci_hi"], strict=True)
            ],
            "T*·η·λ0": s["t_star_normalised_mean"].map(lambda v: _f(v, ".3g")),
            "λ0": s["lambda0_mean"].map(lambda v: _f(v, ".3g")),
            "final pruned loss": s["final_loss_mean"].map(lambda v: _f(v, ".4f")),
            "plateau at end": s["plateau_share"].map(lambda v: _f(v, ".0%")),
        }
    )
    pr = summary[(summary["stage"] == "pruned") & (summary["variant"] == primary["variant"])]
    sens = pr.pivot_table(index="m", columns="definition", values="t_star_mean")
    sens = sens.map(lambda v: _f(v, ".1f")).reset_index()
    sens["m"] = sens["m"].astype(int)
    sens.columns.name = None
    dense = last.groupby("m")[["train_loss", "train_acc", "test_acc"]].mean()
    dense = dense.map(lambda v: _f(v, ".4g")).reset_index()
    dense["m"] = dense["m"].astype(int)
    f = fits[(fits["stage"] == "pruned") & (fits["definition"] == primary["definition"])]
    fit_cols = {
        "variant": "variant", "law": "law", "a": "a", "b": "b", "b_ci_lo": "b CI low",
        "b_ci_hi": "b CI high", "r2": "R²", "aic": "AIC", "delta_aic": "ΔAIC", "best": "best",
    }  # fmt: skip
    fit_table = pd.DataFrame({v: f[k] for k, v in fit_cols.items() if k in f})
    for col in fit_table.columns:
        if col not in ("variant", "law", "best"):
            fit_table[col] = fit_table[col].map(lambda v: _f(v, ".4g"))
    return {"setup": setup, "tstar": tstar, "sensitivity": sens, "dense": dense, "fits": fit_table}


def summary_notes(metrics: Mapping[str, Any], curves: pd.DataFrame, th: pd.DataFrame) -> list[str]:
    """Caveats found in the data: capped or duplicate m, curves without a plateau, one seed."""
    primary = metrics["primary"]
    notes = []
    if metrics.get("capped_m"):
        notes.append(
            "Requested sizes above the largest class-balanced subset of the training split were "
            f"capped: {', '.join(metrics['capped_m'])} (10 × the rarest class's count)."
        )
    if metrics.get("duplicate_m"):
        notes.append(f"Several requested sizes map to the same m: {metrics['duplicate_m']}.")
    noplat = th[(th["definition"] == primary["definition"]) & ~th["plateau"].astype(bool)]
    if len(noplat):
        keys = sorted({(int(r.m), r.variant, r.stage) for r in noplat.itertuples()})
        notes.append(
            f"{len(noplat)} curve(s) still changed by more than the tolerance between the last "
            "two checkpoints, so their 'final value' is not a plateau and T* depends on where "
            "the run stops: " + "; ".join(f"m={m} {v}/{st}" for m, v, st in keys)
        )
    if int(curves["seed"].nunique()) < 2:
        notes.append("One seed only: no confidence intervals.")
    return notes


def verdict(metrics: Mapping[str, Any]) -> str:
    """One sentence on the best law and how clearly the data prefer it."""
    best = metrics.get("best_law")
    fits = metrics.get("fits", {})
    if best not in fits:
        return "no law could be fitted"
    others = [
        f["delta_aic"]
        for law, f in fits.items()
        if law != best and f["delta_aic"] == f["delta_aic"]
    ]
    gap = min(others) if others else math.nan
    return (
        f"the law with the lowest AIC is {best} (R² {_f(fits[best]['r2'], '.3f')}; the next law "
        f"is {_f(gap, '.2f')} AIC units behind"
        + ("; below 2, the data do not distinguish the laws)" if gap < 2 else ")")
    )


def summary_markdown(
    study: str,
    summary: pd.DataFrame,
    fits_md: str,
    metrics: Mapping[str, Any],
    curves: pd.DataFrame,
    th: pd.DataFrame,
    figures: Mapping[str, Path],
    md_dir: Path,
    fits: pd.DataFrame | None = None,
) -> str:
    """summary.md: setup, T*(m) per definition, fit statistics, caveats and the figures."""
    primary = metrics["primary"]
    tables = summary_tables(summary, fits if fits is not None else pd.DataFrame(), metrics, curves)
    notes = summary_notes(metrics, curves, th)
    parts = [
        f"# Pre-training threshold study ({study})",
        "",
        "How many iterations of dense pre-training does a two-layer ReLU network need before "
        "greedy forward selection finds a subnetwork with good training loss, and how does "
        "that threshold T* grow with the training-set size m? (THEORY.md C: T* ~ log m.)",
        "",
        f"**Result:** with the primary definition (`{primary['definition']}`, variant "
        f"`{primary['variant']}`), {verdict(metrics)}.",
        "",
        "## Setup",
        "",
        _md(tables["setup"]),
        "",
        "## T*(m), primary definition, before fine-tuning",
        "",
        _md(tables["tstar"]),
        "",
        f"## Sensitivity: mean T*(m) under every definition ({primary['variant']})",
        "",
        _md(tables["sensitivity"]),
        "",
        "## Dense network at the last checkpoint (mean over seeds)",
        "",
        _md(tables["dense"]),
        "",
        fits_md.replace("# Fits", "## Fits", 1).replace("\n## All", "\n### All"),
    ]
    if notes:
        parts += ["## Caveats found in the data", ""] + [f"- {n}" for n in notes] + [""]
    parts += ["## Figures", ""]
    for key, path in figures.items():
        rel = Path(os.path.relpath(path, md_dir)).as_posix()
        parts += [f"![{key}]({rel})", ""]
    return "\n".join(parts)


def run_pretrain_report(
    params: Mapping[str, Any],
    curves_path: Path,
    thresholds_path: Path,
    summary_path: Path,
    fits_path: Path,
    fits_md_path: Path,
    metrics_path: Path,
    out_dir: Path,
    out_md: Path,
    table_dir: Path | None = None,
    workers: int = 1,
) -> dict[str, Path]:
    """The report job: four figures in ``out_dir``, summary.md, and with ``table_dir`` the
    tables as standalone HTML pages (``TABLES``) for the Snakemake report. ``workers``:
    processes that draw the figures (:func:`prunetime.style.render_all`)."""
    fmt, dpi = check_format(params["report"]["format"], params["report"]["dpi"])
    curves = pd.read_csv(curves_path)
    th = pd.read_csv(thresholds_path)
    summary = pd.read_csv(summary_path)
    fits = pd.read_csv(fits_path)
    metrics = read_json(metrics_path)
    primary = metrics["primary"]
    written: dict[str, Path] = {}
    plots = {
        "loss": lambda: plot_loss(curves, th, primary),
        "accuracy": lambda: plot_accuracy(curves),
        "threshold": lambda: plot_threshold(th, summary, fits, primary),
        "normalised": lambda: plot_normalised(th, summary),
    }
    for key, data in render_all(plots, fmt, dpi, workers).items():
        path = Path(out_dir) / f"{FIGURES[key]}.{fmt}"
        write_bytes(path, data)
        written[key] = path
    text = summary_markdown(
        str(params.get("study", "")),
        summary,
        Path(fits_md_path).read_text(encoding="utf-8"),
        metrics,
        curves,
        th,
        written,
        Path(out_md).parent,
        fits,
    )
    write_text(Path(out_md), text)
    written["md"] = Path(out_md)
    if table_dir is not None:
        tables = summary_tables(summary, fits, metrics, curves)
        for key, (name, title) in TABLES.items():
            path = Path(table_dir) / f"{name}.html"
            markup = tables[key].to_html(index=False, border=0, escape=True, na_rep="–")
            write_text(path, table_html(title, markup))
            written[f"table_{key}"] = path
    return written
