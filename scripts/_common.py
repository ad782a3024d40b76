"""Shared argument handling for the thin rule scripts."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", type=json.loads, required=True, help="job config slice (JSON)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    return p


def setup_logging() -> logging.Logger:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    return logging.getLogger("prunetime")
