"""The study summary page on a synthetic results folder: sections appear only with results,
the headline numbers are the metrics', figures are embedded and decodable, links resolve."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
from html import unescape
from pathlib import Path

import pytest
from PIL import Image
from test_report import make_inputs, report

from prunetime import summary
from prunetime.io import read_json


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder laid out as the workflow lays it out, from the synthetic report."""
    inputs = make_inputs(tmp_path_factory.mktemp("summary"))
    res = inputs["out"]
    report(inputs)
    (res / "tables").mkdir(exist_ok=True)
    shutil.copy(inputs["runs"], res / "tables" / "runs.csv")
    shutil.copy(inputs["summary"], res / "tables" / "summary.csv")
    shutil.copy(inputs["summary"], res / "tables" / "netdev.csv")
    shutil.copy(inputs["metrics"], res / "metrics.json")
    return res


def page_images(html: str) -> list[Image.Image]:
    uris = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', html)
    return [Image.open(io.BytesIO(base64.b64decode(u))) for u in uris]


def test_page_has_the_sections_with_results_and_their_numbers(study: Path) -> None:
    out = study / "index.html"
    sections = summary.run_summary(
        {"study": "synthetic"}, study, out, study / "headline.rst", study / "headline.json"
    )
    assert [s["key"] for s in sections] == ["retraining", "netdev"]  # no pretrain results
    html = out.read_text(encoding="utf-8")
    metrics = read_json(study / "metrics.json")
    # dense accuracies and fitted gamma come from metrics.json
    assert "dense test accuracy, mlp" in html and "0.9537" in html
    for key, m in metrics["retrain"].items():
        arch, method = key.split("/")
        assert f"<td>{arch}</td><td>{method}</td>" in html
        assert f"<td>{summary._f(m['gamma_fit'])}</td>" in html
    assert 'id="pretrain"' not in html
    # six figures, embedded and decodable, and relative links that resolve from the page
    images = page_images(html)
    assert len(images) == 6 and all(im.size[0] > 100 and im.size[1] > 100 for im in images)
    hrefs = [unescape(h) for h in re.findall(r'<a href="([^"#]+)"', html)]
    assert "tables/runs.csv" in hrefs and "tables/netdev.csv" in hrefs
    assert all((study / h).is_file() for h in hrefs), hrefs
    # JSON and RST carry the same headline numbers
    head = json.loads((study / "headline.json").read_text(encoding="utf-8"))
    assert head["retraining"]["numbers"]["dense test accuracy, cnn"] == "0.8123"
    rst = (study / "headline.rst").read_text(encoding="utf-8")
    assert "dense test accuracy, cnn: **0.8123**" in rst


def test_coverage_numbers_are_the_share_of_converged_runs_inside_the_bounds(study: Path) -> None:
    import pandas as pd

    runs = pd.read_csv(study / "tables" / "runs.csv")
    conv = runs[runs["status"] == "converged"]
    sec = summary.retraining_section(study)
    assert sec is not None
    numbers = {n["label"]: n["value"] for n in sec["numbers"]}
    upper = (conv["iterations"] <= conv["upper"]).mean()
    lower = (conv["iterations"] >= conv["lower_g1"]).mean()
    assert numbers["upper bound ‖W_s − W*‖²/(2ηε) holds"] == summary._share(upper)
    assert numbers["lower bound at γ = 1 holds"] == summary._share(lower)
    assert f"{len(runs)} retraining runs, {len(conv)} converged" in sec["answer"]


def test_netdev_crossover_and_lowest_d(study: Path) -> None:
    # |dev| = s ** 0.5 for random and s ** 2 for clustered: clustered is lower at every amount
    # below the top one, where both sweeps peak at D = 1, so the curves never cross.
    sec = summary.netdev_section(study)
    assert sec is not None
    assert "no crossover: clustered has the lower (or equal) D" in sec["answer"]
    lowest = {
        (r["architecture"], r["amount s"]): r["method with the lowest D"] for r in sec["rows"]
    }
    assert lowest[("mlp", "0.3")] == "clustered" and lowest[("cnn", "0.6")] == "clustered"


def test_crossover_is_interpolated_where_clustered_drops_below_random() -> None:
    # D_random - D_clustered = -0.2, +0.1, 0: the sign changes two thirds of the way to 0.6
    assert summary.crossover([0.3, 0.6, 0.9], [0.1, 0.5, 1.0], [0.3, 0.4, 1.0]) == pytest.approx(
        0.5
    )
    assert math.isnan(summary.crossover([0.3, 0.6], [0.5, 0.9], [0.6, 1.0]))  # never below
    assert math.isnan(summary.crossover([0.3, 0.6], [0.9, 0.5], [0.6, 1.0]))  # the other way


def test_empty_folder_renders_a_page_without_sections(tmp_path: Path) -> None:
    out = tmp_path / "index.html"
    assert (
        summary.run_summary({"study": "x"}, tmp_path, out, tmp_path / "h.rst", tmp_path / "h.json")
        == []
    )
    assert "none yet: run the workflow first" in out.read_text(encoding="utf-8")
    assert (tmp_path / "h.rst").read_text(encoding="utf-8").startswith("No study has results")


def test_a_new_study_is_one_function_and_one_block(study: Path, monkeypatch) -> None:
    def gates_section(res: Path) -> dict | None:
        if not (res / "gates.json").is_file():
            return None
        value = read_json(res / "gates.json")["units_kept"]
        return {
            "key": "gates",
            "title": "Structure discovery",
            "question": "How small can training make the network?",
            "answer": f"It kept {value} units.",
            "numbers": [{"label": "units kept", "value": str(value), "note": ""}],
            "rows": [{"layer": "fc1", "kept": str(value)}],
            "figures": [],
            "tables": [],
            "notes": [],
        }

    studies = {**summary.STUDIES, "gates": gates_section}
    assert [s["key"] for s in summary.collect(study, studies)] == ["retraining", "netdev"]
    (study / "gates.json").write_text(json.dumps({"units_kept": 42}))
    monkeypatch.setitem(
        summary.SECTION_BLOCKS, "gates", "<p class=gates>{{ sec.rows[0].kept }}</p>"
    )
    sections = summary.collect(study, studies)
    assert [s["key"] for s in sections] == ["retraining", "netdev", "gates"]
    html = summary.render_page("t", sections, study / "index.html")
    (study / "gates.json").unlink()
    assert '<section id="gates">' in html and "<p class=gates>42</p>" in html
    assert "<td>units kept</td><td>42</td>" in html
