"""Both HTML documents of a finished quick run in headless Chromium.

For the quick preset (retraining bounds and Net Deviation) and the pre-training quick preset,
`snakemake --report report.html` builds Snakemake's report and the `summary` rule has
written the study summary page. Each document is loaded in Debian's headless Chromium with a
probe script that records JavaScript errors and decodes every figure in the browser (the
summary page's <img> elements, the report's embedded result files); the tests check that the
page rendered without errors and that every figure is present with a non-zero size. One
screenshot of each document is kept under results/report-screenshots/.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from workflow_helpers import REPO, snakemake

from prunetime.pretrain_report import FIGURES as PRE_FIGURES
from prunetime.pretrain_report import TABLES as PRE_TABLES
from prunetime.report import FIGURES
from prunetime.report import TABLES as BOUNDS_TABLES

SCREENSHOTS = REPO / "results" / "report-screenshots"

# First in <head>: collect JavaScript errors and console.error calls.
PROBE_HEAD = """<script>
window.__probe = {errors: [], console: []};
window.addEventListener("error", e => window.__probe.errors.push(String(e.message)));
window.addEventListener("unhandledrejection", e => window.__probe.errors.push(String(e.reason)));
const __err = console.error;
console.error = (...a) => { window.__probe.console.push(a.map(String).join(" ")); __err(...a); };
</script>"""
# Last in <body>: put every image result of a Snakemake report into the document, so the load
# event waits for them; after load, record every image's decoded size and the rendered text
# into a <pre id="probe"> that --dump-dom returns.
PROBE_TAIL = """<div id="probe-results" style="display:none"></div>
<script>
window.__probe.results = {};
if (typeof results !== "undefined") {
  for (const [path, r] of Object.entries(results)) {
    window.__probe.results[path] = {mime: r.mime_type, bytes: r.data_uri.length,
                                    caption: r.caption.length};
    if (r.mime_type.startsWith("image/")) {
      const img = document.createElement("img");
      img.src = r.data_uri;
      img.dataset.path = path;
      document.getElementById("probe-results").appendChild(img);
    }
  }
}
window.addEventListener("load", () => setTimeout(() => {
  const p = window.__probe;
  p.page_images = [];
  for (const img of document.images) {
    const size = {alt: img.alt, w: img.complete ? img.naturalWidth : 0,
                  h: img.complete ? img.naturalHeight : 0};
    if (img.dataset.path) Object.assign(p.results[img.dataset.path], size);
    else p.page_images.push(size);
  }
  p.text = document.body.innerText;
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(p);
  document.body.appendChild(pre);
}, 200));
</script>"""


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail(
            "headless Chromium is needed to render the reports: apt-get install chromium "
            "(.ci/run installs it)",
            pytrace=False,
        )
    return exe


def run_chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",  # tests may run as root in a container
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--virtual-time-budget=30000",
        *args,
        page.resolve().as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def probe(page: Path, tmp: Path) -> dict:
    """Load ``page`` with the probe script first in its <head>; return what the probe saw."""
    html = page.read_text(encoding="utf-8")
    probed = tmp / f"probed-{page.name}"
    html = html.replace("<head>", "<head>\n" + PROBE_HEAD, 1)
    head, body_end, tail = html.rpartition("</body>")
    probed.write_text(head + PROBE_TAIL + body_end + tail, encoding="utf-8")
    dom = run_chromium(probed, tmp, "--dump-dom").stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not finish: the page did not load\n" + dom[-2000:]
    return json.loads(unescape(found[1]))


def screenshot(page: Path, tmp: Path, name: str, height: int = 2400) -> Image.Image:
    """Screenshot of ``page``; kept as results/report-screenshots/<name>.png."""
    shot = tmp / f"{name}.png"
    run_chromium(page, tmp, f"--screenshot={shot}", f"--window-size=1400,{height}")
    image = Image.open(io.BytesIO(shot.read_bytes()))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOTS / f"{name}.png")
    return image


def assert_not_blank(image: Image.Image) -> None:
    """A rendered page has text and figures: many distinct pixel values, not one colour."""
    grey = image.convert("L")
    assert grey.size[0] >= 1000 and ImageStat.Stat(grey).stddev[0] > 10
    assert len(grey.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50


def build_report(workdir: Path, configfile: str) -> Path:
    res = snakemake(workdir, "--report", "report.html", "--configfile", configfile, timeout=600)
    assert res.returncode == 0, res.stderr[-5000:]
    return workdir / "report.html"


def check_summary_page(page: Path, tmp: Path, n_figures: int, sections: list[str]) -> dict:
    seen = probe(page, tmp)
    assert seen["errors"] == [] and seen["console"] == []
    images = seen["page_images"]
    assert len(images) == n_figures
    assert all(i["w"] > 300 and i["h"] > 200 for i in images), images
    html = page.read_text(encoding="utf-8")
    for key in sections:
        assert f'<section id="{key}">' in html
    # every table link resolves from the page's folder
    for href in re.findall(r'<a href="([^"#]+)"', html):
        assert (page.parent / unescape(href)).is_file(), href
    return seen


def check_snakemake_report(page: Path, tmp: Path, figures: list[str], tables: list[str]) -> dict:
    seen = probe(page, tmp)
    assert seen["errors"] == [] and seen["console"] == []
    by_name = {Path(p).name: r for p, r in seen["results"].items()}
    for name in figures:
        r = by_name[name]  # every figure is a report item ...
        assert r["mime"].startswith("image/") and r["w"] > 300 and r["h"] > 200, name
        assert r["caption"] > 200, name  # ... with a rendered caption
    for name in tables:
        assert by_name[name]["mime"] == "text/html" and by_name[name]["bytes"] > 500, name
        assert by_name[name]["caption"] > 100, name
    summary = by_name["index.html"]
    assert summary["mime"] == "text/html" and summary["bytes"] > 100_000  # figures inside
    return seen


def test_quick_run_report_and_summary_page_render(quick_run: Path, tmp_path: Path) -> None:
    res = quick_run / "results" / "quick"
    fmt = "png"
    figures = [f"{stem}.{fmt}" for stem in FIGURES.values()]
    tables = [f"{stem}.html" for stem, _ in BOUNDS_TABLES.values()]

    page = res / "index.html"
    check_summary_page(page, tmp_path, len(figures), ["retraining", "netdev"])
    headline = json.loads((res / "headline.json").read_text(encoding="utf-8"))
    assert set(headline) == {"retraining", "netdev"}
    metrics = json.loads((res / "metrics.json").read_text(encoding="utf-8"))
    acc = metrics["dense"]["lenet300100/seed0"]["test_acc"]
    assert headline["retraining"]["numbers"]["dense test accuracy, lenet300100"] == f"{acc:.4f}"
    assert_not_blank(screenshot(page, tmp_path, "quick-summary-page"))

    report = build_report(quick_run, "config/quick.yaml")
    seen = check_snakemake_report(report, tmp_path, figures, tables)
    # the workflow description rendered, with the headline answers read from the results
    assert "Research questions" in seen["text"] and "Headline answers" in seen["text"]
    assert f"dense test accuracy, lenet300100: {acc:.4f}" in seen["text"]
    assert "A. Retraining bounds" in seen["text"]
    assert_not_blank(screenshot(report, tmp_path, "quick-snakemake-report"))


def test_pretrain_run_report_and_summary_page_render(pretrain_run: Path, tmp_path: Path) -> None:
    res = pretrain_run / "results" / "pretrain_quick"
    figures = [f"{stem}.png" for stem in PRE_FIGURES.values()]
    tables = [f"{stem}.html" for stem, _ in PRE_TABLES.values()]

    page = res / "index.html"
    check_summary_page(page, tmp_path, len(figures), ["pretrain"])
    headline = json.loads((res / "headline.json").read_text(encoding="utf-8"))
    assert list(headline) == ["pretrain"]
    best = json.loads((res / "pretrain" / "metrics.json").read_text())["best_law"]
    assert headline["pretrain"]["numbers"]["law with the lowest AIC"] == best
    assert_not_blank(screenshot(page, tmp_path, "pretrain-summary-page"))

    report = build_report(pretrain_run, "config/pretrain_quick.yaml")
    seen = check_snakemake_report(report, tmp_path, figures, tables)
    assert "C. How much pre-training is enough" in seen["text"]
    assert f"law with the lowest AIC: {best}" in seen["text"]
    assert "A. Retraining" not in seen["text"]  # no retraining study in this config
    assert_not_blank(screenshot(report, tmp_path, "pretrain-snakemake-report"))


def test_chromium_reports_a_broken_figure(tmp_path: Path) -> None:
    """The check can fail: a page with a truncated PNG is caught."""
    png = io.BytesIO()
    Image.new("RGB", (400, 300), "white").save(png, format="PNG")
    good = base64.b64encode(png.getvalue()).decode()
    bad = base64.b64encode(png.getvalue()[:40]).decode()
    page = tmp_path / "page.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>t</title></head><body>"
        f'<img alt="ok" src="data:image/png;base64,{good}">'
        f'<img alt="broken" src="data:image/png;base64,{bad}">'
        "<script>missingFunction()</script></body></html>"
    )
    seen = probe(page, tmp_path)
    sizes = {i["alt"]: (i["w"], i["h"]) for i in seen["page_images"]}
    assert sizes == {"ok": (400, 300), "broken": (0, 0)}
    assert any("missingFunction" in e for e in seen["errors"])
