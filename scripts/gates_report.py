"""Rule gates_report: figures and summary.md of the structure-discovery study."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.gates_report import run_gates_report

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--epochs", type=Path, required=True)
    p.add_argument("--thetas", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--out-md", type=Path, required=True)
    a = p.parse_args()
    log = setup_logging()
    written = run_gates_report(a.params, a.runs, a.epochs, a.thetas, a.out_dir, a.out_md, a.threads)
    for key, path in written.items():
        log.info("%s: %s", key, path)
