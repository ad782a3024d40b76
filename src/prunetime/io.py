"""Atomic writes and safe loads: a result file exists only once it is complete."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Write rows (dicts with the same keys) as CSV without importing pandas."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        fields = list(rows[0].keys()) if rows else []
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


# torch is imported where a checkpoint is read or written, not with the module: the bounds,
# report and summary jobs use only the text helpers here, and importing torch is about 2 s
# of each of those jobs (they run one after another at the end of a study).


def save_torch(path: str | os.PathLike[str], obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike[str]) -> Any:
    """Load a checkpoint with ``weights_only=True``: pickled code is refused, naming the file."""
    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise RuntimeError(
            f"refusing to load {str(path)!r}: not a plain tensor checkpoint "
            f"({exc.__class__.__name__})"
        ) from exc
