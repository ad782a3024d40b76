"""Rule bounds: per-run bounds, per-amount summaries and headline metrics."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.analysis import run_bounds

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--prune", type=Path, nargs="+", required=True)
    p.add_argument("--retrain", type=Path, nargs="+", required=True)
    p.add_argument("--dense", type=Path, nargs="+", required=True)
    p.add_argument("--out-runs", type=Path, required=True)
    p.add_argument("--out-summary", type=Path, required=True)
    p.add_argument("--out-dense", type=Path, required=True)
    p.add_argument("--out-metrics", type=Path, required=True)
    p.add_argument("--out-netdev", type=Path, default=None)
    a = p.parse_args()
    log = setup_logging()
    summary = run_bounds(
        a.params,
        a.prune,
        a.retrain,
        a.dense,
        a.out_runs,
        a.out_summary,
        a.out_dense,
        a.out_metrics,
        a.out_netdev,
    )
    log.info("summary:\n%s", summary.to_string())
