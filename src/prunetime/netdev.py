"""Layer-wise error propagation and Net Deviation (THEORY.md section B).

A network is read as a chain of stages Y(l+1) = stage_l(Y(l); W(l)), one per weight
layer: the conv/linear operation followed by its activation (and pooling). With Y(1) = x
and Y(L) the output (logits), pruning every W(l-1) by dW(l-1) changes the output by at most
(to first order)

    ||dY(L)|| <= sum_{l=2..L} [ prod_{i=l+1..L} ||dY(i)/dY(i-1)|| ] * ||dY(l)/dW(l-1) . dW(l-1)||.

All Jacobians are taken at the unpruned network on the pruning data, per sample, and their
norms averaged over the samples (Frobenius by default, spectral as an option); the
directional derivative is a vector, so its norm is Euclidean either way. W(l-1) is the
layer's weight *and* bias, so the bias changes of node pruning (removed units' biases) and
of the clustered fold (the next layer's bias) enter the bound too. ||dY(L)|| is the
measured change of the output, averaged over the same samples, and the Net Deviation is
dev = ||dY(L)|| - RHS. Jacobians come from ``torch.func`` (vmap over samples of jacrev;
jvp for the directional derivatives).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap

from prunetime.models import LeNet5Classic, LeNet5Paper, LeNet300100, max_pool2

NORMS = ("fro", "spectral")
Tensor = torch.Tensor


@dataclass(frozen=True)
class Stage:
    """One weight layer: ``post(module(pre(y)))`` with the module's parameters swappable."""

    module: str
    pre: Callable[[Tensor], Tensor]
    post: Callable[[Tensor], Tensor]


def _flat(y: Tensor) -> Tensor:
    return y.reshape(y.shape[0], -1)


def _image(y: Tensor) -> Tensor:
    return y.reshape(y.shape[0], 1, 28, 28)


def _ident(y: Tensor) -> Tensor:
    return y


def _relu_pool(y: Tensor) -> Tensor:
    """relu, then 2x2 max pooling: max_pool2d itself where derivatives are taken (under
    jacrev/jvp it is several times faster than strided maxima, and its tie routing is the
    reference); the plain forwards, without autograd, take the maxima of strided views
    (:func:`prunetime.models.max_pool2`: the same values, several times faster)."""
    y = torch.relu(y)
    if torch.is_grad_enabled() or torch._C._functorch.is_functorch_wrapped_tensor(y):
        return F.max_pool2d(y, 2)
    return max_pool2(y)


def stages(model: nn.Module) -> list[Stage]:
    """The stage decomposition of a registered model (its forward, written layer by layer)."""
    if isinstance(model, LeNet300100):
        act = model.act
        return [Stage("fc1", _flat, act), Stage("fc2", _ident, act), Stage("fc3", _ident, _ident)]
    if isinstance(model, LeNet5Paper):
        return [
            Stage("conv1", _image, _relu_pool),
            Stage("conv2", _ident, _relu_pool),
            Stage("fc1", _flat, torch.relu),
            Stage("fc2", _ident, _ident),
        ]
    if isinstance(model, LeNet5Classic):
        return [
            Stage("conv1", _image, _relu_pool),
            Stage("conv2", _ident, _relu_pool),
            Stage("fc1", _flat, torch.relu),
            Stage("fc2", _ident, torch.relu),
            Stage("fc3", _ident, _ident),
        ]
    raise ValueError(f"no stage decomposition for {type(model).__name__}")


def _stage_params(
    model: nn.Module, stage: Stage, params: Mapping[str, Tensor] | None
) -> dict[str, Tensor]:
    src = params if params is not None else dict(model.named_parameters())
    names = {k: f"{stage.module}.{k}" for k in ("weight", "bias")}
    return {k: src[n] for k, n in names.items() if n in src}


def stage_forward(
    model: nn.Module, stage: Stage, y: Tensor, params: Mapping[str, Tensor] | None = None
) -> Tensor:
    """Y(l+1) from Y(l); ``params`` (full names) replace the module's own, any shape."""
    mod = dict(model.named_modules())[stage.module]
    return stage.post(functional_call(mod, _stage_params(model, stage, params), (stage.pre(y),)))


def forward(
    model: nn.Module, x: Tensor, params: Mapping[str, Tensor] | None = None
) -> list[Tensor]:
    """[Y(1) = x, Y(2), ..., Y(L)]; with ``params`` (e.g. a compacted, smaller network)."""
    ys = [x]
    for st in stages(model):
        ys.append(stage_forward(model, st, ys[-1], params))
    return ys


def _matrix_norm(j: Tensor, norm: str) -> Tensor:
    if norm == "fro":
        return torch.linalg.matrix_norm(j, ord="fro")
    if norm == "spectral":
        return torch.linalg.matrix_norm(j, ord=2)
    raise ValueError(f"netdev.norm must be one of {NORMS}, not {norm!r}")


def jacobian_norms(
    model: nn.Module, x: Tensor, norm: str = "fro", chunk: int = 8
) -> dict[str, float]:
    """Mean over samples of ||dY(i)/dY(i-1)|| for every stage after the first, by module.

    The first stage's input is the data, which pruning never changes, so its Jacobian is
    not needed. Per-sample Jacobians are built ``chunk`` samples at a time (a LeNet-5 conv
    stage's Jacobian is about 1M floats per sample: small chunks bound the job's memory).
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    ys = reference(model, x)
    out = {}
    for i, st in enumerate(stages(model)):
        if i == 0:
            continue
        y_in = ys[i]

        def f(y1: Tensor, st: Stage = st) -> Tensor:
            return stage_forward(model, st, y1.unsqueeze(0), params).reshape(-1)

        total = 0.0
        for start in range(0, len(y_in), chunk):
            j = vmap(jacrev(f))(y_in[start : start + chunk])
            total += float(_matrix_norm(j.reshape(j.shape[0], j.shape[1], -1), norm).sum())
        out[st.module] = total / len(y_in)
    return out


def reference(model: nn.Module, x: Tensor) -> list[Tensor]:
    """:func:`forward` of the unpruned network without autograd: what every trial's Net
    Deviation starts from, so a job computes it once for all its trials."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    with torch.no_grad():
        return forward(model, x, params)


def jvp_norms(
    model: nn.Module,
    x: Tensor,
    delta: Mapping[str, Tensor],
    ys: Sequence[Tensor] | None = None,
) -> dict[str, float]:
    """Mean over samples of ||dY(l)/dW(l-1) . dW(l-1)|| per stage, at the unpruned network.

    ``delta`` holds the parameter changes by full name (weights and biases; missing = 0);
    ``ys``: :func:`reference` of ``model`` on ``x`` where the caller has it.
    """
    params = dict(model.named_parameters())
    if ys is None:
        ys = reference(model, x)
    out = {}
    for i, st in enumerate(stages(model)):
        primal = {k: v.detach() for k, v in _stage_params(model, st, params).items()}
        tangent = {
            k: delta.get(f"{st.module}.{k}", torch.zeros_like(v)).to(v) for k, v in primal.items()
        }
        y_in = ys[i].detach()

        def g(p: dict[str, Tensor], st: Stage = st, y_in: Tensor = y_in) -> Tensor:
            full = {f"{st.module}.{k}": v for k, v in p.items()}
            return stage_forward(model, st, y_in, full)

        _, dy = jvp(g, (primal,), (tangent,))
        out[st.module] = float(dy.reshape(dy.shape[0], -1).norm(dim=1).mean())
    return out


def propagation_bound(jac: Mapping[str, float], jvps: Mapping[str, float]) -> float:
    """sum over stages l of [prod over later stages i of ||J_i||] * ||JVP_l||."""
    modules = list(jvps)
    total = 0.0
    for pos, name in enumerate(modules):
        prod = 1.0
        for later in modules[pos + 1 :]:
            prod *= jac[later]
        total += prod * jvps[name]
    return total


def output_deviation(
    model: nn.Module, pruned: Mapping[str, Tensor], x: Tensor, y0: Tensor | None = None
) -> float:
    """Mean over samples of ||Y_pruned(L) - Y(L)||: the measured change of the output
    (``y0``: the unpruned output Y(L), where the caller has it)."""
    if y0 is None:
        y0 = reference(model, x)[-1]
    with torch.no_grad():
        y1 = forward(model, x, pruned)[-1]
    return float((y1 - y0).reshape(len(x), -1).norm(dim=1).mean())


def net_deviation(
    model: nn.Module,
    pruned: Mapping[str, Tensor],
    x: Tensor,
    jac: Mapping[str, float],
    ys: Sequence[Tensor] | None = None,
) -> dict[str, float]:
    """||dY(L)||, the right-hand side of the propagation bound, and dev = LHS - RHS.

    ``model`` holds the unpruned weights W*, ``pruned`` the pruned parameters (full names),
    ``jac`` the mean Jacobian norms of :func:`jacobian_norms` on the same data ``x``, ``ys``
    (optional) :func:`reference` of ``model`` on ``x``: a pruning job passes it to all of its
    trials (the same tensors each would compute; it was 2 of a trial's 3 forwards).
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    delta = {k: pruned[k].to(v) - v for k, v in params.items()}
    if ys is None:
        ys = reference(model, x)
    jvps = jvp_norms(model, x, delta, ys)
    lhs = output_deviation(model, pruned, x, ys[-1])
    rhs = propagation_bound(jac, jvps)
    out = {"ndev_lhs": lhs, "ndev_rhs": rhs, "ndev_dev": lhs - rhs}
    out.update({f"ndev_jvp[{k}]": v for k, v in jvps.items()})
    return out


def normalise(devs: Sequence[float]) -> list[float]:
    """D = |dev| / max |dev| over a sweep (NaN where the max is 0 or missing)."""
    mags = [abs(d) for d in devs]
    top = max((m for m in mags if m == m), default=float("nan"))
    return [m / top if top and top == top else float("nan") for m in mags]
