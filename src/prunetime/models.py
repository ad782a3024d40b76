"""The networks of the retraining studies, registered by name.

Every model exposes its prunable weight tensors in forward order through
:func:`weight_names`; biases are never pruned and never enter a bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunetime.backprop import Chain

ModelFactory = Callable[[], nn.Module]
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a model constructor so configs can name it."""

    def deco(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = factory
        return factory

    return deco


def _batched(x: torch.Tensor) -> bool:
    """Whether ``x`` is a tensor inside ``torch.func.vmap`` (the trial ensemble's forward)."""
    check = getattr(torch._C._functorch, "is_batchedtensor", None)
    return bool(check is not None and check(x))


class _MaxPool2(torch.autograd.Function):
    """2x2 max pooling (stride 2) of a contiguous NCHW map with autograd, as max_pool2d.

    On CPU, ``max_pool2d``'s forward with indices took 4.3 ms of a 21 ms LeNet-5 training
    step for the first (6 x 28 x 28) map. Here the forward is maxima of strided views, and
    the backward routes each output's gradient to the first maximum of its window in
    row-major order, exactly as max_pool2d does (ties included), from three comparison
    masks instead of an index tensor. Values and gradients equal max_pool2d's bitwise.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x6 = x.view(n, c, h // 2, 2, w // 2, 2)
        a, b = x6[:, :, :, 0, :, 0], x6[:, :, :, 0, :, 1]
        lo_a, lo_b = x6[:, :, :, 1, :, 0], x6[:, :, :, 1, :, 1]
        top, bottom = torch.maximum(a, b), torch.maximum(lo_a, lo_b)
        # 1.0 where the first of a pair is the maximum (ties go to the earlier element).
        first_top = (a >= b).to(x.dtype)
        first_bottom = (lo_a >= lo_b).to(x.dtype)
        in_top = (top >= bottom).to(x.dtype)
        ctx.save_for_backward(first_top, first_bottom, in_top)
        return torch.maximum(top, bottom)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        first_top, first_bottom, in_top = ctx.saved_tensors
        n, c, h2, w2 = grad.shape
        out = grad.new_empty(n, c, h2, 2, w2, 2)
        # g * m and g - g * m split g exactly (m is 0 or 1): one of the two is g, the other 0.
        g_top = grad * in_top
        g_bottom = grad - g_top
        torch.mul(g_top, first_top, out=out[:, :, :, 0, :, 0])
        torch.sub(g_top, out[:, :, :, 0, :, 0], out=out[:, :, :, 0, :, 1])
        torch.mul(g_bottom, first_bottom, out=out[:, :, :, 1, :, 0])
        torch.sub(g_bottom, out[:, :, :, 1, :, 0], out=out[:, :, :, 1, :, 1])
        return out.view(n, c, 2 * h2, 2 * w2)


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling (stride 2) of an NCHW map: max_pool2d's values and gradients, faster.

    Convergence checks and evaluations run the network under ``no_grad`` thousands of times;
    there, the maximum of the four strided quarter views gives exactly max_pool2d's values
    several times faster on CPU. With autograd, :class:`_MaxPool2` does the same forward
    and routes a tie to one input as max_pool2d does (on CPU; elsewhere max_pool2d's kernel).
    A non-contiguous map, an odd-sized map or one inside ``vmap`` goes to max_pool2d itself.
    """
    h, w = x.shape[-2:]
    if h % 2 or w % 2 or _batched(x):
        return F.max_pool2d(x, 2)
    if x.requires_grad and torch.is_grad_enabled():
        if x.dim() != 4 or not x.is_contiguous() or x.device.type != "cpu":
            return F.max_pool2d(x, 2)
        return _MaxPool2.apply(x)
    rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def conv_max_pool2(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``max_pool2(conv(x))``, for a one-channel input conv as one strided conv where no
    gradient is needed.

    A 1-channel conv does a few FLOPs per output and writes a map 4x the size of the pooled
    one, so on CPU it and its pooling run far below the machine's rate (a LeNet-5 check spent
    a fifth of its time there). Each pooled output is the maximum over the 2x2 offsets of the
    conv at that window, so the conv with the four offset copies of every filter (kernel
    k+1, stride 2, 4x the output channels) followed by a maximum over the copies gives the
    same values (only the float summation order may differ: zero taps are added) at half
    the cost. Training keeps conv + max_pool2d (its backward routes a tie to one input).
    """
    # The weight's own shape: a compacted network (fewer units) runs through the template
    # module with smaller weights (torch.func.functional_call).
    w = conv.weight
    k = conv.kernel_size
    pad = conv.padding
    fast = (
        not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
        and w.shape[1] == 1
        and conv.groups == 1
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and isinstance(pad, tuple)
        and k[0] == k[1]
        and pad[0] == pad[1]
        and (x.shape[-1] + 2 * pad[0] - k[0] + 1) % 2 == 0
        and (x.shape[-2] + 2 * pad[0] - k[0] + 1) % 2 == 0
    )
    if not fast:
        return max_pool2(conv(x))
    offsets = [F.pad(w, (dx, 1 - dx, dy, 1 - dy)) for dy in (0, 1) for dx in (0, 1)]
    bias = None if conv.bias is None else conv.bias.repeat(4)
    y = F.conv2d(x, torch.cat(offsets), bias, stride=2, padding=pad[0])
    # The four copies are consecutive blocks of channels: one reduction over a contiguous
    # axis (1.4x faster than three maxima of strided channel slices at 1000 images).
    n, _, h, wd = y.shape
    return y.reshape(n, 4, -1).amax(1).view(n, w.shape[0], h, wd)


class LeNet300100(nn.Module):
    """784-300-100-10 fully connected network (paper: sigmoid hidden units)."""

    # The weight applied to the flattened input: convergence checks skip its columns where
    # every evaluation image is zero (prunetime.ensemble._InputCut).
    input_weight = "fc1.weight"

    def __init__(self, activation: str = "sigmoid") -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)
        self.act: nn.Module = nn.Sigmoid() if activation == "sigmoid" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)

    def linear_chain(self) -> Chain:
        """Its layers as a chain: training steps take their gradients without autograd."""
        return Chain(
            ("fc1", "fc2", "fc3"), "sigmoid" if isinstance(self.act, nn.Sigmoid) else "relu"
        )


class LeNet5Paper(nn.Module):
    """LeNet-5 as built by John et al.: two 'same' 5x5 convs (6, 16), FC 784-84-10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=2)
        self.fc1 = nn.Linear(16 * 7 * 7, 84)
        self.fc2 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, 28, 28)
        # relu(pool(.)) == pool(relu(.)) exactly (both monotone); relu on the smaller map.
        x = torch.relu(conv_max_pool2(self.conv1, x))
        x = torch.relu(max_pool2(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class LeNet5Classic(nn.Module):
    """Classic LeNet-5 for 28x28 input: conv 6 (pad 2), conv 16 (valid), FC 400-120-84-10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, 28, 28)
        # relu(pool(.)) == pool(relu(.)) exactly (both monotone); relu on the smaller map.
        x = torch.relu(conv_max_pool2(self.conv1, x))
        x = torch.relu(max_pool2(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


@register_model("lenet300100")
def _lenet300100() -> nn.Module:
    return LeNet300100("sigmoid")


@register_model("lenet300100_relu")
def _lenet300100_relu() -> nn.Module:
    return LeNet300100("relu")


@register_model("lenet5")
def _lenet5() -> nn.Module:
    return LeNet5Paper()


@register_model("lenet5_classic")
def _lenet5_classic() -> nn.Module:
    return LeNet5Classic()


def weight_names(model: nn.Module) -> list[str]:
    """Names of the prunable weight tensors (conv and linear weights), in forward order."""
    return [
        f"{mod_name}.weight"
        for mod_name, mod in model.named_modules()
        if isinstance(mod, nn.Linear | nn.Conv2d)
    ]


def init_weights(model: nn.Module, scheme: str, std: float, generator: torch.Generator) -> None:
    """Initialise weights and biases; 'normal' draws both from N(0, std^2) as in the paper."""
    if scheme == "default":
        # PyTorch's own initialisation, made reproducible by reseeding from the generator.
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for mod in model.modules():
                if isinstance(mod, nn.Linear | nn.Conv2d):
                    mod.reset_parameters()
        return
    if scheme != "normal":
        raise ValueError(f"unknown init scheme {scheme!r}; allowed: 'normal', 'default'")
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Linear | nn.Conv2d):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=generator) * std)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=generator) * std)


def build_model(name: str) -> nn.Module:
    """Instantiate a registered model by name, with a clear error for unknown names."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; allowed: {sorted(MODELS)}") from None
    return factory()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
