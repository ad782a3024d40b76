"""Per-trial journal: a job that runs many trials keeps what it finished if it is killed.

The journal is rewritten atomically after every trial and tagged with the job's
fingerprint (its config slice and inputs), so a rerun of the same job skips the trials
already done and a changed job starts afresh. Each trial is seeded on its own, so the
resumed results equal those of an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunetime.io import load_torch, save_torch


class TrialJournal:
    """Completed trial records of one job, persisted beside its outputs."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.records: dict[int, Any] = {}
        if self.path.is_file():
            state = load_torch(self.path)
            if state.get("fingerprint") == fingerprint:
                self.records = dict(state["records"])

    def __contains__(self, trial: int) -> bool:
        return trial in self.records

    def __getitem__(self, trial: int) -> Any:
        return self.records[trial]

    def add(self, trial: int, record: Any) -> None:
        self.records[trial] = record
        save_torch(self.path, {"fingerprint": self.fingerprint, "records": self.records})

    def discard(self) -> None:
        """Remove the journal once the job's real outputs are written."""
        self.path.unlink(missing_ok=True)
