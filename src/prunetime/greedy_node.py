"""Greedy forward selection as a node-level pruning method for deep fully connected nets.

The deep variant of Ye et al. (ICML 2020), THEORY.md C: prune layer by layer from the input
to the output. For hidden layer l with U units, the consumer layer's pre-activation is
b + W a = b + (1/U) sum_u g_u with g_u = U a_u W[:, u] (a_u: unit u's activation), so the
layer is a width-U average exactly like the two-layer network of :mod:`prunetime.greedy`.
Greedy forward selection picks k = U - round(s U) units whose average reproduces the *dense*
network's consumer pre-activation on the pruning data, given the activations of the network
already pruned below (so errors of earlier layers are compensated). The kept units' outgoing
columns are rescaled by multiplicity * U / k, which makes the consumer compute exactly the
selected average; the removed units' rows, biases and outgoing columns are zero.

The class implements the :class:`prunetime.pruning.PruningMethod` interface; pruning.py
registers it as ``greedy_node`` (options from ``pruning.greedy_node`` of the config). It
applies to fully connected architectures only (``conv = False``): the workflow runs it on
those and skips conv architectures.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from prunetime.greedy import greedy_select
from prunetime.pruning import PruningMethod


def _linear_chain(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if any(isinstance(m, nn.Conv2d) for _, m in mods):
        raise ValueError("greedy node pruning supports fully connected networks only")
    return mods  # type: ignore[return-value]


def _input_of(model: nn.Module, module: nn.Module, data: torch.Tensor) -> torch.Tensor:
    """What ``module`` receives when ``model`` runs on ``data`` (after activations)."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(data)
    finally:
        handle.remove()
    return seen[0].reshape(seen[0].shape[0], -1)


class GreedyForwardNodePruning(PruningMethod):
    """Layer-wise greedy forward selection of hidden units (node level, needs pruning data).

    Option ``with_replacement`` (default False): select k times with replacement (the
    theory); a unit picked j times gets weight j in the average, and fewer than k distinct
    units survive, so the real sparsity is at least the nominal one.
    """

    level = "node"
    stochastic = False
    changes_weights = True
    needs_data = True
    conv = False
    options: dict[str, Any] = {"with_replacement": False}

    def masks(self, model, layers, amount, generator, data=None):  # noqa: D102
        if data is None:
            raise ValueError("greedy node pruning needs pruning data (the unit activations)")
        chain = _linear_chain(model)
        dense = copy.deepcopy(model)
        dense_mods = dict(dense.named_modules())
        chosen = set(layers)
        params = dict(model.named_parameters())
        out: dict[str, torch.Tensor] = {}
        data = data.to(params[f"{chain[0][0]}.weight"].device)
        for (name, mod), (cname, cons) in zip(chain, chain[1:], strict=False):
            if f"{name}.weight" not in chosen:
                continue
            units = mod.out_features
            keep = units - min(round(amount * units), units - 1)
            acts = _input_of(model, cons, data).double()
            w = cons.weight.detach().double()
            target = _input_of(dense, dense_mods[cname], data).double() @ (
                dense_mods[cname].weight.detach().double().T
            )
            sel = greedy_select(
                acts,
                w.T,
                float(units),
                target,
                keep,
                loss="mse",
                replacement=bool(self.opts["with_replacement"]),
            )
            counts = sel.counts(units).to(w.device)
            kept = counts > 0
            with torch.no_grad():
                cons.weight.mul_((counts.double() * units / keep).to(cons.weight.dtype))
                mod.weight[~kept] = 0.0
                if mod.bias is not None:
                    mod.bias[~kept] = 0.0
            row = kept.cpu().unsqueeze(1).expand(-1, mod.in_features).clone()
            out[f"{name}.weight"] = row & out.get(f"{name}.weight", torch.ones_like(row))
            if mod.bias is not None:
                out[f"{name}.bias"] = kept.cpu().clone()
            col = kept.cpu().unsqueeze(0).expand(cons.out_features, -1).clone()
            out[f"{cname}.weight"] = col & out.get(f"{cname}.weight", torch.ones_like(col))
        return out
