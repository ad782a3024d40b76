"""Rule retrain: retrain all pruned trials of one job to convergence."""

from collections import Counter
from pathlib import Path

from _common import parser, setup_logging

from prunetime.study import run_retrain

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--arch", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--amount", type=float, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--dense", type=Path, required=True)
    p.add_argument("--dense-metrics", type=Path, required=True)
    p.add_argument("--pruned", type=Path, required=True)
    p.add_argument("--out-table", type=Path, required=True)
    p.add_argument("--out-curves", type=Path, required=True)
    a = p.parse_args()
    log = setup_logging()
    rows = run_retrain(
        a.params,
        a.arch,
        a.seed,
        a.method,
        a.amount,
        a.data,
        a.dense,
        a.pruned,
        a.dense_metrics,
        a.out_table,
        a.out_curves,
        a.device,
        a.threads,
    )
    log.info("retrained %d trials: %s", len(rows), dict(Counter(r["status"] for r in rows)))
