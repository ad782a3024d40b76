"""Rule pretrain_threshold: T*(m) under every definition, law fits with bootstrap CIs."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.threshold import run_threshold

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--rows", type=Path, nargs="+", required=True)
    p.add_argument("--metrics", type=Path, nargs="+", required=True)
    p.add_argument("--out-curves", type=Path, required=True)
    p.add_argument("--out-thresholds", type=Path, required=True)
    p.add_argument("--out-summary", type=Path, required=True)
    p.add_argument("--out-fits", type=Path, required=True)
    p.add_argument("--out-fits-md", type=Path, required=True)
    p.add_argument("--out-metrics", type=Path, required=True)
    a = p.parse_args()
    log = setup_logging()
    head = run_threshold(
        a.params,
        a.rows,
        a.metrics,
        a.out_curves,
        a.out_thresholds,
        a.out_summary,
        a.out_fits,
        a.out_fits_md,
        a.out_metrics,
    )
    log.info("T*(m) %s: %s; best law %s", head["primary"], head["t_star"], head["best_law"])
