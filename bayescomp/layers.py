"""Group-sparse Bayesian Linear and Conv2d layers of Bayesian Compression, both priors.

Every weight is w = z_g · w̃ with one scale z_g per group: an input unit of a Linear layer, an output
filter of a Conv2d layer [LUW17] Sec. 3. q(w̃) = N(μ, σ²) per weight; q(z) is Normal for the
normal-Jeffreys prior (GNJ) and log-normal for the horseshoe (GHS, HORSESHOE.md §8).
Training uses the local reparametrisation trick [KSW15]: one z per example and group, then the
Gaussian pre-activation is sampled (two matmuls/convs). Eval mode is deterministic: the posterior
means E[w] = E[z] μ. The layers hold parameters and compute; choosing masks is bayescomp.bc's job.
`BayesLayer` (q(w̃), the bias, the operator) with its geometry bases `BayesLinear` / `BayesConv2d` is
shared with Sparse VD's per-weight layers (baselines.sparse_vd).

References:
  [LUW17] Louizos, Ullrich, Welling. Bayesian Compression for Deep Learning. NIPS 2017.
  [KSW15] Kingma, Salimans, Welling. Variational Dropout and the Local Reparameterization Trick. NIPS 2015.
  [MAV17] Molchanov, Ashukha, Vetrov. Variational Dropout Sparsifies Deep Neural Networks. ICML 2017.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayescomp import kl
from bayescomp.lrt import EPS, ConvLRT, LinearLRT

SCALE_INITS = ("mean_one", "prior_optimum")  # initial posterior means of the horseshoe scale factors


def pair(v: int | tuple[int, int]) -> tuple[int, int]:
    """A conv size or stride as (height, width), as torch.nn.Conv2d takes it."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class BayesLayer(nn.Module):
    """Base of every variational layer: q(w̃) = N(μ, σ²) per weight with log σ² learned directly, a bias
    μ_b (with a variance σ_b² unless `bias_variance` is False), and the operator (F.linear / F.conv2d).

    Subclasses define `kl()`, `prune_statistic()` and `scale_parameters()`. The posterior mean (`weight`,
    `bias`) and variance (`weight_var()`) of the effective weights, and `init_from()`, are here those of
    the weights alone, as in Sparse VD's per-weight layers (baselines.sparse_vd); the group layers
    below scale groups of weights by z and override them.
    Geometry (in/out sizes, the group axis `n_groups`) comes from `BayesLinear` or `BayesConv2d`.
    """

    is_conv: bool = False
    bias_variance: bool = True  # False: the bias is a point estimate (no bias_logvar)
    n_groups: int

    def _init_weights(self, shape: tuple[int, ...], fan_in: int, init_logvar: float) -> None:
        self.weight_mu = nn.Parameter(torch.empty(shape).normal_(0, 1 / math.sqrt(fan_in)))
        self.weight_logvar = nn.Parameter(torch.empty(shape).normal_(init_logvar, 1e-2))
        self.bias_mu = nn.Parameter(torch.zeros(shape[0]))
        # drawn even for a point-estimate bias, so that every layer consumes the random stream alike
        bias_logvar = torch.empty(shape[0]).normal_(init_logvar, 1e-2)
        if self.bias_variance:
            self.bias_logvar = nn.Parameter(bias_logvar)
        self.clip_var: float | None = None

    @property
    def weight(self) -> Tensor:
        """Posterior mean of the effective weights (here μ; the group layers scale it by E[z])."""
        return self.weight_mu

    @property
    def bias(self) -> Tensor:
        """Posterior mean of the effective bias."""
        return self.bias_mu

    def weight_var(self) -> Tensor:
        """Marginal posterior variance of the effective weights, for the bit precision (here σ²)."""
        return self.weight_logvar.exp()

    @torch.no_grad()
    def init_from(self, dense: nn.Module) -> None:
        """Posterior means from a trained dense layer of the same shape."""
        self.weight_mu.copy_(dense.weight)
        if dense.bias is not None:
            self.bias_mu.copy_(dense.bias)

    def kl(self) -> Tensor:
        """KL(q || p) of this layer, summed over all its parameters."""
        raise NotImplementedError

    def prune_statistic(self) -> Tensor:
        """Per group (per weight in Sparse VD); larger = more prunable (GNJ, Sparse VD: log α; GHS: minus
        the log posterior mode of z)."""
        raise NotImplementedError

    def scale_parameters(self) -> list[nn.Parameter]:
        """The variational parameters that decide pruning (trained at `scale_lr_mult` times the lr)."""
        raise NotImplementedError

    def clip_variances(self) -> None:
        """Clamp the weight and bias log-variances at log(clip_var), as the official code for fc1."""
        if self.clip_var is not None:
            with torch.no_grad():
                self.weight_logvar.clamp_(max=math.log(self.clip_var))
                if self.bias_variance:
                    self.bias_logvar.clamp_(max=math.log(self.clip_var))

    def _op(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if self.is_conv:
            return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)
        return F.linear(x, w, b)

    def lrt_variance(self, x: Tensor, bias_logvar: Tensor | None) -> Tensor:
        """Variance of the pre-activation, (x²) ∗ σ² + σ_b² [KSW15] Eq. 6, in float32 even under autocast."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            return self._op(x * x, self.weight_logvar.exp(), None if bias_logvar is None else bias_logvar.exp())


class BayesLinear(BayesLayer):
    """Geometry of a Bayesian Linear layer: weight (out_features, in_features); groups = input units."""

    def __init__(self, in_features: int, out_features: int, init_logvar: float) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.n_groups = in_features
        self._init_weights((out_features, in_features), in_features, init_logvar)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class BayesConv2d(BayesLayer):
    """Geometry of a Bayesian Conv2d layer: weight (out, in, kh, kw); groups = output filters."""

    is_conv = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int], padding: int | tuple[int, int],
                 dilation: int | tuple[int, int], init_logvar: float) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        self.n_groups = out_channels
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self._init_weights((out_channels, in_channels, *self.kernel_size), fan_in, init_logvar)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}")


class _GroupBayesLayer(BayesLayer):
    """Group scales z: subclasses define q(z) (sample, mean, variance, KL, pruning statistic)."""

    # ---- q(z): implemented by subclasses
    def sample_z(self, batch: int) -> Tensor:
        """(batch, n_groups) draws from q(z)."""
        raise NotImplementedError

    def z_mean(self) -> Tensor:
        raise NotImplementedError

    def z_var(self) -> Tensor:
        raise NotImplementedError

    def kl_z(self) -> Tensor:
        raise NotImplementedError

    def scale_parameters(self) -> list[nn.Parameter]:
        """The variational parameters of q(z) (group and layer scales)."""
        return [p for n, p in self.named_parameters(recurse=False) if not n.startswith(("weight_", "bias_"))]

    # ---- shared
    def _expand(self, z: Tensor) -> Tensor:
        """Group scales (..., G) broadcast against the weight (out, in[, kh, kw])."""
        return z.view(-1, 1, 1, 1) if self.is_conv else z.view(1, -1)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self._op(x, self.weight, self.bias)
        z = self.sample_z(x.shape[0])
        if self.is_conv:  # z scales output filters, bias included [LUW17] Sec. 3, conv case
            if not torch.is_autocast_enabled(x.device.type):
                return ConvLRT.apply(x, z, self.weight_mu, self.weight_logvar, self.bias_mu, self.bias_logvar,
                                      (self.stride, self.padding, self.dilation))
            # under autocast (bf16 on a GPU) the mean conv runs in its low precision, the variances in float32
            mu = self._op(x, self.weight_mu, self.bias_mu)
            var = self.lrt_variance(x, self.bias_logvar)
            z = z[:, :, None, None]
            mu, var = mu * z, var * z * z
            return mu + (var + EPS).sqrt() * torch.randn_like(var)
        # z scales input units: x̃ = x ⊙ z [LUW17] Eq. 6 with [KSW15] Eq. 6. Under autocast (bf16 on a
        # GPU) the whole layer runs in float32: its hand-written backward multiplies the incoming
        # gradient by float32 parameters, and the variances stay in float32 as the KL does.
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            eps = torch.randn(x.shape[0], self.weight_mu.shape[0], device=x.device, dtype=x.dtype)
            return LinearLRT.apply(x, z, self.weight_mu, self.weight_logvar, self.bias_mu, self.bias_logvar, eps)

    @property
    def weight(self) -> Tensor:
        """Posterior mean of the effective weights, E[z] μ."""
        return self._expand(self.z_mean()) * self.weight_mu

    @property
    def bias(self) -> Tensor:
        """Posterior mean of the bias (scaled by E[z] for conv filters)."""
        return self.bias_mu * self.z_mean() if self.is_conv else self.bias_mu

    def weight_var(self) -> Tensor:
        """Marginal posterior variance of the effective weights. [LUW17] Sec. 4 (bit precision)"""
        ez, vz = self._expand(self.z_mean()), self._expand(self.z_var())
        s2 = self.weight_logvar.exp()
        return ez * ez * s2 + vz * self.weight_mu.pow(2) + vz * s2

    def kl(self) -> Tensor:
        """KL(q || p) of this layer, summed over all its parameters."""
        return (self.kl_z() + kl.kl_gaussian_std_normal(self.weight_mu, self.weight_logvar)
                + kl.kl_gaussian_std_normal(self.bias_mu, self.bias_logvar))

    @torch.no_grad()
    def init_from(self, dense: nn.Module) -> None:
        """Posterior means from a trained dense layer of the same shape."""
        self.weight_mu.copy_(dense.weight / self._expand(self.z_mean()))
        if dense.bias is not None:
            self.bias_mu.copy_(dense.bias / self.z_mean() if self.is_conv else dense.bias)


# ---------------------------------------------------------------- normal-Jeffreys (GNJ)

class _GroupNJ(_GroupBayesLayer):
    """q(z) = N(μ_z, σ_z²), with log σ_z² learned directly (additive reparametrisation [MAV17] Eq. 11)."""

    def _init_z(self, init_logvar: float) -> None:
        self.z_mu = nn.Parameter(torch.empty(self.n_groups).normal_(1, 1e-2))
        self.z_logvar = nn.Parameter(torch.empty(self.n_groups).normal_(init_logvar, 1e-2))

    def log_alpha(self) -> Tensor:
        """log α = log σ_z² − log μ_z² per group. [LUW17] Sec. 3.1"""
        return self.z_logvar - torch.log(self.z_mu.pow(2) + EPS)

    def sample_z(self, batch: int) -> Tensor:
        eps = torch.randn(batch, self.n_groups, device=self.z_mu.device)
        return self.z_mu + (0.5 * self.z_logvar).exp() * eps

    def z_mean(self) -> Tensor:
        return self.z_mu

    def z_var(self) -> Tensor:
        return self.z_logvar.exp()

    def kl_z(self) -> Tensor:
        return kl.kl_normal_jeffreys(self.log_alpha())  # [LUW17] Eq. 9 with [MAV17] Eq. 14

    def prune_statistic(self) -> Tensor:
        return self.log_alpha()


class LinearGroupNJ(BayesLinear, _GroupNJ):
    """Linear layer with the group normal-Jeffreys prior; groups = input units."""

    def __init__(self, in_features: int, out_features: int, init_logvar: float = -9.0) -> None:
        super().__init__(in_features, out_features, init_logvar)
        self._init_z(init_logvar)


class Conv2dGroupNJ(BayesConv2d, _GroupNJ):
    """Conv2d layer with the group normal-Jeffreys prior; groups = output filters."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, init_logvar: float = -9.0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, init_logvar)
        self._init_z(init_logvar)


# ---------------------------------------------------------------- horseshoe (GHS)

class _GroupHS(_GroupBayesLayer):
    """z_g = s · z̃_g, s ~ C⁺(0, τ0), z̃_g ~ C⁺(0, 1), each half-Cauchy as √(Gamma(½, k²) · InvGamma(½, 1));
    log-normal posteriors on the four factors (HORSESHOE.md §1-3, §8)."""

    tau0: float
    kl_form: str

    def _init_z(self, tau0: float, kl_form: str, init_logvar: float, scale_init: str) -> None:
        if kl_form not in ("exact", "appendix"):
            raise ValueError(f"kl_form {kl_form!r} unknown; valid: 'exact', 'appendix'")
        if scale_init not in SCALE_INITS:
            raise ValueError(f"scale_init {scale_init!r} unknown; valid: {list(SCALE_INITS)}")
        self.tau0, self.kl_form = tau0, kl_form
        g = self.n_groups
        log_t2 = 2 * math.log(tau0)
        if scale_init == "mean_one":
            # μ_sa = log τ0², μ_sb = −log τ0², group factors 0: E[z] ≈ 1 (HORSESHOE.md §8.5)
            sa, sb, a, b = log_t2, -log_t2, 0.0, 0.0
        else:
            # "prior_optimum": s_a, s_b and α̃ at the minimum of their own KL (μ = log(θ/2), log 2, −log 2),
            # β̃ carries the rest so that E[z] ≈ 1. The group factors then no longer cancel each other's KL
            # pull (α̃ down, β̃ up), and a group the data does not need drifts to zero on its own.
            sa, sb, a = log_t2 - math.log(2), math.log(2), -math.log(2)
            b = -(sa + sb + a)
        self.sa_mu = nn.Parameter(torch.tensor(sa))
        self.sb_mu = nn.Parameter(torch.tensor(sb))
        self.sa_logvar = nn.Parameter(torch.tensor(init_logvar))
        self.sb_logvar = nn.Parameter(torch.tensor(init_logvar))
        self.alpha_mu = nn.Parameter(torch.empty(g).normal_(a, 1e-2))
        self.beta_mu = nn.Parameter(torch.empty(g).normal_(b, 1e-2))
        self.alpha_logvar = nn.Parameter(torch.empty(g).normal_(init_logvar, 1e-2))
        self.beta_logvar = nn.Parameter(torch.empty(g).normal_(init_logvar, 1e-2))

    def log_z_params(self) -> tuple[Tensor, Tensor]:
        """(m, v) of log z_g ~ N(m, v). HORSESHOE.md §3"""
        m = 0.5 * (self.sa_mu + self.sb_mu + self.alpha_mu + self.beta_mu)
        v = 0.25 * (self.sa_logvar.exp() + self.sb_logvar.exp() + self.alpha_logvar.exp() + self.beta_logvar.exp())
        return m, v

    def sample_z(self, batch: int) -> Tensor:
        # one draw of the layer scale s and one per group, per example (HORSESHOE.md §8.4)
        dev = self.alpha_mu.device
        eps_s = torch.randn(batch, 1, device=dev)
        eps_g = torch.randn(batch, self.n_groups, device=dev)
        log_s = 0.5 * (self.sa_mu + self.sb_mu) + 0.5 * (self.sa_logvar.exp() + self.sb_logvar.exp()).sqrt() * eps_s
        log_g = 0.5 * (self.alpha_mu + self.beta_mu) + 0.5 * (self.alpha_logvar.exp() + self.beta_logvar.exp()).sqrt() * eps_g
        return torch.exp(log_s + log_g)

    def z_mean(self) -> Tensor:
        m, v = self.log_z_params()
        return torch.exp(m + 0.5 * v)  # HORSESHOE.md §6

    def z_var(self) -> Tensor:
        m, v = self.log_z_params()
        return torch.expm1(v) * torch.exp(2 * m + v)  # HORSESHOE.md §6

    def kl_z(self) -> Tensor:
        if self.kl_form == "exact":
            kl_sa = kl.kl_lognormal_gamma(self.sa_mu, self.sa_logvar, 0.5, self.tau0 ** 2)  # HORSESHOE.md §3
        else:
            kl_sa = kl.kl_lognormal_gamma_appendix(self.sa_mu, self.sa_logvar, self.tau0)  # [LUW17] App. eq. 34
        return (kl_sa + kl.kl_lognormal_invgamma(self.sb_mu, self.sb_logvar, 0.5, 1.0)
                + kl.kl_lognormal_gamma(self.alpha_mu, self.alpha_logvar, 0.5, 1.0)
                + kl.kl_lognormal_invgamma(self.beta_mu, self.beta_logvar, 0.5, 1.0))

    def log_mode(self) -> Tensor:
        """log of the posterior mode of z_g, m − v. HORSESHOE.md §5"""
        m, v = self.log_z_params()
        return m - v

    def prune_statistic(self) -> Tensor:
        return -self.log_mode()


class LinearGroupHS(BayesLinear, _GroupHS):
    """Linear layer with the group horseshoe prior; groups = input units."""

    def __init__(self, in_features: int, out_features: int, tau0: float = 1e-5,
                 kl_form: str = "exact", init_logvar: float = -9.0, scale_init: str = "mean_one") -> None:
        super().__init__(in_features, out_features, init_logvar)
        self._init_z(tau0, kl_form, init_logvar, scale_init)


class Conv2dGroupHS(BayesConv2d, _GroupHS):
    """Conv2d layer with the group horseshoe prior; groups = output filters."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, tau0: float = 1e-5,
                 kl_form: str = "exact", init_logvar: float = -9.0, scale_init: str = "mean_one") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, init_logvar)
        self._init_z(tau0, kl_form, init_logvar, scale_init)
