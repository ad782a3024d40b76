"""Rule prune: all trials of one (architecture, seed, method, amount)."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.study import run_prune

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--arch", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--amount", type=float, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--dense", type=Path, required=True)
    p.add_argument("--jacobians", type=Path, default=None, help="Jacobian norms (Net Deviation)")
    p.add_argument("--out-masks", type=Path, required=True)
    p.add_argument("--out-table", type=Path, required=True)
    a = p.parse_args()
    log = setup_logging()
    rows = run_prune(
        a.params,
        a.arch,
        a.seed,
        a.method,
        a.amount,
        a.data,
        a.dense,
        a.out_masks,
        a.out_table,
        a.device,
        a.threads,
        a.jacobians,
    )
    log.info(
        "pruned %d trial(s), mean sparsity %.4f, units removed %.4f, parameters left %d of %d",
        len(rows),
        sum(r["sparsity"] for r in rows) / len(rows),
        sum(r["units_removed"] for r in rows) / len(rows),
        rows[0]["n_params_remaining"],
        rows[0]["n_params"],
    )
