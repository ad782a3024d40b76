"""The report step on small but realistic tables: real bounds, real figures, real HTML."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from prunetime import style
from prunetime.analysis import add_bounds, add_netdev, headline_metrics, summarize
from prunetime.report import FIGURES, TABLES, fmt_gamma, netdev_findings, run_report

ROOT = Path(__file__).resolve().parents[1]
DENSE_ACC = {"mlp": 0.9537, "cnn": 0.8123}
T_INIT = {"mlp": 300, "cnn": 400}
MAX_ITERS = {"mlp": 300, "cnn": 150}
EPS = {"mlp": 0.01, "cnn": 1.0}
NDEV = {"random": 0.5, "magnitude": 1.0, "clustered": 2.0}  # |dev| = amount ** NDEV[method]


def synthetic_runs() -> pd.DataFrame:
    """Two archs x two methods x three amounts x four trials, with the awkward cases in it.

    mlp/magnitude/0.3 is already within eps after pruning (0 iterations: left out of the gamma fit),
    mlp/random/0.9 hits the cap twice, cnn/random/0.9 diverges once.
    """
    rng = np.random.default_rng(1)
    rows = []
    for arch in ("mlp", "cnn"):
        for method in ("random", "magnitude", "clustered"):
            level = "node" if method == "clustered" else "connection"
            for amount in (0.3, 0.6, 0.9):
                for trial in range(4):
                    base = 400 * amount**2 if method == "random" else 150 * amount**3
                    it = int(max(1, base * (1 + 0.2 * rng.standard_normal())))
                    status = "converged"
                    final = 0.2 + 0.005 * rng.standard_normal()
                    test_acc = DENSE_ACC[arch] - 0.05 * amount * rng.uniform(0.5, 1.5)
                    if arch == "mlp" and method == "magnitude" and amount == 0.3:
                        it = 0
                    if arch == "mlp" and method == "random" and amount == 0.9 and trial < 2:
                        it, status = MAX_ITERS[arch], "capped"
                    if arch == "mlp" and method == "random" and amount == 0.9 and trial == 3:
                        it = MAX_ITERS[arch] - 10
                    if arch == "cnn" and method == "random" and amount == 0.9 and trial == 2:
                        it, status, final, test_acc = 17, "diverged", float("nan"), 0.098
                    rows.append(
                        {
                            "arch": arch,
                            "seed": 0,
                            "method": method,
                            "amount": amount,
                            "trial": trial,
                            "sparsity": amount + 1e-4 * rng.standard_normal(),
                            "g_s": 0.5 * amount * (1 + 0.3 * rng.uniform()),
                            "d2": 2000.0 * amount * (1 + 0.05 * rng.uniform()),
                            "loss_pruned": 0.2 + 3 * amount**2,
                            "acc_pruned": DENSE_ACC[arch] * (1 - amount**2 * rng.uniform(0.5, 1)),
                            "iterations": it,
                            "epochs": it * 128 / 55000,
                            "status": status,
                            "final_eval_loss": final,
                            "val_acc": test_acc - 0.002,
                            "test_acc": test_acc,
                            "test_loss": 0.2,
                            "eps": EPS[arch],
                            "eta": 0.01,
                            "max_iters": MAX_ITERS[arch],
                            "masked": True,
                            "wall_s": 0.01 * it,
                            "t_init": T_INIT[arch],
                            "g_init": 2.0,
                            "loss_star": 0.2,
                            "dense_test_acc": DENSE_ACC[arch],
                            "level": level,
                            "units_removed": amount if level == "node" else 0.0,
                            "n_params": 1000,
                            "n_params_remaining": round(1000 * (1 - amount)),
                            "epochs_init": T_INIT[arch] * 128 / 55000,
                            "mu_estimator": "pl" if level == "node" else "secant",
                            "mu1": 0.8,
                            "mu2": 0.5 + amount * rng.uniform(0.5, 1.5),
                            "ndev_lhs": 0.1 * amount,
                            "ndev_rhs": 0.1 * amount + amount ** NDEV[method],
                            "ndev_dev": -(amount ** NDEV[method]),
                        }
                    )
    return add_netdev(add_bounds(pd.DataFrame(rows), mu_ratio=1.0, gamma_quantile=0.0))


def dense_rows() -> list[dict]:
    return [
        {
            "arch": a,
            "seed": 0,
            "t_init": T_INIT[a],
            "test_acc": acc,
            "val_acc": acc - 0.003,
            "eval_acc": acc - 0.01,
            "eval_size": 500,
            "loss_star": 0.2,
            "g_init": 2.0,
        }
        for a, acc in DENSE_ACC.items()
    ]


def make_inputs(tmp_path: Path) -> dict:
    """The bounds-job outputs of :func:`synthetic_runs` as files, the report's inputs."""
    runs = synthetic_runs()
    tables = tmp_path / "in"
    tables.mkdir()
    paths = {k: tables / f"{k}.csv" for k in ("runs", "summary", "dense")}
    runs.to_csv(paths["runs"], index=False, float_format="%.9g")
    summarize(runs, 0.95).to_csv(paths["summary"], index=False, float_format="%.9g")
    dense = dense_rows()
    pd.DataFrame(dense).to_csv(paths["dense"], index=False)
    paths["metrics"] = tables / "metrics.json"
    paths["metrics"].write_text(json.dumps(headline_metrics(runs, dense)))
    curves = []
    for arch in DENSE_ACC:
        steps = np.arange(0, T_INIT[arch] + 1, 20)
        c = pd.DataFrame(
            {
                "arch": arch,
                "seed": 0,
                "step": steps,
                "train_loss": np.r_[np.nan, 2.3 * np.exp(-steps[1:] / 60) + 0.2],
                "eval_loss": 2.3 * np.exp(-steps / 60) + 0.2,
                "eval_acc": DENSE_ACC[arch] * (1 - np.exp(-steps / 40)) + 0.1 * np.exp(-steps / 40),
            }
        )
        p = tables / f"curve_{arch}.csv"
        c.to_csv(p, index=False)
        curves.append(p)
    return {**paths, "curves": curves, "runs_df": runs, "out": tmp_path / "out"}


@pytest.fixture()
def inputs(tmp_path: Path) -> dict:
    return make_inputs(tmp_path)


def report(
    inputs: dict, fmt: str = "png", out: Path | None = None, **kwargs: Any
) -> dict[str, Path]:
    """run_report on the synthetic tables, writing under ``out`` (default inputs["out"])."""
    out = inputs["out"] if out is None else out
    return run_report(
        {"report": {"format": fmt, "dpi": 150}, "study": "synthetic"},
        inputs["runs"],
        inputs["summary"],
        inputs["dense"],
        inputs["metrics"],
        inputs["curves"],
        out / "figures",
        out / "summary.md",
        out / "summary.html",
        **kwargs,
    )


class Tables(HTMLParser):
    """Rows of every <table> as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_tables(html: str) -> list[pd.DataFrame]:
    p = Tables()
    p.feed(html)
    return [pd.DataFrame(t[1:], columns=t[0]) for t in p.tables]


def test_png_report_figures_and_html(inputs: dict) -> None:
    written = report(inputs)
    out = inputs["out"]
    for key, stem in FIGURES.items():
        path = out / "figures" / f"{stem}.png"
        assert written[key] == path
        assert path.stat().st_size > 20_000
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert im.size[0] > 500 and im.size[1] > 250
    assert not list(out.rglob("*.tmp")), "atomic writes left temporary files"

    html = (out / "summary.html").read_text()
    embedded = html.count('src="data:image/png;base64,')
    assert embedded == len(FIGURES) == 6
    for stem in FIGURES.values():
        data = (out / "figures" / f"{stem}.png").read_bytes()
        assert base64.b64encode(data).decode() in html, f"{stem} not embedded verbatim"
    assert 'src="http' not in html and "<link" not in html and "<script" not in html

    dense_t, retrain_t, setup_t, summary_t, netdev_t, curv_t = html_tables(html)
    assert set(dense_t["test accuracy"]) == {"0.9537", "0.8123"}
    runs = inputs["runs_df"]
    for (arch, method), g in runs.groupby(["arch", "method"]):
        row = retrain_t[(retrain_t["architecture"] == arch) & (retrain_t["method"] == method)]
        assert len(row) == 1
        row = row.iloc[0]
        assert row["fitted γ"] == fmt_gamma(g["gamma_fit"].dropna().iloc[0])
        assert int(row["diverged"]) == int((g["status"] == "diverged").sum())
        assert int(row["capped"]) == int((g["status"] == "capped").sum())
        ok = g[g["status"] != "diverged"]
        assert row["mean iterations"] == f"{ok['iterations'].mean():.1f}"
        conv = g[g["status"] == "converged"]
        assert row["within γ = 1 bounds"] == f"{100 * conv['within_g1'].mean():.1f} %"
    cnn_random = retrain_t[(retrain_t["architecture"] == "cnn") & (retrain_t["method"] == "random")]
    assert cnn_random.iloc[0]["diverged"] == "1"
    assert "1 diverged run(s) (cnn/random/0.9)" in html
    # the headline comes before the figures, and the fitted gamma of a real group is non-trivial
    assert html.index("Headline") < html.index("<figure")
    assert runs.loc[runs["arch"] == "cnn", "gamma_fit"].dropna().gt(0).all()

    assert set(setup_t["eval subset size"]) == {"500"}
    assert set(setup_t["trials per amount"]) == {"4"}
    assert len(summary_t) == 18
    # Net Deviation table: D per sweep peaks at 1; the raw terms are those of the runs
    assert len(netdev_t) == 18 and len(curv_t) == 18
    for (arch, method), g in netdev_t.groupby(["arch", "method"]):
        assert max(float(v) for v in g["D"]) == 1.0, (arch, method)
    row = netdev_t[(netdev_t["arch"] == "mlp") & (netdev_t["method"] == "clustered")]
    row = row[row["amount"] == "0.3"].iloc[0]
    assert row["level"] == "node" and row["params left"] == "700 / 1000"
    assert row["‖dY(L)‖"] == fmt_gamma(0.1 * 0.3) and row["D"] == f"{(0.3 / 0.9) ** 2:.3f}"
    # the epoch bound of the curvature table is the runs' gamma-1 bound averaged
    cr = curv_t[(curv_t["arch"] == "cnn") & (curv_t["method"] == "magnitude")]
    g = runs[(runs["arch"] == "cnn") & (runs["method"] == "magnitude") & (runs["amount"] == 0.6)]
    assert cr[cr["amount"] == "0.6"].iloc[0]["lower (γ=1)"] == fmt_gamma(g["lower_ep_g1"].mean())
    assert set(curv_t["μ estimator"]) == {"pl", "secant"}
    assert "lowest D" in html
    # the diverged run is not averaged in: the mean matches the three finite runs
    s = summary_t[(summary_t["arch"] == "cnn") & (summary_t["method"] == "random")]
    finite = runs[(runs["arch"] == "cnn") & (runs["method"] == "random") & (runs["amount"] == 0.9)]
    finite = finite[finite["status"] != "diverged"]
    assert (
        s[s["amount"] == "0.9"].iloc[0]["mean iterations"] == f"{finite['iterations'].mean():.1f}"
    )


def test_netdev_findings_name_the_lowest_d_at_both_ends(inputs: dict) -> None:
    summary = summarize(inputs["runs_df"], 0.95)
    lines = netdev_findings(summary)
    assert len(lines) == 2  # one per architecture
    mlp = next(line for line in lines if line.startswith("mlp"))
    # D = (s / 0.9) ** p: below 0.9 the steepest curve (clustered, p = 2) is lowest; at 0.9
    # every sweep peaks at 1
    assert mlp == (
        "mlp, lowest D by amount: 0.3: clustered (0.111); 0.6: clustered (0.444); "
        "0.9: tie of clustered = magnitude = random (1.000)."
    )
    assert netdev_findings(summary.drop(columns=["D"])) == []


def test_caveats_name_censoring_and_zero_iteration_runs(inputs: dict) -> None:
    report(inputs)
    html = (inputs["out"] / "summary.html").read_text()
    md = (inputs["out"] / "summary.md").read_text()
    runs = inputs["runs_df"]
    mag = runs[(runs["arch"] == "mlp") & (runs["method"] == "magnitude")]
    # the 0-iteration runs do not pin the fit to 0 and fall below the fitted lower bound
    assert mag["gamma_fit"].gt(0).all()
    assert not mag.loc[mag["iterations"] == 0, "within_fit"].any()
    for doc in (html, md):
        assert "mlp/magnitude: 4 run(s) were already within ε right after pruning" in doc
        assert "2 capped run(s) (mlp/random/0.9)" in doc
    assert "| mlp" in md and "0.9537" in md


def test_markdown_links_existing_figures(inputs: dict) -> None:
    report(inputs)
    md_path = inputs["out"] / "summary.md"
    md = md_path.read_text()
    assert md.index("## Headline") < md.index("## Summary per pruning amount") < md.index("![")
    for stem in FIGURES.values():
        link = f"(figures/{stem}.png)"
        assert link in md
        assert (md_path.parent / f"figures/{stem}.png").is_file()


def test_svg_report(inputs: dict) -> None:
    report(inputs, "svg")
    out = inputs["out"]
    html = (out / "summary.html").read_text()
    assert html.count('src="data:image/svg+xml;base64,') == len(FIGURES)
    for stem in FIGURES.values():
        path = out / "figures" / f"{stem}.svg"
        assert path.stat().st_size > 20_000
        root = ElementTree.parse(path).getroot()
        assert root.tag.endswith("svg")
        assert base64.b64encode(path.read_bytes()).decode() in html
    assert not list((out / "figures").glob("*.png"))


def test_unknown_format_is_refused(inputs: dict) -> None:
    with pytest.raises(ValueError, match="report.format"):
        report(inputs, "pdf")
    assert not inputs["out"].exists()


def test_dpi_below_legible_is_refused(inputs: dict) -> None:
    out = inputs["out"]
    args = (inputs["runs"], inputs["summary"], inputs["dense"], inputs["metrics"])
    with pytest.raises(ValueError, match="report.dpi"):
        run_report(
            {"report": {"format": "png", "dpi": 100}, "study": "synthetic"},
            *args,
            inputs["curves"],
            out / "figures",
            out / "summary.md",
            out / "summary.html",
        )
    assert not out.exists()


def test_display_tables_for_the_snakemake_report(inputs: dict) -> None:
    out = inputs["out"]
    written = report(inputs, "svg", table_dir=out / "display")
    assert sorted(p.name for p in (out / "display").iterdir()) == sorted(
        f"{stem}.html" for stem, _ in TABLES.values()
    )
    for key, (stem, title) in TABLES.items():
        assert written[f"table_{key}"] == out / "display" / f"{stem}.html"
        page = written[f"table_{key}"].read_text(encoding="utf-8")
        assert f"<h2>{escape(title)}</h2>" in page
        tables = html_tables(page)
        assert len(tables) == 1 and len(tables[0]) > 0, key
    per_method = html_tables((out / "display" / "retraining_by_method.html").read_text())[0]
    assert len(per_method) == 6  # 2 architectures x 3 methods


def test_missing_column_is_named(inputs: dict) -> None:
    pd.read_csv(inputs["runs"]).drop(columns=["status"]).to_csv(inputs["runs"], index=False)
    with pytest.raises(ValueError, match="status"):
        report(inputs)


def test_unknown_status_is_refused(inputs: dict) -> None:
    runs = pd.read_csv(inputs["runs"])
    runs.loc[0, "status"] = "timeout"
    runs.to_csv(inputs["runs"], index=False)
    with pytest.raises(ValueError, match="timeout"):
        report(inputs)


def test_script_as_the_rule_calls_it(inputs: dict) -> None:
    out = inputs["out"]
    params = json.dumps({"report": {"format": "png", "dpi": 150}, "study": "synthetic"})
    cmd = [
        sys.executable, str(ROOT / "scripts" / "report.py"), "--params", params,
        "--runs", str(inputs["runs"]), "--summary", str(inputs["summary"]),
        "--dense", str(inputs["dense"]), "--metrics", str(inputs["metrics"]),
        "--curves", *map(str, inputs["curves"]), "--out-dir", str(out / "figures"),
        "--out-md", str(out / "summary.md"), "--out-html", str(out / "summary.html"),
        "--threads", "2",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    for stem in FIGURES.values():
        assert (out / "figures" / f"{stem}.png").stat().st_size > 10_000
    assert (out / "summary.html").stat().st_size > 30_000
    assert "diverged" in (out / "summary.md").read_text()


def test_figures_drawn_in_parallel_equal_those_drawn_one_by_one(inputs: dict) -> None:
    """The rule gives the report two cores: the figures are drawn in forked processes, and
    every file is byte for byte the one a single process writes."""
    alone = report(inputs)
    out = inputs["out"].parent / "parallel"
    together = report(inputs, out=out, workers=2)
    for key in FIGURES:
        assert together[key].read_bytes() == alone[key].read_bytes(), key
    assert (out / "summary.html").read_bytes() == alone["html"].read_bytes()


def test_render_all_draws_in_worker_processes(tmp_path: Path) -> None:
    def plot(i: int):
        def make():
            (tmp_path / f"{i}.pid").write_text(str(os.getpid()))
            fig = style.new_figure(3, 2)
            fig.add_subplot().plot([0, 1, 2], [0, i, 2 * i])
            return fig

        return make

    plots = {f"fig{i}": plot(i) for i in range(3)}
    together = style.render_all(plots, "png", 150, workers=2)
    pids = {int(p.read_text()) for p in tmp_path.glob("*.pid")}
    assert len(list(tmp_path.glob("*.pid"))) == 3 and os.getpid() not in pids
    alone = style.render_all(plots, "png", 150, workers=1)
    assert list(together) == list(plots) and together == alone
    assert len(set(alone.values())) == 3
