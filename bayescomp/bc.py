"""The paper's two methods, BC-GNJ and BC-GHS, as `VariationalMethod`s (bayescomp.variational).

compress(): (1) per-layer pruning thresholds on the group statistic (GNJ: log α; GHS: −log of the
posterior mode of z), either given (`threshold_rule = "fixed"`) or chosen on the validation split
(`"validation"`: for each layer in turn, the most groups removed such that the validation error of
the posterior-mean model stays within `val_margin_pct` · (l+1)/L of the unpruned one, so the margin
is spent evenly over the L layers); (2) masks cascaded across layers (bayescomp.prune); (3) bits per
layer from the posterior variance and weights rounded to them (bayescomp.precision).
Models are built without batch norm; a pretrained dense model's is folded into the convs
(bayescomp.variational.init_from_dense says why).
Not here: the layers (bayescomp.layers), the penalty, learning rates and initialisation
(bayescomp.variational), measuring (bayescomp.metrics).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bayescomp.data import ImageData
from bayescomp.layers import BayesLayer, Conv2dGroupHS, Conv2dGroupNJ, LinearGroupHS, LinearGroupNJ
from bayescomp.method import Compressed, CompressedLayer
from bayescomp.metrics import error_pct
from bayescomp.models import LayerSet, prunable_layers
from bayescomp.prune import cascade_masks, densify
from bayescomp.variational import VariationalMethod, bayes_layers, prunable_pct

THRESHOLD_RULES = ("validation", "fixed")


@dataclass
class BayesianCompression(VariationalMethod):
    """Base of BC-GNJ and BC-GHS: group pruning by thresholds on the group statistic, masks cascaded.

    clip_var: clamp of the weight variances of the first Linear layer (official LeNet-300 code: 0.04).
    threshold_rule: "validation" (default) or "fixed" (then `thresholds`, one per prunable layer:
        a group is removed when its statistic is >= the threshold).
    val_margin_pct: validation-error margin the pruning may spend, in percentage points.
    quantize, scale_lr_mult: see `VariationalMethod`.
    """

    clip_var: float | None = 0.04
    threshold_rule: str = "validation"
    thresholds: list[float] = field(default_factory=list)
    val_margin_pct: float = 0.1

    def __post_init__(self) -> None:
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold_rule {self.threshold_rule!r} unknown; valid: {list(THRESHOLD_RULES)}")

    def on_step_end(self, model: nn.Module) -> None:
        if self.clip_var is None:
            return
        first = next(m for _, m in bayes_layers(model) if not m.is_conv)
        first.clip_var = self.clip_var
        first.clip_variances()

    reference_threshold: ClassVar[float]  # of the group statistic; only for the convergence curve
    statistic_label: ClassVar[str]  # what the group statistic is, as figures label its axis

    def epoch_stats(self, model: nn.Module) -> dict[str, float]:
        """prunable_pct: the share of the weights whose group statistic is at or above the method's
        fixed `reference_threshold` (before the cascade). It shows convergence epoch by epoch; the
        table's architecture comes from the validation rule of `compress`, not from it."""
        return {"prunable_pct": prunable_pct(model, self.reference_threshold)}

    def compress(self, model: nn.Module, data: ImageData | None = None) -> Compressed:
        model = model.eval()
        device = next(model.parameters()).device  # the validation rule evaluates its candidates there
        layers = bayes_layers(model)
        stats = {n: m.prune_statistic().detach().cpu() for n, m in layers}
        means = {n: m.weight.detach().cpu() for n, m in layers}
        biases = {n: m.bias.detach().cpu() for n, m in layers}
        variances = {n: m.weight_var().detach().cpu() for n, m in layers}
        cpu_model = model.cpu()
        info: dict[str, Any] = {}
        if self.threshold_rule == "fixed":
            if len(self.thresholds) != len(layers):
                raise ValueError(f"threshold_rule 'fixed' needs {len(layers)} thresholds (one per layer), "
                                 f"got {len(self.thresholds)}")
            thresholds = dict(zip(stats, self.thresholds))
        else:
            if data is None:
                raise ValueError("threshold_rule 'validation' needs the data (validation split)")
            thresholds, info = _validation_thresholds(cpu_model, layers, stats, means, biases, data,
                                                      self.val_margin_pct, device)
        pruned = {n: stats[n].double() >= thresholds[n] for n in stats}
        masks = cascade_masks(list(prunable_layers(cpu_model)), pruned)
        empty = [n for n, m in masks.items() if not m.any()]
        if empty:
            raise ValueError(f"the thresholds remove every unit of layer(s) {', '.join(empty)}; "
                             "lower the thresholds or use threshold_rule = 'validation'")
        out_layers: dict[str, CompressedLayer] = {}
        weights, bias_out = {}, {}
        for n, _ in layers:
            w, bits = self.kept_weights(means[n], variances[n], masks[n])
            weights[n] = w
            row_alive = masks[n].flatten(1).any(1)
            bias_out[n] = biases[n] * row_alive
            out_layers[n] = CompressedLayer(w, bits)
        info.update({"thresholds": [float(thresholds[n]) for n in stats],
                     "statistic": {n: s.tolist() for n, s in stats.items()}})
        return Compressed(densify(cpu_model, weights, bias_out), out_layers, info)


def _prune_top(s: Tensor, k: int) -> float:
    """The threshold that prunes the k groups of largest statistic (s sorted descending, k < len(s)):
    midway between the k-th and the (k+1)-th value, so that last-bit changes of the statistics (another
    CPU, float64) leave the kept architecture unchanged; +inf prunes nothing."""
    return float("inf") if k == 0 else float(s[k - 1] + s[k]) / 2


def _validation_thresholds(model: nn.Module, layers: list[tuple[str, BayesLayer]], stats: dict[str, Tensor],
                           means: dict[str, Tensor], biases: dict[str, Tensor], data: ImageData,
                           margin: float, device: torch.device | str = "cpu") -> tuple[dict[str, float], dict[str, Any]]:
    """Per layer in turn, the threshold removing the most groups within a cumulative share of the margin;
    each candidate is evaluated on `device` (a VGG's hundred-odd validation passes: the GPU it trained on)."""
    all_layers = list(prunable_layers(model))
    dense = densify(model, means, biases).to(device)  # built once; each candidate only rewrites its weights
    dense_layers = dict(prunable_layers(dense))

    @torch.no_grad()
    def val_error(thr: dict[str, float]) -> float:
        masks = cascade_masks(all_layers, {n: stats[n].double() >= t for n, t in thr.items()})
        if not all(m.any() for m in masks.values()):
            return float("inf")  # a layer lost every unit: the network is cut in two
        for n, layer in dense_layers.items():
            layer.weight.copy_(means[n] * masks[n])
            layer.bias.copy_(biases[n] * masks[n].flatten(1).any(1))
        return error_pct(dense, data.val_x, data.val_y, device)

    thr = {n: float("inf") for n in stats}
    base = val_error(thr)
    for i, (n, _) in enumerate(layers):
        budget = base + margin * (i + 1) / len(layers)
        s = stats[n].double().sort(descending=True).values
        lo, hi = 0, len(s) - 1  # keep at least one group
        while lo < hi:  # the largest k within budget (error grows with k, up to noise)
            k = (lo + hi + 1) // 2
            if val_error({**thr, n: _prune_top(s, k)}) <= budget:
                lo = k
            else:
                hi = k - 1
        thr[n] = _prune_top(s, lo)
    return thr, {"val_error_unpruned_pct": base, "val_error_pruned_pct": val_error(thr)}


@dataclass
class BCGroupNJ(BayesianCompression):
    """BC with the group normal-Jeffreys prior [LUW17] Sec. 3.1."""

    name: ClassVar[str] = "bc_gnj"
    reference_threshold: ClassVar[float] = -3.0  # log α; the official LeNet-300 code keeps log α < −2.8, −3, −5
    statistic_label: ClassVar[str] = "log α"
    init_logvar: float = -9.0

    def layers(self) -> LayerSet:
        lv = self.init_logvar
        return LayerSet(lambda i, o, **kw: LinearGroupNJ(i, o, init_logvar=lv, **kw),
                        lambda i, o, k, **kw: Conv2dGroupNJ(i, o, k, init_logvar=lv, **kw),
                        batch_norm=False)  # folded into the convs: init_from_dense


@dataclass
class BCGroupHS(BayesianCompression):
    """BC with the group horseshoe prior [LUW17] Sec. 3.2; tau0 = 1e-5 (HORSESHOE.md §4),
    kl_form = "exact" (Gamma(½, scale τ0²)) or "appendix" (the reimplementations' eq. 34),
    scale_init = "mean_one" (HORSESHOE.md §8.5) or "prior_optimum" (bayescomp.layers)."""

    name: ClassVar[str] = "bc_ghs"
    reference_threshold: ClassVar[float] = 2.0  # −log mode(z): the mode below e⁻² (recorded rules: 0.5-2.9)
    statistic_label: ClassVar[str] = "−log mode of q(z)"
    tau0: float = 1e-5
    kl_form: str = "exact"
    init_logvar: float = -9.0
    scale_init: str = "mean_one"

    def layers(self) -> LayerSet:
        kw0 = dict(tau0=self.tau0, kl_form=self.kl_form, init_logvar=self.init_logvar, scale_init=self.scale_init)
        return LayerSet(lambda i, o, **kw: LinearGroupHS(i, o, **kw0, **kw),
                        lambda i, o, k, **kw: Conv2dGroupHS(i, o, k, **kw0, **kw),
                        batch_norm=False)  # folded into the convs: init_from_dense
