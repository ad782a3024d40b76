"""Rule pretrain_prune: greedy forward selection at every checkpoint of one (m, seed) run."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.pretrain import run_pretrain_prune

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--m", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--out-rows", type=Path, required=True)
    p.add_argument("--out-metrics", type=Path, required=True)
    a = p.parse_args()
    log = setup_logging()
    rows = run_pretrain_prune(
        a.params, a.m, a.seed, a.data, a.ckpt, a.out_rows, a.out_metrics, a.device, a.threads
    )
    last = max(r["step"] for r in rows)
    for r in rows:
        if r["step"] == last:
            log.info(
                "step %d %s/%s: train loss %.4f, test acc %.4f",
                last,
                r["variant"],
                r["stage"],
                r["train_loss"],
                r["test_acc"],
            )
