"""Rule jacobians: mean Jacobian norms of the unpruned network on the pruning data."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.study import run_netdev_reference

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--arch", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--dense", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    log = setup_logging()
    ref = run_netdev_reference(
        a.params, a.arch, a.seed, a.data, a.dense, a.out, a.device, a.threads
    )
    log.info("jacobian norms (%s): %s in %.1f s", ref["norm"], ref["jacobian_norms"], ref["wall_s"])
