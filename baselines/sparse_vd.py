"""Sparse variational dropout [MAV17]: one log α per weight, pruned where log α > 3.

The layers reuse bayescomp's Bayesian layer bases (bayescomp.layers.BayesLayer: parameters μ, log σ²
per weight, the operator; BayesLinear / BayesConv2d: the set-up) without group scales: w ~ N(μ, σ²) with log σ² learned directly (the additive
reparametrisation [MAV17] Eq. 11), the local reparametrisation trick in training [KSW15], a
deterministic bias as in the authors' code, and the KL approximation [MAV17] Eq. 14 that
bayescomp.kl already implements for the normal-Jeffreys scales. KL warm-up (the authors' code raises
its weight linearly over the first epochs) is the spec's `kl_warmup_epochs`.
The method shares BC's variational base (bayescomp.variational: KL penalty, `scale_lr_mult`, start
from the dense model, bits). compress(): weights with log α ≥ `threshold` are removed; bits per layer
from the posterior variance with the same rule as BC (bayescomp.precision), so the row has bits and
CR fast like the paper's.

[MAV17] Molchanov, Ashukha, Vetrov. Variational Dropout Sparsifies Deep Neural Networks. ICML 2017.
[KSW15] Kingma, Salimans, Welling. Variational Dropout and the Local Reparameterization Trick. NIPS 2015.
"""
from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bayescomp import kl
from bayescomp.data import ImageData
from bayescomp.layers import EPS, BayesConv2d, BayesLayer, BayesLinear
from bayescomp.method import Compressed, CompressedLayer
from bayescomp.models import LayerSet
from bayescomp.prune import densify
from bayescomp.variational import VariationalMethod, bayes_layers, prunable_pct

LOG_ALPHA_CLAMP = 10.0  # [MAV17] code: log α clipped to [-10, 10] inside the KL


class SparseVDLayer(BayesLayer):
    """A Bayesian layer pruned weight by weight: no scale variables, a point-estimate bias; the posterior
    mean and variance are BayesLayer's, μ and σ²."""

    bias_variance = False

    def log_alpha(self) -> Tensor:
        """log α = log σ² − log μ² per weight. [MAV17] Eq. 11"""
        return self.weight_logvar - torch.log(self.weight_mu.pow(2) + EPS)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return self._op(x, self.weight_mu, self.bias_mu)
        mu = self._op(x, self.weight_mu, self.bias_mu)
        var = self.lrt_variance(x, None)  # [KSW15] Eq. 6, float32 under autocast
        return mu + (var + EPS).sqrt() * torch.randn_like(var)

    def scale_parameters(self) -> list[nn.Parameter]:
        return [self.weight_logvar]  # log α moves with log σ²

    def kl(self) -> Tensor:
        return kl.kl_normal_jeffreys(self.log_alpha().clamp(-LOG_ALPHA_CLAMP, LOG_ALPHA_CLAMP))  # [MAV17] Eq. 14

    def prune_statistic(self) -> Tensor:
        return self.log_alpha()


class LinearSVD(BayesLinear, SparseVDLayer):
    def __init__(self, in_features: int, out_features: int, init_logvar: float = -10.0) -> None:
        super().__init__(in_features, out_features, init_logvar)


class Conv2dSVD(BayesConv2d, SparseVDLayer):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, init_logvar: float = -10.0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, init_logvar)


@dataclass
class SparseVD(VariationalMethod):
    """threshold: log α above which a weight is removed ([MAV17]: 3). init_logvar: initial log σ².
    quantize: bits from the posterior variance, weights rounded to them (as BC).
    scale_lr_mult: the log σ² learn at this multiple of the lr (as BC's q(z) parameters: from
    log α ≈ −5 at the start, reaching 3 takes at least 8 / lr steps)."""

    name: ClassVar[str] = "sparse_vd"
    threshold: float = 3.0
    init_logvar: float = -10.0
    logvar_lr_mult: InitVar[float | None] = None  # the former name of scale_lr_mult: refused, naming it

    def __post_init__(self, logvar_lr_mult: float | None) -> None:
        if logvar_lr_mult is not None:
            raise TypeError(f"logvar_lr_mult is now called scale_lr_mult (as in BC): write "
                            f"scale_lr_mult = {logvar_lr_mult!r} in the method_args")

    def layers(self) -> LayerSet:
        lv = self.init_logvar
        # VGG keeps its batch norm (BC folds it away, bayescomp.variational.init_from_dense): a weight is
        # removed on its own, never a filter's scale, so the exported model computes what the masked one does
        return LayerSet(lambda i, o, **kw: LinearSVD(i, o, init_logvar=lv, **kw),
                        lambda i, o, k, **kw: Conv2dSVD(i, o, k, init_logvar=lv, **kw), batch_norm=True)

    def epoch_stats(self, model: nn.Module) -> dict[str, float]:
        """prunable_pct: the share of the weights at or above the log α threshold (what compress removes)."""
        return {"prunable_pct": prunable_pct(model, self.threshold)}

    @torch.no_grad()
    def compress(self, model: nn.Module, data: ImageData | None = None) -> Compressed:
        model = model.eval()
        weights, biases, out = {}, {}, {}
        info: dict[str, Any] = {"threshold": self.threshold, "log_alpha_quantiles": {}}
        for name, layer in bayes_layers(model):
            la = layer.prune_statistic().detach().cpu()  # log α
            keep = la < self.threshold
            w, bits = self.kept_weights(layer.weight_mu.detach().cpu(), layer.weight_var().detach().cpu(), keep)
            weights[name], biases[name] = w, layer.bias_mu.detach().cpu()
            out[name] = CompressedLayer(weights[name], bits)
            info["log_alpha_quantiles"][name] = [float(q) for q in la.flatten().quantile(
                torch.tensor([0.1, 0.5, 0.9]))] if la.numel() <= 16_000_000 else []
        return Compressed(densify(model.cpu(), weights, biases), out, info)
