"""Rule pretrain_report: figures, display tables and summary.md of the threshold study."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.pretrain_report import run_pretrain_report

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--curves", type=Path, required=True)
    p.add_argument("--thresholds", type=Path, required=True)
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--fits", type=Path, required=True)
    p.add_argument("--fits-md", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--table-dir", type=Path, default=None)
    a = p.parse_args()
    log = setup_logging()
    written = run_pretrain_report(
        a.params,
        a.curves,
        a.thresholds,
        a.summary,
        a.fits,
        a.fits_md,
        a.metrics,
        a.out_dir,
        a.out_md,
        a.table_dir,
        a.threads,
    )
    for key, path in written.items():
        log.info("%s: %s", key, path)
