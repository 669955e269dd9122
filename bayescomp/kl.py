"""KL divergences of Bayesian Compression, as pure functions of posterior parameters (summed).

References:
  [LUW17] Louizos, Ullrich, Welling. Bayesian Compression for Deep Learning. NIPS 2017.
  [MAV17] Molchanov, Ashukha, Vetrov. Variational Dropout Sparsifies Deep Neural Networks. ICML 2017.
  HORSESHOE.md (../shared) §3: the closed forms below, checked there against quadrature.
Shape-scale convention: Gamma(a, θ) ∝ x^(a-1) e^(-x/θ); InvGamma(a, b) ∝ x^(-a-1) e^(-b/x).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

K1, K2, K3 = 0.63576, 1.87320, 1.48695  # [MAV17] Eq. 14
_HALF_LOG_2PI_E = 0.5 * (1.0 + math.log(2 * math.pi))


def kl_normal_jeffreys(log_alpha: Tensor) -> Tensor:
    """KL(q(z) || p(z) ∝ 1/|z|) for q(z) = N(μ, α μ²), up to a constant, approximated. [MAV17] Eq. 14, [LUW17] Eq. 9"""
    neg_kl = K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1
    return -neg_kl.sum()


def kl_gaussian_std_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) || N(0, 1)), summed. [LUW17] Eq. 8 (weights given the scales, non-centred)

    Evaluated by a fused autograd function: it runs on every weight at every step, and the
    straightforward expression costs as much as the layer's matrix products on a CPU.
    """
    return _GaussianKL.apply(mu, logvar)


class _GaussianKL(torch.autograd.Function):
    """½ Σ (σ² − log σ² + μ² − 1), with its gradient (μ, ½(σ² − 1)) computed from the saved σ²."""

    @staticmethod
    def forward(ctx, mu: Tensor, logvar: Tensor) -> Tensor:  # type: ignore[override]
        var = logvar.exp()
        ctx.save_for_backward(mu, logvar)
        ctx.var = var  # not a saved tensor: backward consumes it in place
        flat = mu.reshape(-1)
        return 0.5 * (var.sum() - logvar.sum() + torch.dot(flat, flat) - mu.numel())

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        mu, logvar = ctx.saved_tensors
        var = ctx.var if ctx.var is not None else logvar.exp()  # a second backward (retain_graph) recomputes
        ctx.var = None
        # var is this function's own buffer: turned into the gradient in place (no new tensor per layer)
        return grad * mu, var.sub_(1.0).mul_(0.5 * grad)


def kl_lognormal_gamma(mu: Tensor, logvar: Tensor, shape: float, scale: float) -> Tensor:
    """KL(LogNormal(μ, σ²) || Gamma(shape, scale)), summed. HORSESHOE.md §3 (exact form)"""
    return _LogNormalGammaKL.apply(mu, logvar, shape, scale)


def kl_lognormal_invgamma(mu: Tensor, logvar: Tensor, shape: float, scale: float) -> Tensor:
    """KL(LogNormal(μ, σ²) || InvGamma(shape, scale)), summed. HORSESHOE.md §3 (exact form)"""
    return _LogNormalInvGammaKL.apply(mu, logvar, shape, scale)


# The two log-normal KLs run on a few scale factors per layer, so they cost what their operations
# cost; each is one autograd node whose backward is autograd's for its expression, written out
# (the same operations in the same order, so the same float32 bits; tested against it).

class _LogNormalGammaKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu: Tensor, logvar: Tensor, shape: float, scale: float) -> Tensor:  # type: ignore[override]
        var = logvar.exp()
        e = torch.exp(mu + 0.5 * var)  # E[z] of the log-normal
        ctx.save_for_backward(var, e)
        ctx.shape, ctx.scale = shape, scale
        return (shape * math.log(scale) + math.lgamma(shape) - shape * mu
                + e / scale - 0.5 * logvar - _HALF_LOG_2PI_E).sum()  # HORSESHOE.md §3

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        var, e = ctx.saved_tensors
        g = grad.expand(var.shape)
        g_e = g / ctx.scale * e
        return g_e + -g * ctx.shape, g_e * 0.5 * var + -g * 0.5, None, None


class _LogNormalInvGammaKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu: Tensor, logvar: Tensor, shape: float, scale: float) -> Tensor:  # type: ignore[override]
        var = logvar.exp()
        e = torch.exp(0.5 * var - mu)  # E[1/z] of the log-normal
        ctx.save_for_backward(var, e)
        ctx.shape, ctx.scale = shape, scale
        return (-shape * math.log(scale) + math.lgamma(shape) + shape * mu
                + scale * e - 0.5 * logvar - _HALF_LOG_2PI_E).sum()  # HORSESHOE.md §3

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        var, e = ctx.saved_tensors
        g = grad.expand(var.shape)
        g_e = g * ctx.scale * e
        return g * ctx.shape + -g_e, g_e * 0.5 * var + -g * 0.5, None, None


def kl_lognormal_gamma_appendix(mu: Tensor, logvar: Tensor, tau0: float) -> Tensor:
    """The s_a KL as the reimplementations transcribe [LUW17] App. eq. 34 (HORSESHOE.md §3).

    Equals the exact KL to Gamma(½, scale τ0) minus 1.5 log τ0, i.e. effectively s ~ C⁺(0, √τ0).
    Offered only to reproduce that reading; `kl_lognormal_gamma(.., 0.5, tau0**2)` is the default.
    """
    var = logvar.exp()
    return -(math.log(tau0) - torch.exp(mu + 0.5 * var) / tau0 + 0.5 * (mu + logvar + 1 + math.log(2))).sum()
