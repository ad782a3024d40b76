"""Bernoulli-gated networks, their expected cost and physical removal (THEORY.md D).

Every removable structure carries a gate xi ~ Bernoulli(theta) with theta in [0, 1] stored
directly as a trainable parameter:

* unit gates: one per hidden unit of a residual MLP block (the rows of ``fc1``) or per
  filter of the first convolution of a ResNet basic block;
* block gates: one per residual block; with xi = 0 the block is its shortcut alone.

In training, :meth:`GatedNet.resample` draws one xi per structure for the next minibatch
(shared by its samples); in evaluation the gate is round(theta), here 1 when theta >= 0.5.
The gradient for theta comes from the straight-through estimator (the forward pass uses xi,
the backward pass treats the gate as theta) or, for block gates, from the exact two-pass
difference L(xi_b = 1) - L(xi_b = 0) (:func:`difference_grads`), whose expectation is the
exact derivative of the expected loss because that loss is multilinear in theta.

The expected cost (:func:`expected_cost`) is multilinear in the thetas and matches, for
binary thetas, what ``torch.utils.flop_counter`` counts on the physically rounded network
(:func:`count_flops`, :func:`count_params`). Removal (:func:`remove_units`,
:func:`remove_block`) slices the weights, the next layer's inputs, batch-norm entries and the
optimizer state, so the network really gets smaller; in evaluation mode it computes the same
function as before.

Unit pruning keeps at least one unit per block: a block without units is a constant, which
only its block gate can remove.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

N_CLASSES = 10
UNIT, BLOCK = "unit", "block"


class GateSet(nn.Module):
    """The gates of one group of structures (the units of a block, or the block itself).

    ``active`` gates are sampled and trained; inactive ones are fixed at 1 (the variant does
    not prune this kind of structure, or the network has been made deterministic).
    """

    def __init__(self, n: int, kind: str, init: float = 1.0, active: bool = True) -> None:
        super().__init__()
        if kind not in (UNIT, BLOCK):
            raise ValueError(f"gate kind {kind!r}; allowed: {UNIT!r}, {BLOCK!r}")
        self.kind = kind
        self.active = active
        self.estimator = "ste"
        self.theta = nn.Parameter(torch.full((n,), float(init)), requires_grad=active)
        self.register_buffer("xi", torch.ones(n))
        self.register_buffer("low_count", torch.zeros(n, dtype=torch.long))
        # Structure ids that survive removal (theta trajectories stay labelled).
        self.register_buffer("ids", torch.arange(n))

    def __len__(self) -> int:
        return self.theta.numel()

    def sample(self, generator: torch.Generator | None) -> None:
        with torch.no_grad():
            p = self.theta.detach().clamp(0.0, 1.0)
            self.xi = torch.bernoulli(p, generator=generator)

    def value(self) -> torch.Tensor | None:
        """The multiplier for the forward pass, or None for 'all ones' (skip the product)."""
        if not self.active:
            return None
        if not self.training:
            return (self.theta.detach() >= 0.5).to(self.theta.dtype)
        if self.estimator == "ste":
            return self.xi + (self.theta - self.theta.detach())  # exactly xi forward
        return self.xi  # difference estimator: theta's data gradient comes from two passes

    def project(self) -> None:
        with torch.no_grad():
            self.theta.clamp_(0.0, 1.0)


def _bcast(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gate vector shaped to multiply the channel/feature axis 1 of ``like``."""
    return g.view(1, -1, *([1] * (like.dim() - 2)))


# --------------------------------------------------------------------------- blocks


class MLPBlock(nn.Module):
    """x + xi_b * fc2(xi_u * relu(fc1(x))): a gated nonlinear section with an identity skip."""

    def __init__(self, width: int, hidden: int, bid: int) -> None:
        super().__init__()
        self.bid = bid
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.units = GateSet(hidden, UNIT)
        self.gate = GateSet(1, BLOCK)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        g = self.units.value()
        if g is not None:
            h = h * g
        return self.fc2(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        b = self.gate.value()
        if b is not None:
            out = out * b
        return x + out

    def cost_coeffs(self) -> tuple[float, float, float, float]:
        """(FLOPs per unit, FLOPs per block, params per unit, params per block), per sample."""
        w = self.fc1.in_features
        return 4.0 * w, 0.0, 2.0 * w + 1.0, float(w)

    def slice_units(self, keep: torch.Tensor, opts: Iterable[torch.optim.Optimizer]) -> None:
        _slice_param(self.fc1, "weight", keep, 0, opts)
        _slice_param(self.fc1, "bias", keep, 0, opts)
        _slice_param(self.fc2, "weight", keep, 1, opts)
        self.fc1.out_features = self.fc2.in_features = len(keep)
        _slice_gates(self.units, keep, opts)

    def shortcut_only(self) -> nn.Module:
        return Skip(self.bid)


class Skip(nn.Module):
    """A removed identity-skip block: the identity."""

    def __init__(self, bid: int) -> None:
        super().__init__()
        self.bid = bid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ConvBlock(nn.Module):
    """ResNet basic block relu(xi_b * bn2(conv2(xi_u * relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, c_in: int, hidden: int, c_out: int, stride: int, hw_out: int, bid: int):
        super().__init__()
        self.bid = bid
        self.hw_out = hw_out  # output height * width, for the cost model
        self.conv1 = nn.Conv2d(c_in, hidden, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.units = GateSet(hidden, UNIT)
        self.gate = GateSet(1, BLOCK)
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
        else:
            self.shortcut = nn.Identity()

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        g = self.units.value()
        if g is not None:
            h = h * _bcast(g, h)
        return self.bn2(self.conv2(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        b = self.gate.value()
        if b is not None:
            out = out * b
        return F.relu(out + self.shortcut(x))

    def cost_coeffs(self) -> tuple[float, float, float, float]:
        c_in, c_out = self.conv1.in_channels, self.conv2.out_channels
        k = self.conv1.kernel_size[0] * self.conv1.kernel_size[1]
        return (
            2.0 * k * (c_in + c_out) * self.hw_out,
            0.0,
            k * (c_in + c_out) + 2.0,
            2.0 * c_out,
        )

    def slice_units(self, keep: torch.Tensor, opts: Iterable[torch.optim.Optimizer]) -> None:
        _slice_param(self.conv1, "weight", keep, 0, opts)
        _slice_param(self.conv2, "weight", keep, 1, opts)
        for name in ("weight", "bias"):
            _slice_param(self.bn1, name, keep, 0, opts)
        self.bn1.running_mean = self.bn1.running_mean[keep].clone()
        self.bn1.running_var = self.bn1.running_var[keep].clone()
        self.bn1.num_features = len(keep)
        self.conv1.out_channels = self.conv2.in_channels = len(keep)
        _slice_gates(self.units, keep, opts)

    def shortcut_only(self) -> nn.Module:
        return ShortcutBlock(self.shortcut, self.bid, self.hw_out)


class ShortcutBlock(nn.Module):
    """A removed basic block: relu(shortcut(x)), the block's output with xi_b = 0."""

    def __init__(self, shortcut: nn.Module, bid: int, hw_out: int) -> None:
        super().__init__()
        self.bid = bid
        self.hw_out = hw_out
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x))


GATED_BLOCKS = (MLPBlock, ConvBlock)


# --------------------------------------------------------------------------- networks


class GatedNet(nn.Module):
    """stem -> residual blocks -> head; subclasses define the three parts."""

    stem: nn.Module
    blocks: nn.ModuleList
    head: nn.Module
    input_shape: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)

    def gated_blocks(self) -> list[MLPBlock | ConvBlock]:
        return [b for b in self.blocks if isinstance(b, GATED_BLOCKS)]

    def gate_sets(self) -> Iterator[tuple[MLPBlock | ConvBlock, GateSet]]:
        for b in self.gated_blocks():
            yield b, b.units
            yield b, b.gate

    def thetas(self) -> list[nn.Parameter]:
        return [g.theta for _, g in self.gate_sets() if g.active]

    def weights(self) -> list[nn.Parameter]:
        """Every trainable tensor except the gates' thetas."""
        return [p for n, p in self.named_parameters() if not n.endswith("theta")]

    def resample(self, generator: torch.Generator | None = None) -> None:
        for _, g in self.gate_sets():
            if g.active:
                g.sample(generator)

    def project(self) -> None:
        for _, g in self.gate_sets():
            g.project()

    def configure(self, unit: bool, block: bool, estimator: str = "ste", init: float = 1.0):
        """Which gate kinds are trained (the variant), the block estimator and theta's start."""
        if estimator not in ("ste", "difference"):
            raise ValueError(f"estimator {estimator!r}; allowed: 'ste', 'difference'")
        for _, g in self.gate_sets():
            g.active = unit if g.kind == UNIT else block
            g.theta.requires_grad_(g.active)
            g.estimator = estimator if g.kind == BLOCK else "ste"
            with torch.no_grad():
                g.theta.fill_(init if g.active else 1.0)
        return self


class ResMLP(GatedNet):
    """Flatten -> Linear(d_in, width) + ReLU -> ``blocks`` gated MLP blocks -> Linear head."""

    def __init__(self, input_shape: tuple[int, ...], width: int, hidden: int, blocks: int):
        super().__init__()
        self.input_shape = tuple(input_shape)
        d_in = math.prod(input_shape)
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(d_in, width), nn.ReLU())
        self.blocks = nn.ModuleList(MLPBlock(width, hidden, i) for i in range(blocks))
        self.head = nn.Linear(width, N_CLASSES)

    def fixed_cost(self) -> tuple[float, float]:
        lin = [self.stem[1], self.head]
        return (
            sum(2.0 * m.in_features * m.out_features for m in lin),
            float(sum(p.numel() for m in lin for p in m.parameters())),
        )


class ResNet(GatedNet):
    """CIFAR-style ResNet of depth 6n + 2 (8, 14, 20, ...): three stages of n basic blocks
    with widths w, 2w, 4w; the first block of stages 2 and 3 halves the resolution."""

    def __init__(self, input_shape: tuple[int, ...], depth: int, width: int):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth {depth}: must be 6n + 2 with n >= 1 (8, 14, 20, ...)")
        self.input_shape = tuple(input_shape)
        c, h, w = input_shape
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self._stem_hw = h * w
        blocks, c_in, bid = [], width, 0
        for stage in range(3):
            c_out = width * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                if stride == 2:
                    h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
                blocks.append(ConvBlock(c_in, c_out, c_out, stride, h * w, bid))
                c_in, bid = c_out, bid + 1
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, N_CLASSES))

    def fixed_cost(self) -> tuple[float, float]:
        conv = self.stem[0]
        flops = 2.0 * conv.weight.numel() * self._stem_hw
        params = sum(p.numel() for p in self.stem.parameters())
        lin = self.head[2]
        flops += 2.0 * lin.in_features * lin.out_features
        params += sum(p.numel() for p in lin.parameters())
        for b in self.blocks:
            sc = b.shortcut
            if isinstance(sc, nn.Sequential):
                flops += 2.0 * sc[0].weight.numel() * b.hw_out
                params += sum(p.numel() for p in sc.parameters())
        return flops, float(params)


def build_gated(spec: dict[str, Any], input_shape: tuple[int, ...]) -> GatedNet:
    """A gated network from its config entry (``gates.networks.<name>``)."""
    kind = spec["model"]
    if kind == "resmlp":
        return ResMLP(input_shape, spec["width"], spec["hidden"], spec["blocks"])
    if kind == "resnet":
        return ResNet(input_shape, spec["depth"], spec["width"])
    raise ValueError(f"gates network model {kind!r}; allowed: 'resmlp', 'resnet'")


# --------------------------------------------------------------------------- cost


@dataclass
class Cost:
    """Expected FLOPs (per sample, forward) and parameters as tensors (differentiable)."""

    flops: torch.Tensor
    params: torch.Tensor


def _theta_or_one(g: GateSet) -> torch.Tensor:
    """Theta in float64 (FLOP counts exceed float32's exact integers), or 1 if inactive."""
    return g.theta.double() if g.active else torch.ones_like(g.theta.detach(), dtype=torch.float64)


def expected_cost(model: GatedNet, units_full: bool = False) -> Cost:
    """E[FLOPs] and E[params] of the stochastic network, multilinear in the thetas.

    Block b contributes theta_b * (sum_j theta_bj * per_unit + per_block); inactive gates
    count as 1. With ``units_full`` every unit gate counts as 1 (the cost of the blocks
    alone, used by the layer-vs-unit weighting).
    """
    f0, p0 = model.fixed_cost()
    flops = torch.tensor(f0, dtype=torch.float64)
    params = torch.tensor(p0, dtype=torch.float64)
    for b in model.gated_blocks():
        fu, fb, pu, pb = b.cost_coeffs()
        u = torch.ones(len(b.units), dtype=torch.float64) if units_full else _theta_or_one(b.units)
        z = _theta_or_one(b.gate).sum()
        flops = flops + z * (u.sum() * fu + fb)
        params = params + z * (u.sum() * pu + pb)
    return Cost(flops, params)


@dataclass(frozen=True)
class CostWeights:
    """The user's trade-offs: ``lam`` accuracy vs complexity, ``flops_weight`` FLOPs vs
    parameters (1 = FLOPs only), ``layer_weight`` layer vs unit pruning (1 = blocks only)."""

    lam: float
    flops_weight: float
    layer_weight: float
    flops_full: float
    params_full: float


def cost_weights(model: GatedNet, lam: float, flops_weight: float, layer_weight: float):
    """Weights with the normalisers taken from ``model`` with every gate at 1 (the full net)."""
    full = full_cost(model)
    return CostWeights(lam, flops_weight, layer_weight, full[0], full[1])


def full_cost(model: GatedNet) -> tuple[float, float]:
    f0, p0 = model.fixed_cost()
    for b in model.gated_blocks():
        fu, fb, pu, pb = b.cost_coeffs()
        n = len(b.units)
        f0 += n * fu + fb
        p0 += n * pu + pb
    return f0, p0


def normalised_cost(model: GatedNet, w: CostWeights, units_full: bool = False) -> torch.Tensor:
    """C(theta) = a E[FLOPs]/FLOPs_full + (1 - a) E[params]/params_full (a = flops_weight)."""
    c = expected_cost(model, units_full)
    return w.flops_weight * c.flops / w.flops_full + (1 - w.flops_weight) * c.params / w.params_full


def complexity_term(model: GatedNet, w: CostWeights) -> torch.Tensor:
    """lam * [(1 - r) C(theta_u, theta_b) + r C(1, theta_b)], r = layer_weight.

    r = 0 charges every structure its true expected cost; r > 0 also charges each block its
    full size whatever its units do, so blocks are pushed out harder than units.
    """
    if w.lam == 0:
        return torch.zeros(())
    c = normalised_cost(model, w)
    if w.layer_weight:
        c = (1 - w.layer_weight) * c + w.layer_weight * normalised_cost(model, w, True)
    return (w.lam * c).float()


# --------------------------------------------------------------------------- counting


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs of one sample in evaluation mode, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    """Trainable tensor entries of the network, gates excluded (they are training-only)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.endswith("theta"))


def architecture(model: GatedNet) -> list[dict[str, Any]]:
    """Per original block: kept or not and its units (hidden units / filters)."""
    out = []
    for b in model.blocks:
        gated = isinstance(b, GATED_BLOCKS)
        out.append({"block": b.bid, "kept": gated, "units": len(b.units) if gated else 0})
    return out


# --------------------------------------------------------------------------- removal


def _swap_in_optimizers(
    opts: Iterable[torch.optim.Optimizer],
    old: nn.Parameter,
    new: nn.Parameter | None,
    slicer: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """Replace ``old`` by ``new`` (or drop it) in every optimizer, slicing its state."""
    for opt in opts:
        for group in opt.param_groups:
            params = group["params"]
            for i, p in enumerate(params):
                if p is old:
                    if new is None:
                        del params[i]
                    else:
                        params[i] = new
                    break
        state = opt.state.pop(old, None)
        if state is not None and new is not None:
            opt.state[new] = {
                k: (slicer(v) if torch.is_tensor(v) and v.shape == old.shape else v)
                for k, v in state.items()
            }


def _slice_param(
    module: nn.Module,
    name: str,
    keep: torch.Tensor,
    dim: int,
    opts: Iterable[torch.optim.Optimizer],
) -> None:
    old = getattr(module, name)
    new = nn.Parameter(old.detach().index_select(dim, keep).clone(), old.requires_grad)
    _swap_in_optimizers(opts, old, new, lambda t: t.index_select(dim, keep).clone())
    setattr(module, name, new)


def _slice_gates(g: GateSet, keep: torch.Tensor, opts: Iterable[torch.optim.Optimizer]) -> None:
    _slice_param(g, "theta", keep, 0, opts)
    g.xi = g.xi[keep].clone()
    g.low_count = g.low_count[keep].clone()
    g.ids = g.ids[keep].clone()


def remove_units(
    block: MLPBlock | ConvBlock, drop: torch.Tensor, opts: Iterable[torch.optim.Optimizer] = ()
) -> int:
    """Physically remove the units flagged in ``drop`` (bool) from ``block``; return how many."""
    keep = torch.nonzero(~drop.to("cpu")).flatten().to(block.units.theta.device)
    n = int(drop.sum())
    if n:
        block.slice_units(keep, list(opts))
    return n


def remove_block(
    model: GatedNet, block: MLPBlock | ConvBlock, opts: Iterable[torch.optim.Optimizer] = ()
) -> None:
    """Replace ``block`` by its shortcut alone and drop its tensors from the optimizers."""
    opts = list(opts)
    sc_params = {id(p) for p in getattr(block, "shortcut", nn.Identity()).parameters()}
    for p in block.parameters():
        if id(p) not in sc_params:
            _swap_in_optimizers(opts, p, None, lambda t: t)
    idx = next(i for i, b in enumerate(model.blocks) if b is block)
    model.blocks[idx] = block.shortcut_only()


def round_gates(model: GatedNet, opts: Iterable[torch.optim.Optimizer] = (), min_units: int = 1):
    """Make the network deterministic: remove what rounds to 0, fix the rest at 1.

    Returns (units removed, blocks removed). A block keeps at least ``min_units`` units.
    """
    opts = list(opts)
    units = blocks = 0
    for b in list(model.gated_blocks()):
        if b.gate.active and float(b.gate.theta.detach()) < 0.5:
            remove_block(model, b, opts)
            blocks += 1
            continue
        if b.units.active:
            drop = _limit_drop(b.units.theta.detach() < 0.5, b.units.theta.detach(), min_units)
            units += remove_units(b, drop, opts)
    for _, g in model.gate_sets():
        with torch.no_grad():
            g.theta.fill_(1.0)
        g.active = False
        g.theta.requires_grad_(False)
    return units, blocks


def _limit_drop(drop: torch.Tensor, theta: torch.Tensor, min_keep: int) -> torch.Tensor:
    """``drop`` with the largest-theta dropped units kept back until ``min_keep`` remain."""
    keep_n = int((~drop).sum())
    if keep_n >= min_keep:
        return drop
    drop = drop.clone()
    order = torch.argsort(theta, descending=True, stable=True)
    for i in order:
        if keep_n >= min_keep:
            break
        if drop[i]:
            drop[i] = False
            keep_n += 1
    return drop


# --------------------------------------------------------------------------- estimators


@contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Extra forward passes in training mode that leave BN running statistics untouched."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom


@torch.no_grad()
def difference_grads(
    model: GatedNet, x: torch.Tensor, y: torch.Tensor
) -> dict[MLPBlock | ConvBlock, float]:
    """L(xi_b = 1) - L(xi_b = 0) for every active block gate, other gates at their samples.

    Two forward passes per block on the same minibatch; averaged over the sampling of the
    other gates this is exactly d E[L] / d theta_b (E[L] is linear in each theta_b).
    """
    out = {}
    with frozen_batchnorm_stats(model):
        for b in model.gated_blocks():
            g = b.gate
            if not g.active:
                continue
            saved = g.xi.clone()
            losses = []
            for v in (1.0, 0.0):
                g.xi = torch.full_like(saved, v)
                losses.append(float(F.cross_entropy(model(x), y)))
            g.xi = saved
            out[b] = losses[0] - losses[1]
    return out
