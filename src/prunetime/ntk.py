"""Neural tangent kernel of the two-layer ReLU network and its smallest eigenvalue lambda0.

THEORY.md C puts the threshold at T* ~ (2 / (eta lambda0)) log(C m / (delta eps)), with lambda0
the smallest eigenvalue of the NTK Gram matrix. Two estimates, both on a subsample:

* :func:`empirical_ntk`: the network's own kernel at given weights, via torch.func (per-sample
  gradients of every output w.r.t. every parameter), averaged over the output classes;
* :func:`infinite_width_gram`: the closed form of H_ij = E_w[x_i.x_j 1{w.x_i >= 0, w.x_j >= 0}]
  for w ~ N(0, I): x_i.x_j (pi - theta_ij) / (2 pi), theta_ij the angle between x_i and x_j.

:func:`two_layer_ntk` is the same empirical kernel written out for this architecture; it
checks the torch.func result and is cheap enough for large subsamples.
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call, grad, vmap

from prunetime.greedy import TwoLayerNet


def empirical_ntk(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """K_ij = (1/C) sum_c <d f_c(x_i)/d theta, d f_c(x_j)/d theta> over trained parameters ([n, n]).

    theta is every parameter with ``requires_grad`` (the kernel of the training dynamics);
    one output class at a time, so memory stays at one [n, n_params] Jacobian.
    """
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    n = x.shape[0]
    n_out = int(model(x[:1]).shape[1])

    def f_single(p: dict[str, torch.Tensor], xi: torch.Tensor, c: int) -> torch.Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),))[0, c]

    kernel = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for c in range(n_out):
        jac = vmap(grad(f_single), in_dims=(None, 0, None))(params, x, c)
        flat = torch.cat([j.reshape(n, -1) for j in jac.values()], dim=1)
        kernel += (flat @ flat.T).to(torch.float64)  # float32 product: 6x faster than float64
    return kernel / n_out


def two_layer_ntk(model: TwoLayerNet, x: torch.Tensor) -> torch.Tensor:
    """The class-averaged empirical NTK of :class:`TwoLayerNet` in closed form ([n, n]).

    d f_c / d w_r = s a_rc 1{w_r.x > 0} x and d f_c / d a_rc' = s relu(w_r.x) [c = c'], so
    K_ij = s^2 [ (x_i.x_j) sum_r mean_c(a_rc^2) 1_ir 1_jr + sum_r relu_ir relu_jr ], the second
    term only when the output weights are trained.
    """
    xd = x.to(torch.float64)
    pre = xd @ model.w.detach().to(torch.float64).T
    act = (pre > 0).to(torch.float64)
    relu = pre.clamp_min(0)
    a2 = model.a.detach().to(torch.float64).pow(2).mean(1)
    first = (xd @ xd.T) * ((act * a2) @ act.T)
    second = relu @ relu.T if model.a.requires_grad else 0.0
    return model.out_scale**2 * (first + second)


def infinite_width_gram(x: torch.Tensor) -> torch.Tensor:
    """H^inf_ij = x_i.x_j (pi - arccos(cos theta_ij)) / (2 pi): the expectation over w ~ N(0, I)."""
    xd = x.to(torch.float64)
    dots = xd @ xd.T
    norms = xd.norm(dim=1).clamp_min(1e-300)
    cos = (dots / (norms[:, None] * norms[None, :])).clamp(-1.0, 1.0)
    return dots * (math.pi - torch.arccos(cos)) / (2 * math.pi)


def smallest_eigenvalue(kernel: torch.Tensor) -> float:
    """lambda_min of a symmetric kernel matrix (symmetrised first against rounding)."""
    k = kernel.to(torch.float64)
    return float(torch.linalg.eigvalsh((k + k.T) / 2)[0])
