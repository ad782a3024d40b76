"""Bounds per run and summaries per (architecture, method, amount), as tidy tables.

Inputs are the per-job CSVs of pruning and retraining and the dense metrics JSONs; the
formulas are those of :mod:`prunetime.bounds` (iterations, section A),
:mod:`prunetime.curvature` (epochs with estimated mu1/mu2, section B) and
:mod:`prunetime.netdev` (Net Deviation, section B).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prunetime import bounds, curvature
from prunetime.io import atomic_path, read_json, write_json

KEYS = ["arch", "seed", "method", "amount", "trial"]


def load_runs(
    prune_tables: Sequence[Path], retrain_tables: Sequence[Path], dense_metrics: Sequence[Path]
) -> pd.DataFrame:
    """Join pruning, retraining and dense measurements into one row per retraining run."""
    pr = pd.concat([pd.read_csv(p) for p in prune_tables], ignore_index=True)
    rt = pd.concat([pd.read_csv(p) for p in retrain_tables], ignore_index=True)
    dense = pd.DataFrame([read_json(p) for p in dense_metrics])
    cols = ["arch", "seed", "t_init", "epochs_init", "g_init", "loss_init", "loss_star", "test_acc"]
    dense = dense[[c for c in cols if c in dense]].rename(columns={"test_acc": "dense_test_acc"})
    runs = pr.merge(rt, on=KEYS, how="inner", validate="one_to_one")
    if len(runs) != len(rt):
        raise ValueError("pruning and retraining tables do not match trial for trial")
    return runs.merge(dense, on=["arch", "seed"], how="left", validate="many_to_one")


def add_bounds(
    runs: pd.DataFrame, mu_ratio: float = 1.0, gamma_quantile: float = 0.0
) -> pd.DataFrame:
    """Per run: lower bound (gamma = 1 and fitted), upper bound, gamma_max, coverage flags.

    gamma is fitted per (architecture, method) on the runs that needed retraining (status
    not 'diverged', at least one iteration): a run already within eps after pruning
    (0 iterations) admits no gamma > 0 and would pin the fit to 0. A capped run enters the
    fit with its cap, a value its true iteration count can only exceed. Coverage flags
    (``within_*``) are defined for converged runs only: for a capped run the upper bound
    cannot be tested, for a diverged one neither can.
    """
    df = runs.copy()
    df["mu_ratio"] = mu_ratio
    df["upper"] = bounds.upper_bound(df["d2"], df["eta"], df["eps"])
    df["lower_g1"] = bounds.lower_bound(df["g_s"], df["g_init"], df["t_init"], 1.0, mu_ratio)
    df["gamma_max"] = [
        bounds.gamma_max(r.d2, r.g_init, r.eta, r.eps, r.t_init, r.g_s, mu_ratio)
        for r in df.itertuples()
    ]
    fit_rows = (df["status"] != "diverged") & (df["iterations"] > 0)
    df["gamma_fit"] = np.nan
    for _, g in df.groupby(["arch", "method"]):
        sub = g[fit_rows.loc[g.index]]
        gamma = bounds.fit_gamma(sub["iterations"], sub["lower_g1"], gamma_quantile)
        df.loc[g.index, "gamma_fit"] = gamma
    df["lower_fit"] = df["gamma_fit"] * df["lower_g1"]
    it = df["iterations"]
    converged = df["status"] == "converged"
    df["within_g1"] = converged & (it >= df["lower_g1"]) & (it <= df["upper"])
    df["within_fit"] = converged & (it >= df["lower_fit"]) & (it <= df["upper"])
    return add_epoch_bound(df, fit_rows, gamma_quantile)


def add_epoch_bound(
    df: pd.DataFrame, fit_rows: pd.Series, gamma_quantile: float = 0.0
) -> pd.DataFrame:
    """Section B's lower bound in epochs with the estimated curvature ratio mu1/mu2.

    lower_ep_g1 = (mu1/mu2) * (g(W_s)/g(W_init)) * epochs of initial training; gamma is fitted
    per (architecture, method) on the same runs as the iteration bound. Runs whose mu1/mu2
    is undefined (NaN) have no epoch bound and stay out of the fit.
    """
    for col in ("mu1", "mu2", "epochs_init"):
        if col not in df:
            df[col] = np.nan
    df["mu_ratio_est"] = df["mu1"] / df["mu2"].where(df["mu2"] > 0)
    df["lower_ep_g1"] = [
        curvature.epoch_lower_bound(r.g_s, r.g_init, r.epochs_init, r.mu1, r.mu2)
        for r in df.itertuples()
    ]
    df["gamma_ep_fit"] = np.nan
    for _, g in df.groupby(["arch", "method"]):
        sub = g[fit_rows.loc[g.index]]
        df.loc[g.index, "gamma_ep_fit"] = bounds.fit_gamma(
            sub["epochs"], sub["lower_ep_g1"], gamma_quantile
        )
    df["lower_ep_fit"] = df["gamma_ep_fit"] * df["lower_ep_g1"]
    converged = df["status"] == "converged"
    df["above_ep_g1"] = converged & (df["epochs"] >= df["lower_ep_g1"])
    return df


NETDEV_COLUMNS = ("ndev_lhs", "ndev_rhs", "ndev_dev")


def add_netdev(df: pd.DataFrame) -> pd.DataFrame:
    """Normalised Net Deviation D = |dev| / (max over the sweep of |dev|), per run.

    A sweep is one (architecture, method) across its pruning amounts; |dev| is averaged
    over the trials and seeds of each amount before the maximum is taken, so the mean D of
    an amount is its mean |dev| over the sweep's largest one and the curve peaks at 1.
    """
    df = df.copy()
    for col in NETDEV_COLUMNS:
        if col not in df:
            df[col] = np.nan
    df["ndev_absdev"] = df["ndev_dev"].abs()
    per_amount = df.groupby(["arch", "method", "amount"])["ndev_absdev"].mean()
    top = per_amount.groupby(level=["arch", "method"]).max()
    scale = pd.Series(
        [top.get((a, m), np.nan) for a, m in zip(df["arch"], df["method"], strict=True)],
        index=df.index,
    )
    df["D"] = df["ndev_absdev"] / scale.where(scale > 0)
    return df


def summarize(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean and CI of iterations per (arch, method, amount).

    Diverged runs are counted, never averaged in. Capped runs enter the mean at their cap
    (so the mean is a lower estimate whenever ``n_capped`` > 0); the shares within the
    bounds are over converged runs.
    """
    out = []
    for (arch, method, amount), g in df.groupby(["arch", "method", "amount"], sort=True):
        ok = g[g["status"] != "diverged"]
        conv = g[g["status"] == "converged"]
        mean, lo, hi = bounds.mean_ci(ok["iterations"], level)
        emean, elo, ehi = bounds.mean_ci(ok["epochs"], level)
        gamma = g["gamma_fit"].dropna()
        out.append(
            {
                "arch": arch,
                "method": method,
                "amount": amount,
                "n_runs": len(g),
                "n_converged": len(conv),
                "n_capped": int((g["status"] == "capped").sum()),
                "n_diverged": int((g["status"] == "diverged").sum()),
                "sparsity": g["sparsity"].mean(),
                "iterations_mean": mean,
                "iterations_ci_lo": lo,
                "iterations_ci_hi": hi,
                "epochs_mean": emean,
                "epochs_ci_lo": elo,
                "epochs_ci_hi": ehi,
                "lower_g1_mean": ok["lower_g1"].mean(),
                "lower_fit_mean": ok["lower_fit"].mean(),
                "upper_mean": ok["upper"].mean(),
                "gamma_fit": gamma.iloc[0] if len(gamma) else np.nan,
                "gamma_max_median": ok["gamma_max"].median(),
                "share_within_g1": conv["within_g1"].mean() if len(conv) else np.nan,
                "share_within_fit": conv["within_fit"].mean() if len(conv) else np.nan,
                "acc_pruned_mean": g["acc_pruned"].mean(),
                "loss_pruned_mean": g["loss_pruned"].mean(),
                "test_acc_mean": ok["test_acc"].mean(),
                "dense_test_acc": g["dense_test_acc"].mean(),
                **_section_b(g, ok),
            }
        )
    return pd.DataFrame(out)


def _mean(g: pd.DataFrame, col: str) -> float:
    return float(g[col].mean()) if col in g else np.nan


def _section_b(g: pd.DataFrame, ok: pd.DataFrame) -> dict[str, Any]:
    """Node counts, Net Deviation and curvature columns of one (arch, method, amount)."""
    gamma_ep = g["gamma_ep_fit"].dropna() if "gamma_ep_fit" in g else pd.Series(dtype=float)
    return {
        "level": g["level"].iloc[0] if "level" in g else "connection",
        "units_removed": _mean(g, "units_removed"),
        "n_params": _mean(g, "n_params"),
        "n_params_remaining": _mean(g, "n_params_remaining"),
        "ndev_lhs_mean": _mean(g, "ndev_lhs"),
        "ndev_rhs_mean": _mean(g, "ndev_rhs"),
        "ndev_dev_mean": _mean(g, "ndev_dev"),
        "ndev_absdev_mean": _mean(g, "ndev_absdev"),
        "D": _mean(g, "D"),
        "mu_estimator": g["mu_estimator"].iloc[0] if "mu_estimator" in g else "",
        "mu1_mean": _mean(g, "mu1"),
        "mu2_mean": _mean(g, "mu2"),
        "mu_ratio_median": float(g["mu_ratio_est"].median()) if "mu_ratio_est" in g else np.nan,
        "lower_ep_g1_mean": _mean(ok, "lower_ep_g1"),
        "lower_ep_fit_mean": _mean(ok, "lower_ep_fit"),
        "gamma_ep_fit": gamma_ep.iloc[0] if len(gamma_ep) else np.nan,
    }


NETDEV_TABLE = [
    "arch", "method", "level", "amount", "n_runs", "units_removed", "sparsity",
    "n_params", "n_params_remaining", "ndev_lhs_mean", "ndev_rhs_mean", "ndev_dev_mean",
    "ndev_absdev_mean", "D", "loss_pruned_mean", "acc_pruned_mean", "test_acc_mean",
    "mu_estimator", "mu1_mean", "mu2_mean", "mu_ratio_median", "epochs_mean",
    "lower_ep_g1_mean", "lower_ep_fit_mean", "gamma_ep_fit",
]  # fmt: skip


def headline_metrics(df: pd.DataFrame, dense: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The few numbers a reader (and `dvc metrics`) compares across runs of the study."""
    metrics: dict[str, Any] = {"dense": {}, "retrain": {}}
    for d in dense:
        metrics["dense"][f"{d['arch']}/seed{d['seed']}"] = {
            "test_acc": round(d["test_acc"], 6),
            "val_acc": round(d["val_acc"], 6),
        }
    for (arch, method), g in df.groupby(["arch", "method"]):
        ok = g[g["status"] != "diverged"]
        conv = g[g["status"] == "converged"]
        gamma = g["gamma_fit"].dropna()
        metrics["retrain"][f"{arch}/{method}"] = {
            "runs": len(g),
            "diverged": int((g["status"] == "diverged").sum()),
            "capped": int((g["status"] == "capped").sum()),
            "mean_iterations": round(float(ok["iterations"].mean()), 6) if len(ok) else None,
            "gamma_fit": round(float(gamma.iloc[0]), 9) if len(gamma) else None,
            "coverage_fit": round(float(conv["within_fit"].mean()), 6) if len(conv) else None,
            "coverage_gamma1": round(float(conv["within_g1"].mean()), 6) if len(conv) else None,
        }
        if "gamma_ep_fit" in g:
            metrics["retrain"][f"{arch}/{method}"]["gamma_epochs_fit"] = _rounded(
                g["gamma_ep_fit"].dropna()
            )
        if "D" in g:
            metrics["retrain"][f"{arch}/{method}"]["net_deviation_D"] = {
                f"{a:g}": _rounded(d["D"].dropna(), mean=True)
                for a, d in g.groupby("amount", sort=True)
            }
    return metrics


def _rounded(values: pd.Series, mean: bool = False) -> float | None:
    if not len(values):
        return None
    v = float(values.mean()) if mean else float(values.iloc[0])
    return round(v, 9) if np.isfinite(v) else None


def write_table(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.9g")


def run_bounds(
    config: dict[str, Any],
    prune_tables: Sequence[Path],
    retrain_tables: Sequence[Path],
    dense_metrics: Sequence[Path],
    out_runs: Path,
    out_summary: Path,
    out_dense: Path,
    out_metrics: Path,
    out_netdev: Path | None = None,
) -> pd.DataFrame:
    """The `bounds` job: runs table with bounds, per-amount summary, dense table, headline JSON,
    and the Net Deviation / curvature table per (arch, method, amount)."""
    bcfg = config["bounds"]
    runs = add_bounds(
        load_runs(prune_tables, retrain_tables, dense_metrics),
        bcfg["mu_ratio"],
        bcfg["gamma_quantile"],
    )
    runs = add_netdev(runs)
    runs = runs.sort_values(KEYS).reset_index(drop=True)
    summary = summarize(runs, bcfg["ci_level"])
    dense = [read_json(p) for p in dense_metrics]
    dense_df = pd.DataFrame(
        [{k: v for k, v in d.items() if not isinstance(v, dict)} for d in dense]
    )
    write_table(runs, out_runs)
    write_table(summary, out_summary)
    write_table(dense_df, out_dense)
    if out_netdev is not None:
        write_table(summary[[c for c in NETDEV_TABLE if c in summary]], out_netdev)
    write_json(out_metrics, headline_metrics(runs, dense))
    return summary
