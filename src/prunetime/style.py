"""The one look of every figure and page of the project's studies.

All figure code draws inside ``rc_context(theme())`` on figures from :func:`new_figure`, takes
its colours from :data:`PALETTE` (categorical: methods, architectures, definitions) or
:func:`sequential` (ordered quantities such as the dataset size m), and writes bytes from
:func:`render`. Nothing here touches pyplot's global state, so figure code is safe in tests
and in parallel jobs.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import seaborn as sns
from cycler import cycler
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prunetime.io import atomic_path

log = logging.getLogger("prunetime")

FORMATS = ("png", "svg")
MIN_DPI = 150  # PNG figures below this resolution are not legible when a page scales them
PALETTE = sns.color_palette("colorblind", 10)
DIVERGED_COLOR = PALETTE[3]  # red: reserved for diverged runs
BOUND_COLOR = PALETTE[7]  # grey: reserved for bounds
METHOD_ORDER = (0, 2, 4, 9, 5, 6, 8)  # blue, green, ...: far from the red of diverged runs
ARCH_ORDER = (4, 5, 1, 9, 6, 8)
SEQUENTIAL = "viridis"  # ordered quantities (m, amounts): light = large
FONT_SCALE = 1.15  # seaborn's "notebook" context, a little larger: figures are shown scaled down


def theme() -> dict[str, Any]:
    """rc settings of the seaborn theme of all figures, to apply with ``rc_context``."""
    rc: dict[str, Any] = {
        **sns.axes_style("whitegrid"),
        **sns.plotting_context("notebook", font_scale=FONT_SCALE),
    }
    rc["axes.prop_cycle"] = cycler(color=PALETTE)
    rc["svg.hashsalt"] = "prunetime"  # reproducible SVG ids
    rc["legend.frameon"] = False
    rc["axes.titleweight"] = "bold"
    return rc


def colors(keys: Sequence[Any], order: Sequence[int] = METHOD_ORDER) -> dict[Any, Any]:
    """Colour per key, assigned in sorted order so a key keeps its colour in every figure."""
    return {k: PALETTE[order[i % len(order)]] for i, k in enumerate(sorted(keys))}


def sequential(keys: Sequence[Any]) -> dict[Any, Any]:
    """Colour per ordered key (e.g. dataset size m) from the sequential palette."""
    pal = sns.color_palette(SEQUENTIAL, len(keys))
    return {k: pal[i] for i, k in enumerate(sorted(keys))}


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure on the Agg canvas, without pyplot's global state."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def check_format(fmt: str, dpi: int) -> tuple[str, int]:
    """Validate report.format / report.dpi with a message naming the key."""
    fmt = str(fmt).lower()
    if fmt not in FORMATS:
        raise ValueError(f"report.format must be one of {FORMATS}, not {fmt!r}")
    if int(dpi) < MIN_DPI:
        raise ValueError(f"report.dpi must be at least {MIN_DPI} (legible figures), not {dpi}")
    return fmt, int(dpi)


def render(fig: Figure, fmt: str, dpi: int) -> bytes:
    """The figure's bytes in ``fmt``; the format is explicit so no file name is consulted."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    return buf.getvalue()


# What the forked workers of render_all draw: set before the pool forks, so that closures over
# the job's tables reach the workers without pickling them.
_PENDING: dict[str, tuple[Callable[[], Figure], str, int]] = {}


def _render_pending(key: str) -> bytes:
    make, fmt, dpi = _PENDING[key]
    with rc_context(theme()):
        return render(make(), fmt, dpi)


def render_all(
    plots: Mapping[str, Callable[[], Figure]], fmt: str, dpi: int, workers: int = 1
) -> dict[str, bytes]:
    """Every figure of ``plots`` drawn in the theme and rendered, in ``workers`` processes.

    A report job runs at the end of a study, when nothing else can run beside it, and
    spends most of its time laying out and rasterising figures that do not depend on each
    other. With ``workers`` > 1 (the job's cores) they are drawn in forked processes, which
    inherit the imported libraries and the job's tables; the bytes are those of a
    sequential rendering. Without fork (not Linux) they are drawn one after another.
    """
    workers = min(workers, len(plots))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        log.info("drawing %d figures in 1 process", len(plots))
        with rc_context(theme()):
            return {key: render(make(), fmt, dpi) for key, make in plots.items()}
    log.info("drawing %d figures in %d processes", len(plots), workers)
    _PENDING.update({key: (make, fmt, dpi) for key, make in plots.items()})
    try:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            return dict(zip(plots, pool.map(_render_pending, plots), strict=True))
    finally:
        _PENDING.clear()


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


TABLE_CSS = """
body { font-family: system-ui, sans-serif; color: #222; margin: 1em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
caption { text-align: left; font-weight: bold; padding-bottom: 0.5em; }
"""


def table_html(title: str, table_markup: str) -> str:
    """A standalone HTML page around one table (a report item that opens in a browser)."""
    from html import escape

    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{TABLE_CSS}</style>\n</head>\n<body>\n"
        f"<h2>{escape(title)}</h2>\n{table_markup}\n</body>\n</html>\n"
    )
