"""What planning the workflow needs to know about models and pruning methods, without torch.

Snakemake parses the workflow on every call, dry runs included. Deciding which methods apply
to which architecture, which methods are stochastic and which weight tensors a model has
asks the registered model and pruner classes, and importing torch to ask them costs seconds
per call. The answers depend only on the package source, so they are computed once per
version of that source (a digest of every ``.py`` file of the package) and kept as JSON in
``cache_dir``. Without a ``cache_dir`` they are computed in-process (torch is imported).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent

# Where the workflow keeps the cached catalog (set by workflow/rules/common.smk); None: no file.
cache_dir: Path | None = None


@functools.cache
def source_digest() -> str:
    """sha256 over the package's Python files (names and contents): the catalog's version."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def compute() -> dict[str, Any]:
    """The catalog from the registries themselves (imports torch, builds every model once)."""
    from prunetime.models import MODELS, build_model, weight_names
    from prunetime.pruning import PRUNERS

    built = {name: build_model(name) for name in sorted(MODELS)}
    return {
        "models": {name: {"weights": weight_names(m)} for name, m in built.items()},
        "methods": {
            name: {
                "stochastic": bool(cls.stochastic),
                "applies_to": sorted(n for n, m in built.items() if cls.applies_to(m)),
            }
            for name, cls in sorted(PRUNERS.items())
        },
    }


@functools.cache
def _load(digest: str, folder: str | None) -> dict[str, Any]:
    if folder is None:
        return compute()
    path = Path(folder) / f"catalog-{digest[:16]}.json"
    try:
        data = json.loads(path.read_text())
        if data.get("digest") == digest:
            return data["catalog"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # missing, half-written by a crashed writer, or from another version: rebuild
    cat = compute()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".catalog-", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump({"digest": digest, "catalog": cat}, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:  # a read-only or full disk: plan from the in-process catalog, uncached
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return cat


def load() -> dict[str, Any]:
    """The catalog of the current source, from ``cache_dir`` when it holds one."""
    return _load(source_digest(), None if cache_dir is None else str(cache_dir))


def weight_names(model: str) -> list[str]:
    """The prunable weight tensors of registered model ``model``, in forward order."""
    return list(load()["models"][model]["weights"])


def stochastic(method: str) -> bool | None:
    """Whether registered pruning method ``method`` draws random masks (None: not registered)."""
    entry = load()["methods"].get(method)
    return None if entry is None else bool(entry["stochastic"])


def applies(method: str, model: str) -> bool:
    """Whether pruning method ``method`` can prune registered model ``model``."""
    return model in load()["methods"][method]["applies_to"]
