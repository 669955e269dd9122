"""The sampled pre-activations of the group layers (bayescomp.layers) in training, as autograd Functions.

Local reparametrisation [KSW15]: per example, the Gaussian pre-activation b = m + √v ⊙ ε with its
mean m and variance v computed from the posterior (two matmuls or convolutions), and the group
scales z applied per example [LUW17]. Forward and backward are written out with fewer temporaries
than autograd makes, which is most of a BC step's cost beside the matrix products on a CPU: the
same mathematics as autograd of the plain expression (tests compare them; for ConvLRT bit for bit,
operation for operation). Not here: q(z), its sampling and the KL (bayescomp.layers, bayescomp.kl).

References:
  [LUW17] Louizos, Ullrich, Welling. Bayesian Compression for Deep Learning. NIPS 2017.
  [KSW15] Kingma, Salimans, Welling. Variational Dropout and the Local Reparameterization Trick. NIPS 2015.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-8  # added to the variance before its square root
Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # a convolution's stride, padding, dilation


class LinearLRT(torch.autograd.Function):
    """Sampled pre-activation of a Linear group layer, b = m + √v ⊙ ε, with
    m = (x⊙z) μᵀ + μ_b and v = (x⊙z)² exp(log σ²)ᵀ + exp(log σ_b²)  [LUW17] Eq. 6, [KSW15] Eq. 6.

    Forward and backward written out: the same arithmetic as autograd of that expression (tested
    against it), with fewer temporaries, which is most of a BC step's cost at LeNet-300's sizes.
    """

    @staticmethod
    def forward(ctx, x: Tensor, z: Tensor, w_mu: Tensor, w_logvar: Tensor, b_mu: Tensor,  # type: ignore[override]
                b_logvar: Tensor, eps: Tensor) -> Tensor:
        xz = x * z
        xz2 = xz * xz
        w_var, b_var = w_logvar.exp(), b_logvar.exp()
        sd = torch.addmm(b_var + EPS, xz2, w_var.t()).sqrt_()
        out = torch.addmm(b_mu, xz, w_mu.t()).addcmul_(sd, eps)
        ctx.save_for_backward(x, z, xz, xz2, w_mu, w_var, b_var, sd, eps)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, z, xz, xz2, w_mu, w_var, b_var, sd, eps = ctx.saved_tensors
        g_v = (g * eps).div_(sd).mul_(0.5)  # ∂/∂v of √v ε
        g_xz = torch.mm(g, w_mu).addcmul_(xz, torch.mm(g_v, w_var), value=2.0)
        g_x = g_xz * z if ctx.needs_input_grad[0] else None
        return (g_x, g_xz.mul_(x), torch.mm(g.t(), xz), torch.mm(g_v.t(), xz2).mul_(w_var),
                g.sum(0), g_v.sum(0).mul_(b_var), None)


class ConvLRT(torch.autograd.Function):
    """Sampled pre-activation of a Conv2d group layer, b = m z + √(v z² + EPS) ⊙ ε with
    m = x ∗ μ + μ_b and v = x² ∗ exp(log σ²) + exp(log σ_b²), z per example and filter
    [LUW17] Sec. 3 (conv case), [KSW15] Eq. 6. ε is drawn here, after the convolutions.

    The same arithmetic as autograd of that expression, operation for operation and in the order
    autograd accumulates the gradient of z (tested bit for bit against it), with fewer temporaries of
    the output's size: their elementwise passes dominate a BC step beside the convolutions. As in
    autograd, the output-sized intermediates are released before the convolutions' backward (a
    second backward, with retain_graph, recomputes them).
    """

    @staticmethod
    def forward(ctx, x: Tensor, z: Tensor, w_mu: Tensor, w_logvar: Tensor, b_mu: Tensor,  # type: ignore[override]
                b_logvar: Tensor, geometry: Geometry) -> Tensor:
        w_var, b_var = w_logvar.exp(), b_logvar.exp()
        z = z[:, :, None, None]
        x2, m, v, vz, sd = _conv_lrt_moments(x, z, w_mu, b_mu, w_var, b_var, geometry)
        eps = torch.randn_like(sd)
        out = (sd * eps).add_(m * z)
        ctx.geometry = geometry
        ctx.save_for_backward(x, z, w_mu, b_mu, w_var, b_var, eps)
        ctx.moments = x2, m, v, vz, sd  # not saved tensors: backward releases them
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, z, w_mu, b_mu, w_var, b_var, eps = ctx.saved_tensors
        x2, *moments = ctx.moments or _conv_lrt_moments(x, z, w_mu, b_mu, w_var, b_var, ctx.geometry)
        ctx.moments = None
        g_z, g_m, g_v = _conv_lrt_grads(g, z, eps, *moments)
        del moments  # released before the convolutions' backward, as autograd does
        stride, padding, dilation = ctx.geometry
        need_x = ctx.needs_input_grad[0]
        gx2, g_wvar, g_bvar = torch.ops.aten.convolution_backward(
            g_v, x2, w_var, [w_var.shape[0]], stride, padding, dilation, False, [0, 0], 1, [need_x, True, True])
        gx_m, g_wmu, g_bmu = torch.ops.aten.convolution_backward(
            g_m, x, w_mu, [w_mu.shape[0]], stride, padding, dilation, False, [0, 0], 1, [need_x, True, True])
        g_x = gx2.mul_(x).mul_(2.0).add_(gx_m) if need_x else None  # x² contributes 2 x ∂/∂(x²), exactly doubled
        return g_x, g_z.view(z.shape[:2]), g_wmu, g_wvar.mul_(w_var), g_bmu, g_bvar.mul_(b_var), None


def _conv_lrt_moments(x: Tensor, z: Tensor, w_mu: Tensor, b_mu: Tensor, w_var: Tensor, b_var: Tensor,
                      geometry: Geometry) -> tuple[Tensor, ...]:
    """x², m, v, v z and the standard deviation √(v z² + EPS) of ConvLRT; z: (B, G, 1, 1)."""
    stride, padding, dilation = geometry
    x2 = x * x
    m = F.conv2d(x, w_mu, b_mu, stride, padding, dilation)
    v = F.conv2d(x2, w_var, b_var, stride, padding, dilation)
    vz = v * z
    return x2, m, v, vz, (vz * z).add_(EPS).sqrt_()


def _conv_lrt_grads(g: Tensor, z: Tensor, eps: Tensor, m: Tensor, v: Tensor, vz: Tensor,
                    sd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of ConvLRT's output with respect to z, m and v, as autograd computes them."""
    g_s = (g * eps).div_(2 * sd)  # ∂/∂(v z²) of √(v z² + EPS) ε
    g_vz = g_s * z
    g_v = g_vz * z
    # ∂/∂z: the three products' terms, each summed over the filter's positions, added in autograd's order
    g_z = g_s.mul_(vz).sum((2, 3), keepdim=True)
    g_z += g_vz.mul_(v).sum((2, 3), keepdim=True)
    g_z += torch.mul(g, m, out=g_vz).sum((2, 3), keepdim=True)
    return g_z, g * z, g_v
