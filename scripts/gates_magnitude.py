"""Rule gates_magnitude: magnitude prune-then-retrain at the combined variant's budget."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.gates_study import run_gates_magnitude

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--net", required=True)
    p.add_argument("--lam", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--dense-model", type=Path, required=True)
    p.add_argument("--dense-metrics", type=Path, required=True)
    p.add_argument("--budget-metrics", type=Path, required=True)
    p.add_argument("--out-metrics", type=Path, required=True)
    a = p.parse_args()
    log = setup_logging()
    m = run_gates_magnitude(
        a.params,
        a.net,
        a.lam,
        a.seed,
        a.data,
        a.dense_model,
        a.dense_metrics,
        a.budget_metrics,
        a.out_metrics,
        a.device,
        a.threads,
    )
    log.info(
        "%s magnitude at lambda=%g budget %d params: amount %.3f, %s after %d iterations, "
        "test acc %.4f",
        a.net,
        a.lam,
        m["budget_params"],
        m["amount"],
        m["retrain_status"],
        m["retrain_iterations"],
        m["test_acc"],
    )
