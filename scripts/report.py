"""Rule report: figures, display tables, summary.md and summary.html of the bounds study."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.report import run_report

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--dense", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--curves", type=Path, nargs="+", required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--out-html", type=Path, required=True)
    p.add_argument("--table-dir", type=Path, default=None)
    a = p.parse_args()
    log = setup_logging()
    written = run_report(
        a.params,
        a.runs,
        a.summary,
        a.dense,
        a.metrics,
        a.curves,
        a.out_dir,
        a.out_md,
        a.out_html,
        a.table_dir,
        a.threads,
    )
    for key, path in written.items():
        log.info("%s: %s", key, path)
