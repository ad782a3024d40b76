"""Two-layer ReLU networks and greedy forward selection of their hidden neurons (THEORY.md C).

The network is f(x) = (1/N) sum_r g_r(x) with g_r(x) = kappa * a_r * relu(w_r . x): the
width-N average of neuron outputs. ``kappa`` = N * c_N carries the parametrisation, c_N = 1/N
(mean-field scaling of THEORY.md, kappa = 1) or 1/sqrt(N) (NTK scaling, kappa = sqrt(N)), so
the same code prunes both. A subnetwork on a multiset S of neurons is the average
f_S = (1/|S|) sum_{r in S} g_r, itself a two-layer net of width |S| with scale kappa / |S|.

Greedy forward selection (Ye et al., ICML 2020) grows S one neuron at a time: step k adds the
neuron r minimising L((k/(k+1)) f_S + (1/(k+1)) g_r). Every candidate is scored in one batched
computation from the cached hidden activations of the training set, never with a Python loop
over candidates (:func:`candidate_losses_naive` is that loop, kept as the reference the tests
and the benchmark compare against). Only torch is imported, so training jobs start fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("mse", "cross_entropy")
SCALINGS = ("mean_field", "ntk")
INPUT_NORMS = ("l2", "none")


def scale_factor(width: int, scaling: str) -> float:
    """c_N: 1/N for the mean-field scaling of THEORY.md, 1/sqrt(N) for NTK scaling."""
    if scaling == "mean_field":
        return 1.0 / width
    if scaling == "ntk":
        return 1.0 / math.sqrt(width)
    raise ValueError(f"unknown scaling {scaling!r}; allowed: {SCALINGS}")


def prepare_inputs(x: torch.Tensor, input_norm: str = "l2") -> torch.Tensor:
    """Flatten images to vectors; 'l2' scales each to unit norm as the NTK theory assumes."""
    flat = x.reshape(x.shape[0], -1).to(torch.float32)
    if input_norm == "l2":
        return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if input_norm != "none":
        raise ValueError(f"unknown input_norm {input_norm!r}; allowed: {INPUT_NORMS}")
    return flat


class TwoLayerNet(nn.Module):
    """f(x) = out_scale * sum_r a_r relu(w_r . x), without biases as in the theory.

    ``w`` is [width, d_in], ``a`` is [width, d_out]; inputs are already flat vectors. With
    ``train_output`` False (the theory's setting) ``a`` is a parameter without gradient.
    """

    def __init__(
        self, d_in: int, width: int, d_out: int, out_scale: float, train_output: bool = False
    ) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(width, d_in))
        # Fixed output weights by default, as in the theory (only w_r is trained).
        self.a = nn.Parameter(torch.zeros(width, d_out), requires_grad=train_output)
        self.out_scale = float(out_scale)

    @property
    def width(self) -> int:
        return self.w.shape[0]

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_scale * (self.hidden(x) @ self.a)


def build_two_layer(
    d_in: int,
    width: int,
    d_out: int,
    scaling: str,
    init_std: float,
    generator: torch.Generator,
    train_output: bool = False,
) -> TwoLayerNet:
    """The network at initialisation: w_r ~ N(0, init_std^2 I), a_r entries uniform on {-1, +1}.

    Rademacher output weights (Du et al. 2019) make a_rc^2 = 1, so the first-layer NTK of
    every output is exactly the Gram matrix H of THEORY.md C in the infinite-width limit.
    """
    model = TwoLayerNet(d_in, width, d_out, scale_factor(width, scaling), train_output)
    with torch.no_grad():
        model.w.copy_(torch.randn(width, d_in, generator=generator) * init_std)
        signs = torch.randint(0, 2, (width, d_out), generator=generator)
        model.a.copy_(signs.to(torch.float32) * 2.0 - 1.0)
    return model


def kappa_of(model: TwoLayerNet) -> float:
    """kappa = N * out_scale, so that f = mean_r g_r with g_r = kappa a_r relu(w_r . x)."""
    return model.width * model.out_scale


def one_hot(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    return F.one_hot(y, n_classes).to(torch.float32)


def regression_target(y: torch.Tensor, n_out: int, dtype: torch.dtype) -> torch.Tensor:
    """The squared loss's target: one-hot class labels, or ``y`` itself when it is already a
    real-valued [m, n_out] matrix (layer-wise selection fits a layer's pre-activations)."""
    if y.is_floating_point():
        if y.ndim != 2 or y.shape[1] != n_out:
            raise ValueError(f"a real-valued target must be [m, {n_out}], not {list(y.shape)}")
        return y.to(dtype)
    return one_hot(y, n_out).to(dtype)


def loss_value(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean loss over samples: 'mse' is 0.5 * ||f(x) - onehot(y)||^2, or cross-entropy.

    With a real-valued [m, C] ``y``, 'mse' compares against ``y`` itself.
    """
    if loss == "mse":
        return 0.5 * (out - regression_target(y, out.shape[1], out.dtype)).pow(2).sum(1).mean()
    if loss == "cross_entropy":
        return F.cross_entropy(out, y)
    raise ValueError(f"unknown loss {loss!r}; allowed: {LOSSES}")


def candidate_losses(
    base: torch.Tensor,
    hidden: torch.Tensor,
    a: torch.Tensor,
    kappa: float,
    k: int,
    y: torch.Tensor,
    loss: str,
    *,
    sq_hidden: torch.Tensor | None = None,
    chunk: int = 2048,
) -> torch.Tensor:
    """Loss of (k/(k+1)) * base + (1/(k+1)) * g_r for every neuron r at once ([N] tensor).

    ``base`` [m, C] is f_S on the training set (ignored when k = 0), ``hidden`` [m, N] the
    cached relu(w_r . x_i), ``a`` [N, C]. For 'mse' the score is closed-form: with
    R = (k/(k+1)) f_S - Y and b = 1/(k+1),
    ||R + b g_r||^2 = ||R||^2 + 2 b kappa <hidden^T R, a>_r + b^2 kappa^2 ||a_r||^2 ||hidden_r||^2,
    one [N, m] x [m, C] matmul per step. Cross-entropy has no such shortcut: the logits of all
    candidates are built as one [chunk, N, C] tensor per chunk of samples.
    """
    m = hidden.shape[0]
    frac_old, b = k / (k + 1), 1.0 / (k + 1)
    if loss == "mse":
        target = regression_target(y, a.shape[1], hidden.dtype)
        resid = frac_old * base - target if k else -target
        sq = sq_hidden if sq_hidden is not None else hidden.pow(2).sum(0)
        cross = ((hidden.T @ resid) * a).sum(1)
        total = resid.pow(2).sum() + 2 * b * kappa * cross + (b * kappa) ** 2 * a.pow(2).sum(1) * sq
        return 0.5 * total / m
    if loss == "cross_entropy":
        if y.is_floating_point():
            raise ValueError("cross-entropy needs class labels, not a real-valued target")
        out = torch.zeros(hidden.shape[1], dtype=hidden.dtype, device=hidden.device)
        ka = (b * kappa) * a  # [N, C]
        for start in range(0, m, chunk):
            h = hidden[start : start + chunk]  # [c, N]
            logits = h.unsqueeze(2) * ka.unsqueeze(0)  # [c, N, C]
            if k:
                logits = logits + frac_old * base[start : start + chunk].unsqueeze(1)
            yc = y[start : start + chunk]
            picked = logits.gather(2, yc.view(-1, 1, 1).expand(-1, logits.shape[1], 1))
            out += (torch.logsumexp(logits, 2) - picked.squeeze(2)).sum(0)
        return out / m
    raise ValueError(f"unknown loss {loss!r}; allowed: {LOSSES}")


def candidate_losses_naive(
    base: torch.Tensor,
    hidden: torch.Tensor,
    a: torch.Tensor,
    kappa: float,
    k: int,
    y: torch.Tensor,
    loss: str,
) -> torch.Tensor:
    """The reference: build each candidate's subnetwork output and evaluate the loss, one by one."""
    out = torch.empty(hidden.shape[1], dtype=hidden.dtype)
    for r in range(hidden.shape[1]):
        g_r = kappa * hidden[:, r : r + 1] * a[r]
        mixed = (k / (k + 1)) * base + g_r / (k + 1) if k else g_r
        out[r] = loss_value(mixed, y, loss)
    return out


@dataclass
class Selection:
    """Result of greedy forward selection.

    ``indices`` lists the chosen neurons in order (repeats possible with replacement);
    ``losses[k]`` is the training loss of the subnetwork after k+1 steps.
    """

    indices: list[int]
    losses: list[float]
    replacement: bool
    stopped_by: str  # 'size' | 'loss_target'
    distinct: int = field(init=False)

    def __post_init__(self) -> None:
        self.distinct = len(set(self.indices))

    def counts(self, width: int) -> torch.Tensor:
        """Multiplicity of every neuron in the multiset S."""
        return torch.bincount(torch.tensor(self.indices, dtype=torch.long), minlength=width)


def greedy_select(
    hidden: torch.Tensor,
    a: torch.Tensor,
    kappa: float,
    y: torch.Tensor,
    size: int,
    *,
    loss: str = "mse",
    replacement: bool = True,
    loss_target: float | None = None,
    naive: bool = False,
    chunk: int = 2048,
) -> Selection:
    """Greedy forward selection of up to ``size`` neurons (stops early at ``loss_target``).

    With replacement (the theory) a neuron may be picked again, which weights it more in the
    average; without replacement (the practical variant) picked neurons are excluded.
    Ties go to the lowest index, so the selection is deterministic. ``naive`` swaps in the
    per-candidate loop, for tests and the benchmark only.
    """
    n_neurons = hidden.shape[1]
    if size < 1:
        raise ValueError(f"greedy size must be >= 1, not {size}")
    if not replacement and size > n_neurons:
        raise ValueError(f"size {size} > width {n_neurons}: impossible without replacement")
    a = a.to(hidden.dtype)
    base = torch.zeros(hidden.shape[0], a.shape[1], dtype=hidden.dtype, device=hidden.device)
    sq = hidden.pow(2).sum(0)
    taken = torch.zeros(n_neurons, dtype=torch.bool, device=hidden.device)
    indices: list[int] = []
    losses: list[float] = []
    stopped_by = "size"
    for k in range(size):
        if naive:
            scores = candidate_losses_naive(base, hidden, a, kappa, k, y, loss)
        else:
            scores = candidate_losses(base, hidden, a, kappa, k, y, loss, sq_hidden=sq, chunk=chunk)
        if not replacement:
            scores = scores.masked_fill(taken.to(scores.device), math.inf)
        r = int(torch.argmin(scores))
        indices.append(r)
        taken[r] = True
        base = (k * base + kappa * hidden[:, r : r + 1] * a[r]) / (k + 1)
        losses.append(float(loss_value(base, y, loss)))
        if loss_target is not None and losses[-1] <= loss_target:
            stopped_by = "loss_target"
            break
    return Selection(indices=indices, losses=losses, replacement=replacement, stopped_by=stopped_by)


def subnetwork(model: TwoLayerNet, indices: list[int]) -> TwoLayerNet:
    """The selected multiset as a trainable width-|S| net: f_S = kappa/|S| sum a_r relu(w_r.x)."""
    idx = torch.tensor(indices, dtype=torch.long, device=model.w.device)
    sub = TwoLayerNet(
        model.w.shape[1],
        len(indices),
        model.a.shape[1],
        kappa_of(model) / len(idx),
        model.a.requires_grad,
    )
    with torch.no_grad():
        sub.w.copy_(model.w[idx])
        sub.a.copy_(model.a[idx])
    return sub.to(model.w.device)
