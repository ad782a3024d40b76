"""Pre-training threshold T*(m): estimators, laws fitted against m, bootstrap over seeds.

T* is read off one curve: the pruned subnetwork's training loss L(t) against the number t
of pre-training iterations, sampled at the checkpoints t_0 = 0 < t_1 < ... < t_K.

Definitions (the primary one is configurable, default ``within``):

* ``within`` (primary, THEORY.md C): the first checkpoint where |L(t) - L(t_K)| <= tol * L(t_K),
  i.e. the pruned loss is within tol (5 %) of its final value;
* ``settled``: the first checkpoint from which every later one stays within tol of L(t_K);
* ``drop``: the first checkpoint where the loss has made a fraction q (0.9) of its total change
  L(t_0) - L(t_K);
* ``knee``: the checkpoint farthest below the chord from the first to the last point of the
  curve in (log(1 + t), L) coordinates scaled to [0, 1] (Kneedle); for a curve that falls from
  a plateau to a plateau it is where the lower plateau begins.

With ``interpolate`` (default), a crossing between two checkpoints is placed by linear
interpolation of L in log(1 + t) between them, so T* is not restricted to the log-spaced grid.

Laws of T* against m (least squares on T* itself, so their residuals are comparable):
``log``: T = a + b ln m (THEORY.md's prediction), ``power``: T = a m^b, ``linear``: T = a + b m;
R^2 = 1 - RSS/TSS, AIC = n ln(RSS/n) + 2(k + 1) with k = 2 parameters plus the noise variance.
Confidence intervals resample seeds with replacement (a seed keeps all its m together).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prunetime.io import atomic_path, read_json, write_json

DEFINITIONS = ("within", "settled", "drop", "knee")
LAWS: dict[str, tuple[str, Callable[..., Any]]] = {
    "log": ("T = a + b ln m", lambda m, a, b: a + b * np.log(m)),
    "power": ("T = a m^b", lambda m, a, b: a * np.power(m, b)),
    "linear": ("T = a + b m", lambda m, a, b: a + b * m),
}


def _logt(t: np.ndarray | float) -> np.ndarray | float:
    return np.log1p(t)


def _crossing(t_a: float, t_b: float, l_a: float, l_b: float, level: float) -> float:
    """Step where the segment (t_a, l_a)-(t_b, l_b) crosses ``level``, linear in log(1 + t)."""
    if l_b == l_a:
        return float(t_b)
    frac = float(np.clip((level - l_a) / (l_b - l_a), 0.0, 1.0))
    u = _logt(t_a) + frac * (_logt(t_b) - _logt(t_a))
    return float(np.expm1(u))


def _first_index(mask: np.ndarray) -> int:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else len(mask) - 1


def threshold_step(
    steps: Sequence[float],
    losses: Sequence[float],
    definition: str = "within",
    *,
    tolerance: float = 0.05,
    drop_fraction: float = 0.9,
    interpolate: bool = True,
) -> float:
    """T* of one curve under ``definition`` (see the module docstring); steps must increase."""
    t = np.asarray(steps, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if t.ndim != 1 or len(t) != len(loss) or len(t) < 2:
        raise ValueError("need two equally long 1-d sequences with at least two checkpoints")
    if np.any(np.diff(t) <= 0):
        raise ValueError("checkpoint steps must be strictly increasing")
    if not np.all(np.isfinite(loss)):
        raise ValueError("losses must be finite")
    final = loss[-1]
    band = tolerance * abs(final)
    if definition in ("within", "settled"):
        inside = np.abs(loss - final) <= band
        if definition == "within":
            i = _first_index(inside)
        else:
            outside = np.flatnonzero(~inside)
            i = int(outside[-1]) + 1 if len(outside) else 0
        if i == 0 or not interpolate:
            return float(t[i])
        level = final + band if loss[i - 1] > final else final - band
        return _crossing(t[i - 1], t[i], loss[i - 1], loss[i], level)
    if definition == "drop":
        total = loss[0] - final
        if total == 0:
            return float(t[0])
        level = loss[0] - drop_fraction * total
        reached = (loss <= level) if total > 0 else (loss >= level)
        i = _first_index(reached)
        if i == 0 or not interpolate:
            return float(t[i])
        return _crossing(t[i - 1], t[i], loss[i - 1], loss[i], level)
    if definition == "knee":
        u = _logt(t)
        u = (u - u[0]) / (u[-1] - u[0])
        span = loss.max() - loss.min()
        if span == 0:
            return float(t[0])
        v = (loss - loss.min()) / span
        chord = v[0] + (v[-1] - v[0]) * u
        gap = chord - v if loss[0] >= final else v - chord
        return float(t[int(np.argmax(gap))])
    raise ValueError(f"unknown threshold definition {definition!r}; allowed: {DEFINITIONS}")


@dataclass
class Fit:
    law: str
    a: float
    b: float
    rss: float
    r2: float
    aic: float
    n: int

    def predict(self, m: np.ndarray | float) -> np.ndarray:
        return LAWS[self.law][1](np.asarray(m, dtype=float), self.a, self.b)


def _fit_power(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares for T = a m^b: for a fixed b the best a is closed-form, so only b is
    searched, on a grid over [-4, 4] refined around its best point (resolution ~3e-4)."""
    ref = math.exp(float(np.mean(np.log(x))))  # conditioning: z = m / geometric mean
    logz = np.log(x / ref)

    def best(grid: np.ndarray) -> tuple[float, float]:
        zb = np.exp(grid[:, None] * logz[None, :])
        a = (zb @ y) / np.einsum("ij,ij->i", zb, zb)
        rss = np.einsum("ij,ij->i", y - a[:, None] * zb, y - a[:, None] * zb)
        i = int(np.argmin(rss))
        return float(grid[i]), float(a[i])

    b, _ = best(np.linspace(-4.0, 4.0, 161))
    b, a = best(np.linspace(b - 0.05, b + 0.05, 301))
    return a * ref ** (-b), b


def _line(design: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Intercept and slope of ordinary least squares of y on one regressor."""
    d = design - design.mean()
    slope = float(d @ (y - y.mean()) / (d @ d))
    return float(y.mean() - slope * design.mean()), slope


def fit_law(law: str, m: Sequence[float] | np.ndarray, t: Sequence[float] | np.ndarray) -> Fit:
    """Least-squares fit of one law to points (m, T*), all on the scale of T* itself."""
    x = np.asarray(m, dtype=float)
    y = np.asarray(t, dtype=float)
    n = len(x)
    if law not in LAWS:
        raise ValueError(f"unknown law {law!r}; allowed: {sorted(LAWS)}")
    if n < 3 or len(np.unique(x)) < 2:
        return Fit(law, math.nan, math.nan, math.nan, math.nan, math.nan, n)
    if law in ("log", "linear"):
        a, b = _line(np.log(x) if law == "log" else x, y)
    else:
        a, b = _fit_power(x, y)
    fit = Fit(law, float(a), float(b), math.nan, math.nan, math.nan, n)
    resid = y - fit.predict(x)
    rss = float(np.sum(resid**2))
    tss = float(np.sum((y - y.mean()) ** 2))
    fit.rss = rss
    fit.r2 = 1.0 - rss / tss if tss > 0 else math.nan
    fit.aic = n * math.log(max(rss, 1e-300) / n) + 2 * 3
    return fit


def bootstrap_fits(
    data: pd.DataFrame, n_boot: int, seed: int = 0, value: str = "t_star"
) -> pd.DataFrame:
    """Refit every law on seed-resampled data; one row per (replicate, law).

    Each replicate draws as many seeds as there are, with replacement, and takes all rows of
    each drawn seed (its T* at every m), so the correlation across m within a seed is kept.
    """
    seeds = np.sort(data["seed"].unique())
    rng = np.random.default_rng(seed)
    groups = {
        s: (
            data.loc[data["seed"] == s, "m"].to_numpy(float),
            data.loc[data["seed"] == s, value].to_numpy(float),
        )
        for s in seeds
    }
    out = []
    for rep in range(n_boot):
        draw = rng.choice(seeds, size=len(seeds), replace=True)
        x = np.concatenate([groups[s][0] for s in draw])
        y = np.concatenate([groups[s][1] for s in draw])
        fits = {law: fit_law(law, x, y) for law in LAWS}
        best = min(fits, key=lambda k: fits[k].aic if math.isfinite(fits[k].aic) else math.inf)
        for law, f in fits.items():
            out.append(
                {
                    "replicate": rep,
                    "law": law,
                    "a": f.a,
                    "b": f.b,
                    "r2": f.r2,
                    "aic": f.aic,
                    "best": law == best,
                }
            )
    return pd.DataFrame(out)


def _ci(values: pd.Series, level: float) -> tuple[float, float]:
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(v, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- the job


CURVE_KEYS = ["m", "m_requested", "seed", "variant", "stage"]


def load_curves(paths: Sequence[Path]) -> pd.DataFrame:
    """All rows of the selection jobs, one per (m, seed, checkpoint, variant, stage)."""
    df = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    return df.sort_values([*CURVE_KEYS, "step"]).reset_index(drop=True)


def thresholds(curves: pd.DataFrame, lambdas: pd.DataFrame, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """T* per (variant, stage, definition, m, seed) of the pruned training-loss curves.

    Also flags a curve whose last two checkpoints differ by more than the tolerance
    (``plateau`` False): its final value is not a plateau, so its T* is a lower estimate.
    """
    tol, q, interp = cfg["tolerance"], cfg["drop_fraction"], cfg["interpolate"]
    rows = []
    pruned = curves[curves["variant"] != "dense"]
    for (m, m_req, seed, variant, stage), g in pruned.groupby(CURVE_KEYS, sort=True):
        g = g.sort_values("step")
        steps, loss = g["step"].to_numpy(float), g["train_loss"].to_numpy(float)
        plateau = bool(abs(loss[-1] - loss[-2]) <= tol * abs(loss[-1]))
        for definition in DEFINITIONS:
            t_star = threshold_step(
                steps, loss, definition, tolerance=tol, drop_fraction=q, interpolate=interp
            )
            rows.append(
                {
                    "m": m,
                    "m_requested": m_req,
                    "seed": seed,
                    "variant": variant,
                    "stage": stage,
                    "definition": definition,
                    "t_star": t_star,
                    "final_loss": loss[-1],
                    "t_max": steps[-1],
                    "plateau": plateau,
                    "lr": g["lr"].iloc[0],
                }
            )
    out = pd.DataFrame(rows)
    out = out.merge(lambdas, on=["m", "seed"], how="left", validate="many_to_one")
    out["t_star_normalised"] = out["t_star"] * out["lr"] * out["lambda0"]
    return out


def fit_table(th: pd.DataFrame, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Fit statistics of every law for every (variant, stage, definition), with bootstrap CIs."""
    level, n_boot = cfg["ci_level"], cfg["bootstrap"]
    rows = []
    for (variant, stage, definition), g in th.groupby(["variant", "stage", "definition"]):
        fits = {law: fit_law(law, g["m"], g["t_star"]) for law in LAWS}
        finite = {k: f.aic for k, f in fits.items() if math.isfinite(f.aic)}
        best = min(finite, key=lambda k: finite[k]) if finite else ""
        n_seeds = g["seed"].nunique()
        boot = bootstrap_fits(g, n_boot) if n_boot and n_seeds >= 2 else pd.DataFrame()
        for law, f in fits.items():
            row = {
                "variant": variant,
                "stage": stage,
                "definition": definition,
                "law": law,
                "formula": LAWS[law][0],
                "a": f.a,
                "b": f.b,
                "r2": f.r2,
                "aic": f.aic,
                "delta_aic": f.aic - finite[best] if best and math.isfinite(f.aic) else math.nan,
                "best": law == best,
                "n_points": f.n,
                "n_seeds": n_seeds,
            }
            if len(boot):
                b = boot[boot["law"] == law]
                row["a_ci_lo"], row["a_ci_hi"] = _ci(b["a"], level)
                row["b_ci_lo"], row["b_ci_hi"] = _ci(b["b"], level)
                row["r2_ci_lo"], row["r2_ci_hi"] = _ci(b["r2"], level)
                row["best_share"] = float(b["best"].mean())
            else:
                for k in ("a_ci_lo", "a_ci_hi", "b_ci_lo", "b_ci_hi", "r2_ci_lo", "r2_ci_hi"):
                    row[k] = math.nan
                row["best_share"] = math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def threshold_summary(th: pd.DataFrame, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Mean T*(m) over seeds with a bootstrap CI over seeds, per (variant, stage, definition, m)."""
    level, n_boot = cfg["ci_level"], cfg["bootstrap"]
    rng = np.random.default_rng(0)
    rows = []
    keys = ["variant", "stage", "definition", "m"]
    for key, g in th.groupby(keys, sort=True):
        vals = g["t_star"].to_numpy(float)
        norm = g["t_star_normalised"].to_numpy(float)
        lo = hi = nlo = nhi = math.nan
        if n_boot and len(vals) >= 2:
            draws = rng.integers(0, len(vals), size=(n_boot, len(vals)))
            lo, hi = _ci(pd.Series(vals[draws].mean(1)), level)
            nlo, nhi = _ci(pd.Series(norm[draws].mean(1)), level)
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "m_requested": int(g["m_requested"].iloc[0]),
                "n_seeds": len(vals),
                "t_star_mean": vals.mean(),
                "t_star_ci_lo": lo,
                "t_star_ci_hi": hi,
                "t_star_normalised_mean": norm.mean(),
                "t_star_normalised_ci_lo": nlo,
                "t_star_normalised_ci_hi": nhi,
                "lambda0_mean": g["lambda0"].mean(),
                "final_loss_mean": g["final_loss"].mean(),
                "plateau_share": g["plateau"].mean(),
            }
        )
    return pd.DataFrame(rows)


def _fmt(v: Any, spec: str = ".4g") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "–" if not math.isfinite(f) else format(f, spec)


def fits_markdown(fits: pd.DataFrame, primary: Mapping[str, str]) -> str:
    """The fit statistics as a Markdown document: the primary definition first, then all."""
    cols = [
        "variant",
        "stage",
        "definition",
        "law",
        "formula",
        "a",
        "b",
        "b 95% CI",
        "R²",
        "AIC",
        "ΔAIC",
        "best",
        "best in bootstrap",
    ]

    def table(df: pd.DataFrame) -> str:
        out = pd.DataFrame(
            {
                "variant": df["variant"],
                "stage": df["stage"],
                "definition": df["definition"],
                "law": df["law"],
                "formula": df["formula"],
                "a": df["a"].map(_fmt),
                "b": df["b"].map(_fmt),
                "b 95% CI": [
                    f"[{_fmt(lo)}, {_fmt(hi)}]"
                    for lo, hi in zip(df["b_ci_lo"], df["b_ci_hi"], strict=True)
                ],
                "R²": df["r2"].map(lambda v: _fmt(v, ".3f")),
                "AIC": df["aic"].map(lambda v: _fmt(v, ".2f")),
                "ΔAIC": df["delta_aic"].map(lambda v: _fmt(v, ".2f")),
                "best": df["best"].map(lambda v: "yes" if v else ""),
                "best in bootstrap": df["best_share"].map(lambda v: _fmt(v, ".0%")),
            }
        )
        return out[cols].to_markdown(index=False, disable_numparse=True)

    sel = fits[
        (fits["variant"] == primary["variant"])
        & (fits["stage"] == "pruned")
        & (fits["definition"] == primary["definition"])
    ]
    parts = [
        "# Fits of the pre-training threshold T*(m)",
        "",
        f"Primary: variant `{primary['variant']}`, stage `pruned` (before fine-tuning), "
        f"definition `{primary['definition']}`. Least squares on T*; AIC = n ln(RSS/n) + 2·3; "
        "the CI of b and the share of bootstrap replicates in which a law has the lowest AIC "
        "come from resampling seeds.",
        "",
        table(sel),
        "",
        "## All variants, stages and definitions",
        "",
        table(fits),
        "",
    ]
    return "\n".join(parts)


def headline(
    summary: pd.DataFrame, fits: pd.DataFrame, primary: Mapping[str, str]
) -> dict[str, Any]:
    """The numbers a reader compares across runs: T*(m) and the best law, primary definition."""
    s = summary[
        (summary["variant"] == primary["variant"])
        & (summary["stage"] == "pruned")
        & (summary["definition"] == primary["definition"])
    ]
    f = fits[
        (fits["variant"] == primary["variant"])
        & (fits["stage"] == "pruned")
        & (fits["definition"] == primary["definition"])
    ]
    best = f[f["best"]]
    return {
        "primary": dict(primary),
        "t_star": {str(int(r.m)): round(float(r.t_star_mean), 3) for r in s.itertuples()},
        "t_star_normalised": {
            str(int(r.m)): round(float(r.t_star_normalised_mean), 6) for r in s.itertuples()
        },
        "best_law": str(best["law"].iloc[0]) if len(best) else None,
        "fits": {
            r.law: {"a": r.a, "b": r.b, "r2": r.r2, "aic": r.aic, "delta_aic": r.delta_aic}
            for r in f.itertuples()
        },
    }


def write_table(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.9g")


def run_threshold(
    params: Mapping[str, Any],
    row_paths: Sequence[Path],
    metric_paths: Sequence[Path],
    out_curves: Path,
    out_thresholds: Path,
    out_summary: Path,
    out_fits: Path,
    out_fits_md: Path,
    out_metrics: Path,
) -> dict[str, Any]:
    """The threshold job: T* for every curve and definition, the law fits and the headline."""
    cfg = params["pretrain"]["threshold"]
    curves = load_curves(row_paths)
    lam = pd.DataFrame([read_json(p) for p in metric_paths])
    lam = lam[["m", "seed", "lambda0", "lambda0_raw", "lambda0_inf", "ntk_subsample"]]
    th = thresholds(curves, lam, cfg)
    summary = threshold_summary(th, cfg)
    fits = fit_table(th, cfg)
    primary = {"variant": cfg["variant"], "definition": cfg["primary"]}
    write_table(curves, out_curves)
    write_table(th, out_thresholds)
    write_table(summary, out_summary)
    write_table(fits, out_fits)
    with atomic_path(out_fits_md) as tmp:
        tmp.write_text(fits_markdown(fits, primary), encoding="utf-8")
    dup = th.groupby("m")["m_requested"].nunique()
    metrics = headline(summary, fits, primary)
    metrics["capped_m"] = sorted(
        {f"{int(r)} -> {int(m)}" for m, r in zip(th["m"], th["m_requested"], strict=True) if m < r}
    )
    metrics["duplicate_m"] = [int(m) for m in dup[dup > 1].index]
    write_json(out_metrics, metrics)
    return metrics
