"""Rule pretrain_train: pre-train the two-layer ReLU net on one balanced m-subset and seed."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.pretrain import run_pretrain_train

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--m", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    a = p.parse_args()
    log = setup_logging()
    m = run_pretrain_train(a.params, a.m, a.seed, a.data, a.ckpt, a.metrics, a.device, a.threads)
    log.info(
        "pretrain m=%d (requested %d) seed %d: %d steps, %d checkpoints, %.1f s",
        m["m"],
        m["m_requested"],
        a.seed,
        m["steps"],
        len(m["checkpoints"]),
        m["train_wall_s"],
    )
