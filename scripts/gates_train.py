"""Rule gates_train / gates_dense: train one gated (or dense) network from scratch."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.gates_study import run_gates_train

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--net", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--lam", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out-model", type=Path, required=True)
    p.add_argument("--out-metrics", type=Path, required=True)
    p.add_argument("--out-epochs", type=Path, required=True)
    p.add_argument("--out-thetas", type=Path, required=True)
    a = p.parse_args()
    log = setup_logging()
    m = run_gates_train(
        a.params,
        a.net,
        a.variant,
        a.lam,
        a.seed,
        a.data,
        a.out_model,
        a.out_metrics,
        a.out_epochs,
        a.out_thetas,
        a.device,
        a.threads,
    )
    log.info(
        "%s %s lambda=%g seed %d: test acc %.4f, params %d (%.3f), FLOPs %d (%.3f), %.1f s",
        a.net,
        a.variant,
        a.lam,
        a.seed,
        m["test_acc"],
        m["params"],
        m["params_frac"],
        m["flops"],
        m["flops_frac"],
        m["train_wall_s"],
    )
