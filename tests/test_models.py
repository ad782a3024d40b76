"""The registered networks: shapes, parameter counts, weight names and initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunetime.models import (
    MODELS,
    build_model,
    conv_max_pool2,
    count_params,
    init_weights,
    max_pool2,
    register_model,
    weight_names,
)

EXPECTED_PARAMS = {
    # 784-300-100-10 with biases
    "lenet300100": 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,
    "lenet300100_relu": 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10,
    # paper LeNet-5: conv 5x5 x6, conv 5x5 x16 (same padding), FC 784-84-10
    "lenet5": (6 * 1 * 25 + 6) + (16 * 6 * 25 + 16) + (784 * 84 + 84) + (84 * 10 + 10),
    # classic LeNet-5: same convs, second one valid, FC 400-120-84-10
    "lenet5_classic": (6 * 1 * 25 + 6)
    + (16 * 6 * 25 + 16)
    + (400 * 120 + 120)
    + (120 * 84 + 84)
    + (84 * 10 + 10),
}

EXPECTED_WEIGHTS = {
    "lenet300100": ["fc1.weight", "fc2.weight", "fc3.weight"],
    "lenet300100_relu": ["fc1.weight", "fc2.weight", "fc3.weight"],
    "lenet5": ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"],
    "lenet5_classic": ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"],
}


def test_registry_holds_the_four_models():
    assert set(MODELS) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_logits_shape(name):
    model = build_model(name)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()
    # a flat [B, 784] input gives the same logits (models reshape their input)
    assert torch.allclose(model(x.reshape(3, 784)), out)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_counts(name):
    model = build_model(name)
    assert count_params(model) == EXPECTED_PARAMS[name]
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]


def test_layer_shapes_lenet5_paper():
    m = build_model("lenet5")
    assert m.conv1.weight.shape == (6, 1, 5, 5) and m.conv2.weight.shape == (16, 6, 5, 5)
    assert m.fc1.weight.shape == (84, 784) and m.fc2.weight.shape == (10, 84)
    # 'same' padding keeps 28x28 before the first pool: 16 * 7 * 7 = 784 after two pools
    feats = max_pool2(torch.relu(m.conv2(max_pool2(m.conv1(torch.zeros(1, 1, 28, 28))))))
    assert feats.shape == (1, 16, 7, 7)


@pytest.mark.parametrize("shape", [(3, 6, 28, 28), (2, 16, 14, 14), (2, 4, 7, 9)])
def test_max_pool2_equals_max_pool2d(shape):
    # The strided no-grad path must give max_pool2d's values exactly (odd maps: max_pool2d).
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x[0, 0, :2, :2] = 1.5  # a tie inside one window
    with torch.no_grad():
        assert torch.equal(max_pool2(x), F.max_pool2d(x, 2))
    # With autograd it is max_pool2d itself, ties routed to one input.
    xg = x.clone().requires_grad_(True)
    max_pool2(xg).sum().backward()
    xr = x.clone().requires_grad_(True)
    F.max_pool2d(xr, 2).sum().backward()
    assert torch.equal(xg.grad, xr.grad)


@pytest.mark.parametrize("shape", [(4, 6, 28, 28), (3, 16, 10, 10)])
def test_max_pool2_training_path_routes_ties_like_max_pool2d(shape):
    # Values in {0, 1, 2}: most windows hold two-, three- or four-way ties. The training path
    # (strided maxima and comparison masks) must give max_pool2d's values and send each
    # output's gradient to the same input, bitwise.
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, shape, generator=g).float()
    up = torch.randn(*shape[:2], shape[2] // 2, shape[3] // 2, generator=g)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = max_pool2(xa), F.max_pool2d(xb, 2)
    assert type(ya.grad_fn).__name__ == "_MaxPool2Backward"  # the fast path ran
    ya.backward(up)
    yb.backward(up)
    assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad)
    # a channels-last map goes to max_pool2d itself, with the same result
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    yc = max_pool2(xc)
    assert type(yc.grad_fn).__name__ != "_MaxPool2Backward"
    yc.backward(up)
    assert torch.equal(yc, yb) and torch.equal(xc.grad, xb.grad)


def test_lenet5_training_step_gradients_equal_max_pool2d_network():
    # The whole LeNet-5 training forward/backward with the fast pooling equals the same
    # network built from conv2d + max_pool2d: same loss, same gradients bitwise.
    torch.manual_seed(0)
    m = build_model("lenet5")
    x, y = torch.rand(8, 784), torch.randint(0, 10, (8,))
    x[:, :100] = 0  # blank rows: conv outputs equal to the bias, ties in every window there

    def reference(inp: torch.Tensor) -> torch.Tensor:
        h = inp.reshape(-1, 1, 28, 28)
        h = torch.relu(F.max_pool2d(m.conv1(h), 2))
        h = torch.relu(F.max_pool2d(m.conv2(h), 2))
        return m.fc2(torch.relu(m.fc1(h.flatten(1))))

    params = list(m.parameters())
    fast = torch.autograd.grad(F.cross_entropy(m(x), y), params)
    ref = torch.autograd.grad(F.cross_entropy(reference(x), y), params)
    for a, b in zip(fast, ref, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["lenet5", "lenet5_classic"])
def test_conv_forward_same_with_and_without_grad(name):
    # Evaluation (no_grad: strided pooling, conv1 and its pooling as one strided conv) and
    # the training forward give the same logits (up to the summation order of added zeros).
    torch.manual_seed(0)
    m = build_model(name)
    x = torch.rand(16, 784)
    with torch.no_grad():
        fast = m(x)
    slow = m(x).detach()
    assert torch.allclose(fast, slow, rtol=1e-6, atol=1e-6)
    assert torch.equal(fast.argmax(1), slow.argmax(1))


@pytest.mark.parametrize(("cin", "pad", "size"), [(1, 2, 28), (1, 0, 14), (1, 1, 9), (3, 2, 12)])
def test_conv_max_pool2_equals_conv_then_max_pool2d(cin, pad, size):
    # The fused no-grad path (1-channel convs whose output has even sides) gives the values
    # of conv + max_pool2d; the rest (odd output, several channels, autograd) is that itself.
    gen = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(cin, 6, 5, padding=pad)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        x = torch.rand(32, cin, size, size, generator=gen)
        x[:, :, :3] = 0.0  # an MNIST-like blank border: ties of the bias value in windows
        ref = F.max_pool2d(conv(x), 2)
        calls: list[int] = []
        hook = conv.register_forward_hook(lambda *_: calls.append(1))
        got = conv_max_pool2(conv, x)
        hook.remove()
    fused = cin == 1 and (size + 2 * pad - 4) % 2 == 0
    assert bool(calls) is not fused  # the fused path does not call the module
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-5)
    xg = x.clone().requires_grad_(True)
    out = conv_max_pool2(conv, xg)
    out.sum().backward()  # autograd: conv + max_pool2d, gradients as in training
    assert torch.equal(out.detach(), F.max_pool2d(conv(x), 2))


@pytest.mark.parametrize("name", sorted(EXPECTED_WEIGHTS))
def test_weight_names_in_forward_order(name):
    model = build_model(name)
    names = weight_names(model)
    assert names == EXPECTED_WEIGHTS[name]
    params = dict(model.named_parameters())
    assert all(n in params and params[n].dim() in (2, 4) for n in names)
    # forward order: each layer's input size is the previous layer's output size
    widths = [params[n].shape for n in names]
    for prev, nxt in zip(widths, widths[1:], strict=False):
        if len(prev) == 4 and len(nxt) == 4:
            assert nxt[1] == prev[0]
        elif len(prev) == 2:
            assert nxt[1] == prev[0]


def test_activation_variants():
    sig, relu = build_model("lenet300100"), build_model("lenet300100_relu")
    assert isinstance(sig.act, nn.Sigmoid) and isinstance(relu.act, nn.ReLU)


@pytest.mark.parametrize("std", [0.1, 1.0])
def test_init_normal_std_and_reproducible(std):
    model = build_model("lenet300100")
    init_weights(model, "normal", std, torch.Generator().manual_seed(0))
    w = model.fc1.weight.detach()  # 235200 samples: the sample std is within ~0.3 %
    assert float(w.std()) == pytest.approx(std, rel=0.01)
    assert abs(float(w.mean())) < 0.01 * std
    biases = torch.cat([model.fc1.bias, model.fc2.bias, model.fc3.bias]).detach()  # 410 samples
    assert float(biases.std()) == pytest.approx(std, rel=0.15)
    assert float(model.fc2.weight.detach().std()) == pytest.approx(std, rel=0.03)

    again = build_model("lenet300100")
    init_weights(again, "normal", std, torch.Generator().manual_seed(0))
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    other = build_model("lenet300100")
    init_weights(other, "normal", std, torch.Generator().manual_seed(1))
    assert not torch.equal(other.fc1.weight, model.fc1.weight)


def test_init_normal_conv_model():
    model = build_model("lenet5")
    init_weights(model, "normal", 1.0, torch.Generator().manual_seed(0))
    assert float(model.fc1.weight.detach().std()) == pytest.approx(1.0, rel=0.02)  # 65856 samples
    assert float(model.conv2.weight.detach().std()) == pytest.approx(1.0, rel=0.05)  # 2400 samples


def test_init_default_is_reproducible_and_isolated():
    a, b = build_model("lenet5_classic"), build_model("lenet5_classic")
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    init_weights(a, "default", 0.0, torch.Generator().manual_seed(4))
    after = torch.rand(3)
    init_weights(b, "default", 0.0, torch.Generator().manual_seed(4))
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    # the global RNG stream is untouched by the initialisation
    assert torch.equal(before, after)
    # PyTorch's default init is uniform within +-1/sqrt(fan_in): fc1 has fan_in 400
    assert float(a.fc1.weight.detach().abs().max()) <= 1 / 400**0.5 + 1e-7


def test_init_and_build_reject_unknown_names():
    with pytest.raises(ValueError, match="xavier"):
        init_weights(build_model("lenet5"), "xavier", 0.1, torch.Generator())
    with pytest.raises(ValueError, match="resnet") as info:
        build_model("resnet")
    assert "lenet300100" in str(info.value)
    with pytest.raises(ValueError, match="registered twice"):
        register_model("lenet5")(lambda: nn.Linear(1, 1))
