"""Shared set-up of the benchmark scripts: the project's source on sys.path, the MNIST mirror."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
MIRROR = Path(os.environ.get("PRUNETIME_DATA_MIRROR", ROOT.parent / "shared/data/mnist"))


def add_mirror_arg(p: argparse.ArgumentParser) -> None:
    """``--mirror``: the folder with the original MNIST .gz files (no download)."""
    p.add_argument("--mirror", type=Path, default=MIRROR, help="offline MNIST mirror")
