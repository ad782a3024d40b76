"""Rule prepare_data: fetch/verify raw MNIST-style files and write compact split tensors."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.data import prepare_dataset

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--raw-root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mirror", default=None)
    a = p.parse_args()
    log = setup_logging()
    d = a.params["data"]
    sizes = prepare_dataset(d["dataset"], a.raw_root, a.out, d["n_val"], d["split_seed"], a.mirror)
    log.info("prepared %s: %s", d["dataset"], sizes)
