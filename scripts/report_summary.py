"""Rule summary: the study summary page (self-contained HTML) and its headline numbers."""

from pathlib import Path

from _common import parser, setup_logging

from prunetime.summary import run_summary

if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--results", type=Path, required=True, help="the study's results folder")
    p.add_argument("--out-html", type=Path, required=True)
    p.add_argument("--out-rst", type=Path, required=True)
    p.add_argument("--out-json", type=Path, required=True)
    a = p.parse_args()
    log = setup_logging()
    sections = run_summary(a.params, a.results, a.out_html, a.out_rst, a.out_json)
    log.info("sections: %s", ", ".join(s["key"] for s in sections) or "none")
    for s in sections:
        log.info("%s: %s", s["key"], s["answer"])
