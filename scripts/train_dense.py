"""Rule train_dense: initial training of one architecture and seed."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.study import run_dense

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--arch", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--curve", type=Path, required=True)
    a = p.parse_args()
    log = setup_logging()
    m = run_dense(a.params, a.arch, a.seed, a.data, a.ckpt, a.metrics, a.curve, a.device, a.threads)
    log.info(
        "dense %s seed %d: test acc %.4f, eval loss %.4f",
        a.arch,
        a.seed,
        m["test_acc"],
        m["loss_star"],
    )
