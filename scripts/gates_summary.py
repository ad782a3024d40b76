"""Rule gates_summary: join all runs of the structure-discovery study into tables."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.gates_study import run_gates_summary

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--metrics", type=Path, nargs="+", required=True)
    p.add_argument("--epochs", type=Path, nargs="+", required=True)
    p.add_argument("--thetas", type=Path, nargs="+", required=True)
    p.add_argument("--out-runs", type=Path, required=True)
    p.add_argument("--out-epochs", type=Path, required=True)
    p.add_argument("--out-thetas", type=Path, required=True)
    p.add_argument("--out-metrics", type=Path, required=True)
    a = p.parse_args()
    log = setup_logging()
    head = run_gates_summary(
        a.params,
        a.metrics,
        a.epochs,
        a.thetas,
        a.out_runs,
        a.out_epochs,
        a.out_thetas,
        a.out_metrics,
    )
    log.info("%d runs summarised", head["runs"])
