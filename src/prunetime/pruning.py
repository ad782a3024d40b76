"""Pruning methods: one class each behind :class:`PruningMethod`, registered by name.

A method returns boolean keep-masks for the weight tensors it prunes (True = kept) and
may also rewrite surviving weights (``changes_weights``), e.g. to fold removed units into
kept ones. :func:`apply_pruning` zeroes the pruned weights and reports the real sparsity.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from prunetime.models import weight_names

PRUNERS: dict[str, type[PruningMethod]] = {}


def register_pruner(name: str) -> Callable[[type[PruningMethod]], type[PruningMethod]]:
    """Class decorator: make a pruning method available to configs under ``name``."""

    def deco(cls: type[PruningMethod]) -> type[PruningMethod]:
        if name in PRUNERS:
            raise ValueError(f"pruning method {name!r} registered twice")
        cls.name = name
        PRUNERS[name] = cls
        return cls

    return deco


class PruningMethod(ABC):
    """The one pruning interface.

    ``level`` is 'connection' (single weights) or 'node' (whole units/filters);
    ``stochastic`` says whether trials differ in what gets pruned.
    """

    name: ClassVar[str] = ""
    level: ClassVar[str] = "connection"
    stochastic: ClassVar[bool] = False
    changes_weights: ClassVar[bool] = False
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValueError(
                f"pruning method {self.name!r}: unknown option(s) {sorted(unknown)}; "
                f"allowed: {sorted(self.options)}"
            )
        self.opts = {**self.options, **options}

    @abstractmethod
    def masks(
        self,
        model: nn.Module,
        layers: list[str],
        amount: float,
        generator: torch.Generator,
        data: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Keep-masks (bool, same shape as the weight) for each name in ``layers``."""


def build_pruner(name: str, **options: Any) -> PruningMethod:
    try:
        cls = PRUNERS[name]
    except KeyError:
        raise ValueError(f"unknown pruning method {name!r}; allowed: {sorted(PRUNERS)}") from None
    return cls(**options)


def _keep_mask(weight: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(weight.numel(), dtype=torch.bool)
    mask[drop] = False
    return mask.view_as(weight)


@register_pruner("random")
class RandomConnectionPruning(PruningMethod):
    """Remove round(s * n) weights per tensor uniformly at random, without replacement.

    ``with_replacement=True`` reproduces the authors' sampling: int(s * n) indices drawn
    with replacement, so the real sparsity is about 1 - exp(-s).
    """

    level = "connection"
    stochastic = True
    options = {"with_replacement": False}

    def masks(self, model, layers, amount, generator, data=None):  # noqa: D102
        params = dict(model.named_parameters())
        out = {}
        for name in layers:
            w = params[name]
            n = w.numel()
            if self.opts["with_replacement"]:
                drop = torch.randint(0, n, (int(amount * n),), generator=generator)
            else:
                drop = torch.randperm(n, generator=generator)[: round(amount * n)]
            out[name] = _keep_mask(w, drop)
        return out


@register_pruner("magnitude")
class MagnitudeConnectionPruning(PruningMethod):
    """Remove, per tensor, the round(s * n) weights of smallest |w| (stable order on ties)."""

    level = "connection"
    stochastic = False

    def masks(self, model, layers, amount, generator, data=None):  # noqa: D102
        params = dict(model.named_parameters())
        out = {}
        for name in layers:
            w = params[name].detach()
            k = round(amount * w.numel())
            order = torch.argsort(w.abs().flatten(), stable=True)
            out[name] = _keep_mask(w, order[:k])
        return out


def resolve_layers(model: nn.Module, layers: str | list[str]) -> list[str]:
    """'all' -> every weight tensor; else validate the listed names against the model."""
    names = weight_names(model)
    if layers == "all":
        return names
    bad = [n for n in layers if n not in names and f"{n}.weight" not in names]
    if bad:
        raise ValueError(f"config key pruning.layers: unknown layer(s) {bad}; allowed: {names}")
    return [n if n in names else f"{n}.weight" for n in layers]


def apply_pruning(
    model: nn.Module,
    method: PruningMethod,
    layers: list[str],
    amount: float,
    generator: torch.Generator,
    data: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Prune ``model`` in place; return keep-masks and the real sparsity per layer and overall."""
    masks = method.masks(model, layers, amount, generator, data)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m.to(params[name].device))
    sparsity = {name: 1.0 - float(m.sum()) / m.numel() for name, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    sparsity["overall"] = 1.0 - sum(float(m.sum()) for m in masks.values()) / total
    return masks, sparsity


def pack_masks(masks: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Bit-pack boolean masks (8x smaller on disk) for torch.save(weights_only loadable)."""
    import numpy as np

    return {
        name: {
            "shape": list(m.shape),
            "bits": torch.from_numpy(np.packbits(m.cpu().numpy().reshape(-1))),
        }
        for name, m in masks.items()
    }


def unpack_masks(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    import numpy as np

    out = {}
    for name, rec in packed.items():
        shape = tuple(rec["shape"])
        n = int(torch.tensor(shape).prod()) if shape else 1
        bits = np.unpackbits(rec["bits"].numpy(), count=n).astype(bool)
        out[name] = torch.from_numpy(bits).view(shape)
    return out
