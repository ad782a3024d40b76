"""The study summary page: one self-contained HTML document over every study of a results folder.

The page opens with the headline numbers of each study (dense accuracies, bound coverage per
method, fitted gamma, the Net Deviation crossover, the T*(m) fit) and then gives each study a
section with its figures embedded as data URIs and links to its tidy tables. Which sections
appear is decided by the results themselves: every study has one *section function*
(``STUDIES``) that reads its results folder and returns ``None`` when they do not exist.

A section is a plain dict, so a new study needs one function and, optionally, one template
block (``SECTION_BLOCKS[key]``, rendered inside the section with the section as ``sec``)::

    {
        "key": "retraining",          # unique; the anchor and the name of its template block
        "title": "Retraining time against the bounds (A)",
        "question": "How many iterations ...?",   # the research question, one sentence
        "answer": "Of 18 converged runs ...",     # the headline answer, read from the metrics
        "numbers": [                               # headline numbers, already formatted
            {"label": "dense test accuracy, lenet5", "value": "0.9712", "note": "1 seed"},
        ],
        "rows": [{...}],              # optional table for the study's block (column -> text)
        "figures": [{"title": "...", "path": Path}],  # embedded in the page
        "tables": [{"label": "...", "path": Path}],   # linked, relative to the page
        "notes": ["..."],             # caveats found in the data
    }

The same numbers are written as JSON (for scripts and ``dvc metrics``) and as a
reStructuredText fragment that the Snakemake report's workflow description includes.
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import DictLoader, Environment, select_autoescape

from prunetime.io import read_json
from prunetime.style import FORMATS, write_text

Section = dict[str, Any]
MIME = {"png": "image/png", "svg": "image/svg+xml"}


def _f(v: Any, spec: str = ".4g") -> str:
    """A number formatted with ``spec``; an en dash when missing or not finite."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "–"
    return format(x, spec) if math.isfinite(x) else "–"


def _share(v: Any) -> str:
    s = _f(v, ".0%")
    return s if s == "–" else s.replace("%", " %")


def _figure(folder: Path, stem: str, title: str) -> list[dict[str, Any]]:
    """The figure ``stem`` in whichever report format it was written, if it exists."""
    for fmt in FORMATS:
        path = folder / f"{stem}.{fmt}"
        if path.is_file():
            return [{"title": title, "path": path}]
    return []


def _tables(res: Path, items: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"label": label, "path": res / rel} for rel, label in items if (res / rel).is_file()]


# --------------------------------------------------------------------------- study A


def retraining_section(res: Path) -> Section | None:
    """Section A: dense accuracies, bound coverage and fitted gamma per (arch, method)."""
    runs_path, metrics_path = res / "tables" / "runs.csv", res / "metrics.json"
    if not (runs_path.is_file() and metrics_path.is_file()):
        return None
    runs = pd.read_csv(runs_path)
    metrics = read_json(metrics_path)
    numbers = []
    dense = pd.DataFrame(
        [{"arch": k.split("/")[0], **v} for k, v in metrics.get("dense", {}).items()]
    )
    if len(dense):
        for arch, g in dense.groupby("arch", sort=False):
            spread = f"range {_f(g.test_acc.min())}–{_f(g.test_acc.max())}" if len(g) > 1 else ""
            numbers.append(
                {
                    "label": f"dense test accuracy, {arch}",
                    "value": _f(g["test_acc"].mean(), ".4f"),
                    "note": f"mean over {len(g)} seed(s)" + (f", {spread}" if spread else ""),
                }
            )
    conv = runs[runs["status"] == "converged"]
    n_conv = len(conv)
    upper_ok = float((conv["iterations"] <= conv["upper"]).mean()) if n_conv else math.nan
    lower_ok = float((conv["iterations"] >= conv["lower_g1"]).mean()) if n_conv else math.nan
    numbers += [
        {
            "label": "upper bound ‖W_s − W*‖²/(2ηε) holds",
            "value": _share(upper_ok),
            "note": f"of {n_conv} converged runs",
        },
        {
            "label": "lower bound at γ = 1 holds",
            "value": _share(lower_ok),
            "note": f"of {n_conv} converged runs",
        },
    ]
    rows = []
    gammas = []
    for key, m in metrics.get("retrain", {}).items():
        arch, method = key.split("/", 1)
        if m.get("gamma_fit") is not None:
            gammas.append(float(m["gamma_fit"]))
        rows.append(
            {
                "architecture": arch,
                "method": method,
                "runs": str(m.get("runs", "–")),
                "capped": str(m.get("capped", "–")),
                "diverged": str(m.get("diverged", "–")),
                "mean iterations": _f(m.get("mean_iterations"), ".1f"),
                "fitted γ": _f(m.get("gamma_fit")),
                "within γ = 1 bounds": _share(m.get("coverage_gamma1")),
                "within [fitted lower, upper]": _share(m.get("coverage_fit")),
                "fitted γ (epochs)": _f(m.get("gamma_epochs_fit")),
            }
        )
    if gammas:
        numbers.append(
            {
                "label": "fitted γ per (architecture, method)",
                "value": f"{_f(min(gammas), '.3g')} … {_f(max(gammas), '.3g')}",
                "note": f"{len(gammas)} fits, one per architecture and method",
            }
        )
    n = len(runs)
    capped = int((runs["status"] == "capped").sum())
    diverged = int((runs["status"] == "diverged").sum())
    answer = (
        f"Of {n} retraining runs, {n_conv} converged, {capped} hit the iteration cap and "
        f"{diverged} diverged. The upper bound held for {_share(upper_ok)} of the converged runs "
        f"and the lower bound at γ = 1 for {_share(lower_ok)}"
        + (
            f"; the fitted γ ranges from {_f(min(gammas), '.3g')} to {_f(max(gammas), '.3g')}."
            if gammas
            else "."
        )
    )
    notes = []
    if capped:
        notes.append(
            f"{capped} capped run(s) count at the cap, a lower estimate of their true "
            "iteration count; coverage shares are over converged runs only."
        )
    if diverged:
        notes.append(f"{diverged} diverged run(s) are left out of means, coverage and the γ fit.")
    fig = res / "figures"
    return {
        "key": "retraining",
        "title": "Retraining time against the bounds (THEORY.md A)",
        "question": "How many iterations does retraining need after pruning, compared with the "
        "lower and upper bounds of John, Mishra & Johnson (2020)?",
        "answer": answer,
        "numbers": numbers,
        "rows": rows,
        "figures": _figure(fig, "iterations_vs_sparsity", "Retraining iterations against sparsity")
        + _figure(fig, "accuracy_vs_sparsity", "Accuracy against real sparsity")
        + _figure(fig, "dense_training", "Initial (dense) training"),
        "tables": _tables(
            res,
            [
                ("tables/runs.csv", "runs.csv: one row per retraining run, with its bounds"),
                ("tables/summary.csv", "summary.csv: per (architecture, method, amount)"),
                ("tables/dense.csv", "dense.csv: the dense networks"),
                ("metrics.json", "metrics.json: headline metrics"),
                ("summary.html", "summary.html: the study's detailed page (all tables)"),
                ("summary.md", "summary.md: the same in Markdown"),
            ],
        ),
        "notes": notes,
    }


# --------------------------------------------------------------------------- study B


def crossover(
    amounts: Sequence[float], d_a: Sequence[float], d_b: Sequence[float], tol: float = 1e-9
) -> float:
    """The first amount where method b's D drops below method a's (linear interpolation of
    D_a - D_b between the two amounts around the sign change); NaN when it never does after
    a was lower or equal. Differences within ``tol`` count as ties (every sweep peaks at 1)."""
    x = np.asarray(amounts, float)
    diff = np.asarray(d_a, float) - np.asarray(d_b, float)
    diff[np.abs(diff) <= tol] = 0.0
    for i in range(1, len(x)):
        if diff[i - 1] <= 0 < diff[i]:
            lo, hi = diff[i - 1], diff[i]
            return float(x[i - 1] + (x[i] - x[i - 1]) * (-lo) / (hi - lo))
    return math.nan


def netdev_section(res: Path) -> Section | None:
    """Section B: which method has the lowest normalised Net Deviation D, and where random and
    clustered pruning cross (the published finding: random lower at low amounts, clustered
    at high amounts)."""
    path = res / "tables" / "netdev.csv"
    if not path.is_file():
        return None
    nd = pd.read_csv(path)
    if "D" not in nd or nd["D"].isna().all():
        return None
    nd = nd.dropna(subset=["D"])
    numbers, rows, answers = [], [], []
    for arch, g in nd.groupby("arch", sort=False):
        methods = list(pd.unique(g["method"]))
        random = next((m for m in ("random_node", "random") if m in methods), None)
        if random and "clustered" in methods:
            a = g[g["method"] == random].set_index("amount")["D"]
            b = g[g["method"] == "clustered"].set_index("amount")["D"]
            common = sorted(set(a.index) & set(b.index))
            s_star = crossover(common, a[common], b[common])
            if math.isfinite(s_star):
                value, text = (
                    f"s ≈ {s_star:.2f}",
                    (f"{random} has the lower D below s ≈ {s_star:.2f}, clustered above"),
                )
            else:
                diff = a[common].to_numpy(float) - b[common].to_numpy(float)
                lower = "clustered" if (diff >= -1e-9).all() else None
                lower = lower or (random if (diff <= 1e-9).all() else None)
                value = "none"
                text = (
                    f"no crossover: {lower} has the lower (or equal) D at every amount"
                    if lower
                    else "no crossover from random to clustered (the curves cross the other way)"
                )
            numbers.append(
                {
                    "label": f"Net Deviation crossover {random} → clustered, {arch}",
                    "value": value,
                    "note": f"amounts {', '.join(f'{v:g}' for v in common)}",
                }
            )
            answers.append(f"{arch}: {text}.")
        for amount, s in g.groupby("amount", sort=True):
            s = s.sort_values(["D", "method"])
            rows.append(
                {
                    "architecture": arch,
                    "amount s": f"{amount:g}",
                    "method with the lowest D": str(s["method"].iloc[0]),
                    "lowest D": _f(s["D"].iloc[0], ".3f"),
                    "method with the highest D": str(s["method"].iloc[-1]),
                    "highest D": _f(s["D"].iloc[-1], ".3f"),
                }
            )
    answer = " ".join(answers) or (
        "Random and clustered node pruning are not both in this study, so there is no crossover "
        "to report; the table names the method with the lowest D at every amount."
    )
    fig = res / "figures"
    return {
        "key": "netdev",
        "title": "Node pruning and the Net Deviation (THEORY.md B)",
        "question": "Which pruning method moves the network's output least relative to the "
        "layer-wise propagation bound (lower normalised Net Deviation D), and does random "
        "pruning win at low amounts and clustered pruning at high amounts, as published?",
        "answer": answer,
        "numbers": numbers,
        "rows": rows,
        "figures": _figure(fig, "netdev_vs_amount", "Net Deviation against the pruning amount")
        + _figure(fig, "accuracy_vs_amount", "Accuracy against the pruning amount")
        + _figure(fig, "epochs_vs_amount", "Retraining epochs with the curvature-based bound"),
        "tables": _tables(
            res, [("tables/netdev.csv", "netdev.csv: Net Deviation and curvature per amount")]
        ),
        "notes": [],
    }


# --------------------------------------------------------------------------- study C


def pretrain_section(res: Path) -> Section | None:
    """Section C: T*(m) and the fit of its growth with m (THEORY.md predicts a + b ln m)."""
    pre = res / "pretrain"
    metrics_path, fits_path = pre / "metrics.json", pre / "tables" / "fits.csv"
    if not (metrics_path.is_file() and fits_path.is_file()):
        return None
    metrics = read_json(metrics_path)
    primary = metrics["primary"]
    fits = pd.read_csv(fits_path)
    f = fits[
        (fits["variant"] == primary["variant"])
        & (fits["stage"] == "pruned")
        & (fits["definition"] == primary["definition"])
    ].set_index("law")
    best = metrics.get("best_law")
    numbers = [
        {
            "label": f"T*(m = {m})",
            "value": _f(t, ".0f"),
            "note": "pre-training iterations, mean over seeds",
        }
        for m, t in sorted(metrics.get("t_star", {}).items(), key=lambda kv: int(kv[0]))
    ]
    if "log" in f.index:
        r = f.loc["log"]
        ci = ""
        if "b_ci_lo" in f:
            ci = f" [{_f(r['b_ci_lo'], '.3g')}, {_f(r['b_ci_hi'], '.3g')}]"
        numbers.append(
            {
                "label": "T* = a + b ln m: slope b",
                "value": f"{_f(r['b'], '.3g')}{ci}",
                "note": f"iterations per e-fold of m; R² {_f(r['r2'], '.2f')}, "
                f"ΔAIC {_f(r['delta_aic'], '.2f')}",
            }
        )
    rows = [
        {
            "law": law,
            "a": _f(r["a"], ".4g"),
            "b": _f(r["b"], ".4g"),
            "b CI": f"[{_f(r.get('b_ci_lo'), '.3g')}, {_f(r.get('b_ci_hi'), '.3g')}]",
            "R²": _f(r["r2"], ".3f"),
            "ΔAIC": _f(r["delta_aic"], ".2f"),
            "best": "yes" if law == best else "",
        }
        for law, r in f.iterrows()
    ]
    if best is not None:
        others = [r["delta_aic"] for law, r in f.iterrows() if law != best]
        gap = min(others) if others else math.nan
        numbers.append(
            {
                "label": "law with the lowest AIC",
                "value": str(best),
                "note": f"the next law is {_f(gap, '.2f')} AIC units behind"
                + ("; below 2, the laws are not distinguished" if gap < 2 else ""),
            }
        )
        answer = (
            f"With the primary definition ({primary['definition']}, greedy "
            f"{primary['variant'].replace('_', ' ')}), the best law by AIC is {best}"
            + (
                f", but the next law is only {_f(gap, '.2f')} AIC units behind: the data do not "
                "distinguish the laws."
                if gap < 2
                else f", {_f(gap, '.2f')} AIC units ahead of the next."
            )
        )
        if "log" in f.index and "b_ci_lo" in f:
            lo, hi = f.loc["log", "b_ci_lo"], f.loc["log", "b_ci_hi"]
            if lo <= 0 <= hi:
                answer += " The CI of the log-law slope contains 0: no measurable growth with m."
            elif lo > 0:
                answer += " The log-law slope is positive with its CI above 0: T* grows with m."
            else:
                answer += (
                    " The log-law slope is negative with its CI below 0: T* falls with m, "
                    "against the prediction."
                )
    else:
        answer = "No law could be fitted (too few dataset sizes)."
    fig = pre / "figures"
    return {
        "key": "pretrain",
        "title": "How much pre-training is enough (THEORY.md C)",
        "question": "After how many pre-training iterations T* does greedy forward selection "
        "find a subnetwork with good training loss, and does T* grow like log m?",
        "answer": answer,
        "numbers": numbers,
        "rows": rows,
        "figures": _figure(fig, "threshold_vs_m", "Threshold T*(m) with three fitted laws")
        + _figure(fig, "pruned_loss_vs_pretraining", "Pruned-subnetwork loss against pre-training")
        + _figure(fig, "accuracy_vs_pretraining", "Accuracy against pre-training iterations")
        + _figure(fig, "normalised_threshold_vs_m", "Normalised threshold T*·η·λ0 against m"),
        "tables": _tables(
            pre,
            [
                ("tables/thresholds.csv", "thresholds.csv: T* per run, stage and definition"),
                ("tables/threshold_summary.csv", "threshold_summary.csv: T*(m) with CIs"),
                ("tables/fits.csv", "fits.csv: the three laws with R², AIC and bootstrap CIs"),
                ("tables/curves.csv", "curves.csv: losses and accuracies at every checkpoint"),
                ("metrics.json", "metrics.json: headline metrics"),
                ("summary.md", "summary.md: the study's detailed summary"),
            ],
        ),
        "notes": [],
    }


# Study key -> section function, in page order. A new study appends one entry here.
def gates_section(res: Path) -> Section | None:
    """Section D: accuracy against the share of parameters and FLOPs kept, per variant."""
    gates = res / "gates"
    metrics_path = gates / "metrics.json"
    if not metrics_path.is_file():
        return None
    metrics = read_json(metrics_path)
    rows, numbers = [], []
    for net, variants in metrics.get("nets", {}).items():
        dense_acc = variants.get("dense", {}).get("0", {}).get("test_acc")
        if dense_acc is not None:
            numbers.append(
                {
                    "label": f"dense test accuracy, {net}",
                    "value": _f(dense_acc, ".4f"),
                    "note": f"mean over {variants['dense']['0'].get('seeds', 1)} seed(s)",
                }
            )
        for variant, by_lam in variants.items():
            for lam, m in by_lam.items():
                rows.append(
                    {
                        "network": net,
                        "variant": variant,
                        "λ": lam,
                        "test accuracy": _f(m.get("test_acc"), ".4f"),
                        "params kept": _share(m.get("params_frac")),
                        "FLOPs kept": _share(m.get("flops_frac")),
                        "last/first epoch time": _f(m.get("epoch_time_ratio"), ".2f"),
                    }
                )
    gated = [
        (net, v, lam, m)
        for net, variants in metrics.get("nets", {}).items()
        for v, by_lam in variants.items()
        if v in ("combined", "unit", "layer")
        for lam, m in by_lam.items()
        if m.get("flops_frac") is not None and m["flops_frac"] < 1
    ]
    if gated:
        net, v, lam, m = max(gated, key=lambda r: (r[3].get("test_acc") or 0, -r[3]["flops_frac"]))
        answer = (
            f"The most accurate pruned network is {net} with {v} gates at λ = {lam}: test "
            f"accuracy {_f(m.get('test_acc'), '.4f')} with {_share(m['flops_frac'])} of the "
            f"FLOPs and {_share(m.get('params_frac'))} of the parameters."
        )
        numbers.append(
            {
                "label": "best pruned network",
                "value": f"{net}, {v}, λ={lam}",
                "note": f"{_share(m['flops_frac'])} of the FLOPs kept",
            }
        )
    else:
        answer = "No gated run removed any structure at the configured λ."
    fig = gates / "figures"
    return {
        "key": "gates",
        "title": "Structure discovery during training (THEORY.md D)",
        "question": "How much accuracy does training with unit and layer gates trade for "
        "fewer FLOPs and parameters, against unit-only, layer-only and prune-then-retrain?",
        "answer": answer,
        "numbers": numbers,
        "rows": rows,
        "figures": _figure(fig, "accuracy_vs_flops", "Accuracy against FLOPs kept")
        + _figure(fig, "accuracy_vs_params", "Accuracy against parameters kept")
        + _figure(fig, "theta_trajectories", "Gate trajectories")
        + _figure(fig, "epoch_time", "Wall time per epoch"),
        "tables": _tables(
            res,
            [
                ("gates/tables/runs.csv", "runs.csv: one row per run"),
                ("gates/tables/epochs.csv", "epochs.csv: per-epoch time and accuracy"),
                ("gates/metrics.json", "metrics.json: means per network, variant and λ"),
            ],
        ),
        "notes": [],
    }


STUDIES: dict[str, Callable[[Path], Section | None]] = {
    "retraining": retraining_section,
    "netdev": netdev_section,
    "pretrain": pretrain_section,
    "gates": gates_section,
}

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; }
.headline { background: #f6f8fa; border: 1px solid #dde; border-radius: 6px; padding: 0.5em 1.2em; }
.answer { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #eef0f3; }
td:first-child, th:first-child { text-align: left; }
table.numbers td:nth-child(2) { font-weight: bold; font-variant-numeric: tabular-nums; }
table.numbers td:nth-child(3) { color: #555; text-align: left; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.95em; color: #333; }
.notes li { margin-bottom: 0.3em; }
footer { margin-top: 3em; font-size: 0.85em; color: #666; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p>Results folder <code>{{ folder }}</code>. Studies with results:
{% for sec in sections %}<a href="#{{ sec.key }}">{{ sec.title }}</a>
{%- if not loop.last %}, {% endif %}{% else %}none yet: run the workflow first{% endfor %}.</p>
{% for sec in sections %}
<section class="headline" id="headline-{{ sec.key }}">
<h3>{{ sec.title }}</h3>
<p class="answer">{{ sec.answer }}</p>
<table class="numbers">
{% for n in sec.numbers %}<tr><td>{{ n.label }}</td><td>{{ n.value }}</td><td>{{ n.note }}</td></tr>
{% endfor %}</table>
{% include "section/" ~ sec.key ~ ".html" ignore missing %}
<p><a href="#{{ sec.key }}">Figures and tables of this study ↓</a></p>
</section>
{% endfor %}
{% for sec in sections %}
<section id="{{ sec.key }}">
<h2>{{ sec.title }}</h2>
<p><em>{{ sec.question }}</em></p>
{% if sec.notes %}<ul class="notes">
{% for n in sec.notes %}<li>{{ n }}</li>
{% endfor %}</ul>{% endif %}
{% for f in sec.figures %}
<figure id="{{ sec.key }}-fig{{ loop.index }}">
<img alt="{{ f.title }}" src="data:{{ f.mime }};base64,{{ f.b64 }}">
<figcaption><strong>{{ f.title }}.</strong> File <a href="{{ f.href }}">{{ f.href }}</a>; the
Snakemake report's caption of this figure says how to read it.</figcaption>
</figure>
{% endfor %}
{% if sec.tables %}<h3>Tidy tables</h3>
<ul>
{% for t in sec.tables %}<li><a href="{{ t.href }}">{{ t.label }}</a></li>
{% endfor %}</ul>{% endif %}
</section>
{% endfor %}
<footer>Generated by the workflow's <code>summary</code> rule from the tables and metrics above;
table links are relative to this file.</footer>
</body>
</html>
"""

ROWS_BLOCK = """{% if sec.rows %}<table class="rows">
<tr>{% for c in sec.rows[0] %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in sec.rows %}<tr>{% for v in r.values() %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table>{% endif %}
"""

# Study key -> the block rendered in its section (``sec`` is the section dict).
SECTION_BLOCKS = {
    "retraining": "<h3>Per architecture and method</h3>\n" + ROWS_BLOCK,
    "netdev": "<h3>Lowest and highest normalised Net Deviation D per amount</h3>\n" + ROWS_BLOCK,
    "pretrain": "<h3>Fits of T*(m), primary definition, before fine-tuning</h3>\n" + ROWS_BLOCK,
    "gates": "<h3>Accuracy, parameters and FLOPs per variant and λ</h3>\n" + ROWS_BLOCK,
}


def collect(
    res: Path, studies: Mapping[str, Callable[[Path], Section | None]] = STUDIES
) -> list[Section]:
    """The sections of every study whose results exist under ``res``, in ``studies`` order."""
    return [sec for fn in studies.values() if (sec := fn(Path(res))) is not None]


def render_page(title: str, sections: Sequence[Section], page_path: Path) -> str:
    """The self-contained HTML page; figures embedded, table links relative to ``page_path``."""
    env = Environment(
        loader=DictLoader(
            {"page.html": PAGE, **{f"section/{k}.html": v for k, v in SECTION_BLOCKS.items()}}
        ),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    base = Path(page_path).parent

    def rel(p: Path) -> str:
        return Path(os.path.relpath(p, base)).as_posix()

    view = []
    for sec in sections:
        figs = []
        for f in sec["figures"]:
            data = Path(f["path"]).read_bytes()
            figs.append(
                {
                    "title": f["title"],
                    "mime": MIME[Path(f["path"]).suffix.lstrip(".")],
                    "b64": base64.b64encode(data).decode("ascii"),
                    "href": rel(f["path"]),
                }
            )
        tables = [{"label": t["label"], "href": rel(t["path"])} for t in sec["tables"]]
        view.append({**sec, "figures": figs, "tables": tables})
    folder = base.as_posix()
    return env.get_template("page.html").render(title=title, sections=view, folder=folder)


def _rst_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|")


def headline_rst(sections: Sequence[Section]) -> str:
    """The headline of every section as reStructuredText (included by workflow.rst)."""
    if not sections:
        return "No study has results yet.\n"
    out = []
    for sec in sections:
        out += [f"**{_rst_escape(sec['title'])}**", "", _rst_escape(sec["answer"]), ""]
        for n in sec["numbers"]:
            note = f" ({_rst_escape(n['note'])})" if n["note"] else ""
            out.append(f"- {_rst_escape(n['label'])}: **{_rst_escape(n['value'])}**{note}")
        out.append("")
        if sec.get("rows"):
            out += [".. list-table::", "   :header-rows: 1", ""]
            for i, row in enumerate([dict.fromkeys(sec["rows"][0]), *sec["rows"]]):
                cells = list(row) if i == 0 else list(row.values())
                out.append("   * - " + _rst_escape(str(cells[0]) or "-"))
                out += [f"     - {_rst_escape(str(c)) or '–'}" for c in cells[1:]]
            out.append("")
    return "\n".join(out)


def headline_json(sections: Sequence[Section]) -> dict[str, Any]:
    """Question, answer and headline numbers of each section, keyed by study."""
    return {
        sec["key"]: {
            "title": sec["title"],
            "question": sec["question"],
            "answer": sec["answer"],
            "numbers": {n["label"]: n["value"] for n in sec["numbers"]},
        }
        for sec in sections
    }


def run_summary(
    params: Mapping[str, Any], res: Path, out_html: Path, out_rst: Path, out_json: Path
) -> list[Section]:
    """The `summary` job: the page, its RST headline and JSON for the study folder ``res``."""
    study = str(params.get("study", Path(res).name))
    sections = collect(Path(res))
    title = f"prunetime study summary: {study}"
    write_text(Path(out_html), render_page(title, sections, Path(out_html)))
    write_text(Path(out_rst), headline_rst(sections))
    write_text(Path(out_json), json.dumps(headline_json(sections), indent=2, ensure_ascii=False))
    return sections
