"""Pruning methods: one class each behind :class:`PruningMethod`, registered by name.

A method returns boolean keep-masks (True = kept) and may also rewrite surviving weights
(``changes_weights``), e.g. to fold removed units into kept ones. :func:`apply_pruning`
zeroes the pruned entries and reports the real sparsity.

Two levels (THEORY.md B):

* connection level (``random``, ``magnitude``): single weights of every pruned tensor;
* node level (``random_node``, ``magnitude_node``, ``clustered``): whole hidden units of
  fully connected layers and whole filters of conv layers. Removing a unit masks its
  incoming row (for a filter: the whole kernel), its bias entry and its outgoing column(s)
  in the next layer (for a filter feeding a conv: that input channel; feeding a fully
  connected layer through a flatten: the block of columns of its activation map). The
  masked network is *equivalent* to the physically smaller one (:func:`compact_state`
  builds it), and :func:`param_counts` gives its exact parameter count. Output units are
  never pruned.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
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
    ``conv`` says whether it handles conv layers (a method without it applies to fully
    connected architectures only, see :meth:`applies_to`); ``stochastic`` says whether
    trials differ in what gets pruned: a deterministic method
    runs one trial per (architecture, seed, amount) whatever ``pruning.trials`` says, since
    more would be copies (see :meth:`n_trials`); ``needs_data`` says whether it reads the
    pruning data.
    """

    name: ClassVar[str] = ""
    level: ClassVar[str] = "connection"
    stochastic: ClassVar[bool] = False
    changes_weights: ClassVar[bool] = False
    needs_data: ClassVar[bool] = False
    conv: ClassVar[bool] = True
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValueError(
                f"pruning method {self.name!r}: unknown option(s) {sorted(unknown)}; "
                f"allowed: {sorted(self.options)}"
            )
        self.opts = {**self.options, **options}

    @classmethod
    def applies_to(cls, model: nn.Module) -> bool:
        """Whether the method can prune ``model`` (``conv = False``: fully connected only)."""
        return cls.conv or not any(isinstance(m, nn.Conv2d) for m in model.modules())

    @classmethod
    def n_trials(cls, requested: int) -> int:
        """Trials worth running: ``requested`` for a stochastic method, else exactly one."""
        return requested if cls.stochastic else 1

    @abstractmethod
    def masks(
        self,
        model: nn.Module,
        layers: list[str],
        amount: float,
        generator: torch.Generator,
        data: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Keep-masks (bool, same shape as the parameter) by parameter name.

        Connection methods return one mask per weight name in ``layers``; node methods
        also mask the biases of removed units and the next layer's columns.
        """


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


# --------------------------------------------------------------------------- connections


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


# --------------------------------------------------------------------------- node structure


@dataclass(frozen=True)
class UnitLayer:
    """A layer whose output units (neurons or filters) can be removed, and their consumer.

    ``per_unit`` is the number of the consumer's input columns fed by one unit: 1 between
    fully connected layers, 1 input channel between convs, H*W columns when a filter's
    activation map is flattened into a fully connected layer (channel-major, as
    ``Tensor.flatten`` orders it).
    """

    name: str
    units: int
    consumer: str
    per_unit: int

    def columns(self, unit: int | torch.Tensor) -> Any:
        """Index of ``unit``'s outgoing weights in the consumer's weight (dim 1)."""
        if self.per_unit == 1:
            return unit
        u = int(unit)
        return slice(u * self.per_unit, (u + 1) * self.per_unit)


def _prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def unit_layers(model: nn.Module) -> list[UnitLayer]:
    """Every hidden layer of a chain network with the layer that consumes its units.

    The models here are chains whose conv/linear modules are registered in forward order
    (as :func:`prunetime.models.weight_names` assumes); the last one is the output layer,
    whose units are never pruned.
    """
    mods = _prunable_modules(model)
    out = []
    for (name, mod), (next_name, nxt) in zip(mods, mods[1:], strict=False):
        units = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
        fan_in = nxt.in_features if isinstance(nxt, nn.Linear) else nxt.in_channels
        if fan_in % units or (isinstance(nxt, nn.Conv2d) and fan_in != units):
            raise ValueError(
                f"layer {next_name!r} ({fan_in} inputs) does not consume the {units} units of "
                f"{name!r}: node pruning needs a chain network"
            )
        out.append(UnitLayer(name, units, next_name, fan_in // units))
    return out


def units_to_remove(amount: float, units: int) -> int:
    """round(s * units), at most units - 1: a layer always keeps at least one unit."""
    return min(round(amount * units), units - 1)


def selected_unit_layers(model: nn.Module, layers: list[str]) -> list[UnitLayer]:
    """The hidden layers among ``layers`` (weight names); an output layer listed is skipped."""
    chosen = set(layers)
    return [u for u in unit_layers(model) if f"{u.name}.weight" in chosen]


def node_masks(model: nn.Module, removed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep-masks removing whole units: incoming row, bias entry, outgoing column(s).

    ``removed`` maps a layer (module name) to the indices of its removed units. Masks
    cover every tensor such a removal touches (weight and bias of the layer, weight of its
    consumer), combined with AND where a consumer is itself pruned, so every removed
    parameter is counted once.
    """
    params = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}

    def mask(name: str) -> torch.Tensor:
        if name not in masks:
            masks[name] = torch.ones(params[name].shape, dtype=torch.bool)
        return masks[name]

    for ul in unit_layers(model):
        if ul.name not in removed:
            continue
        idx = removed[ul.name].to(torch.long).cpu()
        w_in, w_out = mask(f"{ul.name}.weight"), mask(f"{ul.consumer}.weight")
        if f"{ul.name}.bias" in params:
            mask(f"{ul.name}.bias")[idx] = False
        w_in[idx] = False
        for u in idx.tolist():
            w_out[:, ul.columns(u)] = False
    return masks


def kept_units(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Indices of the units each hidden layer keeps: those whose incoming row is not all masked."""
    out = {}
    for ul in unit_layers(model):
        m = masks.get(f"{ul.name}.weight")
        if m is None:
            out[ul.name] = torch.arange(ul.units)
        else:
            out[ul.name] = torch.nonzero(m.reshape(ul.units, -1).any(1)).flatten()
    return out


def _unit_cuts(
    ul: UnitLayer, kept: torch.Tensor, has_bias: bool
) -> list[tuple[str, int, torch.Tensor]]:
    """(tensor, dim, kept indices) that keep only ``kept`` units of ``ul``: the layer's rows
    and bias entries, and its consumer's columns (``per_unit`` of them per unit)."""
    cols = (kept[:, None] * ul.per_unit + torch.arange(ul.per_unit, device=kept.device)).flatten()
    cuts = [(f"{ul.name}.weight", 0, kept), (f"{ul.consumer}.weight", 1, cols)]
    return cuts + ([(f"{ul.name}.bias", 0, kept)] if has_bias else [])


def compact_state(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The physically smaller network: removed units' rows, biases and columns cut out.

    Its tensors run through :func:`prunetime.netdev.forward` and give the same outputs as
    the masked network (a unit whose outgoing weights are all zero contributes nothing).
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    keep = kept_units(model, masks)
    out = {k: (v * masks[k].to(v.device) if k in masks else v) for k, v in params.items()}
    for ul in unit_layers(model):
        k = keep[ul.name].to(params[f"{ul.name}.weight"].device)
        for name, dim, idx in _unit_cuts(ul, k, f"{ul.name}.bias" in out):
            out[name] = out[name].index_select(dim, idx)
    return out


@dataclass
class UnitCompaction:
    """Where the kept units of a node-pruned network sit in its full-size tensors.

    A removed unit has no incoming weights, bias or outgoing weights, so with its entries
    masked it contributes exact zeros: training the masked network and training the
    physically smaller one are the same computation (up to float summation order), and the
    smaller one costs fewer FLOPs in every step and check. ``keep`` lists, per tensor, the
    (dim, kept indices) pairs to cut along.
    """

    keep: dict[str, list[tuple[int, torch.Tensor]]]
    shapes: dict[str, torch.Size]

    def shrink(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The removed units cut out of full-size tensors (weights, masks, optimizer state)."""
        out = {}
        for name, t in tensors.items():
            for dim, idx in self.keep.get(name, []):
                t = t.index_select(dim, idx.to(t.device))
            out[name] = t
        return out

    def expand(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compact tensors back at full size, zeros where the removed units were."""
        out = {}
        for name, t in tensors.items():
            if name not in self.keep:
                out[name] = t
                continue
            full = t.new_zeros(self.shapes[name])
            index: list[Any] = [slice(None)] * full.dim()
            cuts = dict(self.keep[name])
            if 0 in cuts and 1 in cuts:  # rows and columns: broadcast to the kept block
                index[0], index[1] = cuts[0].to(t.device)[:, None], cuts[1].to(t.device)
            else:
                for dim, idx in cuts.items():
                    index[dim] = idx.to(t.device)
            full[tuple(index)] = t
            out[name] = full
        return out


def unit_compaction(model: nn.Module, masks: dict[str, torch.Tensor]) -> UnitCompaction | None:
    """The compaction of ``model`` under ``masks``, or None unless they remove whole units.

    None for connection-level masks (even one that empties a row keeps that unit's bias) and
    when no unit is removed: only a unit whose row, bias and outgoing columns are all masked
    can be cut out without changing the network.
    """
    params = dict(model.named_parameters())
    keep = kept_units(model, masks)
    plan: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for ul in unit_layers(model):
        kept = keep[ul.name].cpu()
        if len(kept) == ul.units:
            continue
        if len(kept) == 0:
            return None
        gone = torch.ones(ul.units, dtype=torch.bool)
        gone[kept] = False
        bias = f"{ul.name}.bias"
        if bias in params and (bias not in masks or masks[bias].cpu()[gone].any()):
            return None
        out_mask = masks.get(f"{ul.consumer}.weight")
        if out_mask is None:
            return None
        cuts = _unit_cuts(ul, kept, bias in params)
        removed_cols = torch.ones(out_mask.shape[1], dtype=torch.bool)
        removed_cols[cuts[1][2]] = False
        if out_mask.cpu()[:, removed_cols].any():
            return None
        for name, dim, idx in cuts:
            plan.setdefault(name, []).append((dim, idx))
    if not plan:
        return None
    return UnitCompaction(plan, {k: params[k].shape for k in plan})


def param_counts(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, int]:
    """Exact parameter counts (weights + biases) of the dense and of the pruned network."""
    names = set(weight_names(model))
    total = weights = removed = removed_w = 0
    for name, p in model.named_parameters():
        total += p.numel()
        gone = int((~masks[name]).sum()) if name in masks else 0
        removed += gone
        if name in names:
            weights += p.numel()
            removed_w += gone
    return {
        "n_params": total,
        "n_params_remaining": total - removed,
        "n_weights": weights,
        "n_weights_remaining": weights - removed_w,
    }


def _unit_magnitudes(model: nn.Module, ul: UnitLayer) -> torch.Tensor:
    """Per unit: sum |w_in| (its row or filter) + sum |w_out| (its consumer column(s))."""
    params = dict(model.named_parameters())
    w_in = params[f"{ul.name}.weight"].detach().abs().reshape(ul.units, -1).sum(1)
    w_out = params[f"{ul.consumer}.weight"].detach().abs()
    w_out = w_out.reshape(w_out.shape[0], ul.units, -1).sum((0, 2))
    return (w_in + w_out).cpu()


class NodePruning(PruningMethod):
    """Node-level base: removes ``units_to_remove(s, units)`` units of every selected layer."""

    level = "node"

    @abstractmethod
    def choose(
        self,
        model: nn.Module,
        ul: UnitLayer,
        n_remove: int,
        generator: torch.Generator,
        data: torch.Tensor | None,
    ) -> torch.Tensor:
        """Indices of the units of ``ul`` to remove."""

    def masks(self, model, layers, amount, generator, data=None):  # noqa: D102
        removed = {}
        for ul in selected_unit_layers(model, layers):
            n = units_to_remove(amount, ul.units)
            removed[ul.name] = torch.sort(self.choose(model, ul, n, generator, data)).values
        return node_masks(model, removed)


@register_pruner("random_node")
class RandomNodePruning(NodePruning):
    """Remove round(s * units) hidden units / filters per layer uniformly at random."""

    stochastic = True

    def choose(self, model, ul, n_remove, generator, data):  # noqa: D102
        return torch.randperm(ul.units, generator=generator)[:n_remove]


@register_pruner("magnitude_node")
class MagnitudeNodePruning(NodePruning):
    """Remove the units with the smallest sum |w_in| + |w_out| (scores on the unpruned weights)."""

    stochastic = False

    def choose(self, model, ul, n_remove, generator, data):  # noqa: D102
        return torch.argsort(_unit_magnitudes(model, ul), stable=True)[:n_remove]


# --------------------------------------------------------------------------- clustered


def consumer_inputs(model: nn.Module, ul: UnitLayer, data: torch.Tensor) -> torch.Tensor:
    """Each unit's activation as its consumer sees it, over the data: (units, samples * map).

    Captured with a forward pre-hook on the consumer, so it is exactly what the next layer
    multiplies (after activation, pooling and flattening), for neurons and filters alike.
    """
    seen: list[torch.Tensor] = []
    consumer = dict(model.named_modules())[ul.consumer]
    handle = consumer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(data)
    finally:
        handle.remove()
    a = seen[0]
    if a.dim() == 2:  # fully connected consumer: (N, units * per_unit)
        a = a.reshape(a.shape[0], ul.units, ul.per_unit)
    else:  # conv consumer: (N, C, H, W)
        a = a.reshape(a.shape[0], ul.units, -1)
    return a.transpose(0, 1).reshape(ul.units, -1).double()


def fold_coefficients(a_u: torch.Tensor, a_k: torch.Tensor, ridge: float) -> tuple[float, float]:
    """alpha, beta of THEORY.md B: alpha = <a_u - beta, a_k> / (<a_k, a_k> + ridge),
    beta = mean(a_u - alpha a_k).

    The pair solves both equations at once (ridge regression of a_u on a_k with an
    unpenalised intercept), which in closed form is
    alpha = <a_u - mean a_u, a_k - mean a_k> / (||a_k - mean a_k||^2 + ridge).
    """
    cu, ck = a_u - a_u.mean(), a_k - a_k.mean()
    denom = float(ck @ ck) + ridge
    alpha = float(cu @ ck) / denom if denom > 0 else 0.0
    beta = float((a_u - alpha * a_k).mean())
    return alpha, beta


def _exact_k(labels: list[int], k: int) -> list[int]:
    """Relabel so there are exactly k non-empty clusters (k-means may leave some empty
    when units have identical activations): split the largest cluster, last member first."""
    labels = list(labels)
    while len(set(labels)) < k:
        groups: dict[int, list[int]] = {}
        for i, lab in enumerate(labels):
            groups.setdefault(lab, []).append(i)
        big = max(groups.values(), key=lambda g: (len(g), -g[0]))
        labels[big[-1]] = max(labels) + 1
    return labels


@register_pruner("clustered")
class ClusteredPruning(NodePruning):
    """Cluster the units of each hidden layer by activation and keep one per cluster.

    For every selected layer in forward order: describe each unit (a filter: its flattened
    activation maps) by its activation on the pruning data as the next layer sees it;
    cluster the units into k = units - round(s * units) groups (``algorithm``: k-means with
    ``n_init`` k-means++ restarts, seeded from the trial's generator, or Ward); keep one
    unit per cluster (``keep``: largest |bias|, closest to the cluster's centroid, or
    largest sum |w_in| + |w_out|); fold every other member u into the kept
    unit k by least squares (:func:`fold_coefficients`): k's outgoing weights += alpha *
    u's, the next layer's bias += beta * u's outgoing weights (summed over a filter's map
    and kernel). The kept unit is never folded into itself. Later layers are clustered on
    the network already folded below them. For a filter feeding a padded conv the beta
    term is exact away from the border only (padding is zero, not beta).
    """

    stochastic = False
    changes_weights = True
    needs_data = True
    options = {"algorithm": "kmeans", "keep": "bias", "ridge": 0.01, "n_init": 10}
    ALGORITHMS = ("kmeans", "ward")
    KEEP_RULES = ("bias", "centroid", "norm")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.opts["algorithm"] not in self.ALGORITHMS:
            raise ValueError(f"clustered: algorithm must be one of {self.ALGORITHMS}")
        if self.opts["keep"] not in self.KEEP_RULES:
            raise ValueError(f"clustered: keep must be one of {self.KEEP_RULES}")
        if not self.opts["ridge"] >= 0:
            raise ValueError("clustered: ridge must be >= 0")
        if not int(self.opts["n_init"]) >= 1:
            raise ValueError("clustered: n_init must be >= 1")

    def cluster(self, feats: torch.Tensor, k: int, seed: int) -> list[int]:
        """Cluster labels of the rows of ``feats`` (scikit-learn, imported only here)."""
        import warnings

        import numpy as np
        from sklearn.cluster import AgglomerativeClustering, KMeans
        from sklearn.exceptions import ConvergenceWarning
        from threadpoolctl import threadpool_limits

        x = feats.cpu().numpy().astype(np.float64)
        if k >= len(x):
            return list(range(len(x)))
        with threadpool_limits(limits=torch.get_num_threads()), warnings.catch_warnings():
            # Units with identical activations (e.g. dead ReLUs) leave k-means with fewer
            # distinct clusters than k; _exact_k below restores exactly k.
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.opts["algorithm"] == "ward":
                labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
            else:
                km = KMeans(n_clusters=k, n_init=int(self.opts["n_init"]), random_state=seed)
                labels = km.fit_predict(x)
        return _exact_k([int(v) for v in labels], k)

    def _keeper(self, members: list[int], feats: torch.Tensor, score: torch.Tensor) -> int:
        if self.opts["keep"] == "centroid":
            sub = feats[members]
            dist = (sub - sub.mean(0)).pow(2).sum(1)
            return members[int(torch.argmin(dist))]
        best = score[members]
        return members[int(torch.argmax(best))]  # first of equal maxima: lowest index

    def choose(self, model, ul, n_remove, generator, data):  # noqa: D102
        if data is None:
            raise ValueError("clustered pruning needs pruning data (the unit activations)")
        feats = consumer_inputs(model, ul, data)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        labels = self.cluster(feats, ul.units - n_remove, seed)
        params = dict(model.named_parameters())
        if self.opts["keep"] == "bias" and f"{ul.name}.bias" in params:
            score = params[f"{ul.name}.bias"].detach().abs().cpu()
        else:
            score = _unit_magnitudes(model, ul)
        clusters: dict[int, list[int]] = {}
        for i, lab in enumerate(labels):
            clusters.setdefault(lab, []).append(i)
        removed = []
        w_next = params[f"{ul.consumer}.weight"]
        b_next = params.get(f"{ul.consumer}.bias")
        with torch.no_grad():
            for members in clusters.values():
                k = self._keeper(members, feats, score)
                for u in members:
                    if u == k:
                        continue  # never fold the kept unit into itself
                    alpha, beta = fold_coefficients(feats[u], feats[k], self.opts["ridge"])
                    out_u = w_next[:, ul.columns(u)].clone()
                    w_next[:, ul.columns(k)] += alpha * out_u
                    if b_next is not None:
                        b_next += beta * out_u.reshape(out_u.shape[0], -1).sum(1)
                    removed.append(u)
        assert len(removed) == n_remove, (len(removed), n_remove)
        return torch.tensor(removed, dtype=torch.long)

    def masks(self, model, layers, amount, generator, data=None):  # noqa: D102
        # Layer by layer, masking each before the next is clustered, so later layers see
        # the activations of the network as pruned so far.
        removed: dict[str, torch.Tensor] = {}
        params = dict(model.named_parameters())
        for ul in selected_unit_layers(model, layers):
            n = units_to_remove(amount, ul.units)
            removed[ul.name] = torch.sort(self.choose(model, ul, n, generator, data)).values
            with torch.no_grad():
                for name, m in node_masks(model, {ul.name: removed[ul.name]}).items():
                    params[name].mul_(m.to(params[name].device))
        return node_masks(model, removed)


# --------------------------------------------------------------------------- applying


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
    """Prune ``model`` in place; return keep-masks and the real sparsity.

    Sparsity is reported per masked tensor and ``overall`` as the fraction of weights
    removed from the masked weight tensors (biases never enter it).
    """
    masks = method.masks(model, layers, amount, generator, data)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m.to(params[name].device))
    sparsity = {name: 1.0 - float(m.sum()) / m.numel() for name, m in masks.items()}
    biases = {f"{n}.bias" for n, mod in _prunable_modules(model) if mod.bias is not None}
    wmasks = [m for name, m in masks.items() if name not in biases]
    total = sum(m.numel() for m in wmasks)
    sparsity["overall"] = 1.0 - sum(float(m.sum()) for m in wmasks) / total if total else 0.0
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
        n = math.prod(shape) if shape else 1
        bits = np.unpackbits(rec["bits"].numpy(), count=n).astype(bool)
        out[name] = torch.from_numpy(bits).view(shape)
    return out


# Registered here, after the interface it implements, so the registry stays in this module.
from prunetime.greedy_node import GreedyForwardNodePruning  # noqa: E402

register_pruner("greedy_node")(GreedyForwardNodePruning)
