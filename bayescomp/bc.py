"""The paper's two methods, BC-GNJ and BC-GHS, as `Method`s; and their shared variational base.

compress(): (1) per-layer pruning thresholds on the group statistic (GNJ: log α; GHS: −log of the
posterior mode of z), either given (`threshold_rule = "fixed"`) or chosen on the validation split
(`"validation"`: for each layer in turn, the most groups removed such that the validation error of
the posterior-mean model stays within `val_margin_pct` · (l+1)/L of the unpruned one, so the margin
is spent evenly over the L layers); (2) masks cascaded across layers (bayescomp.prune); (3) bits per
layer from the posterior variance and weights rounded to them (bayescomp.precision).
Models are built without batch norm; a pretrained dense model's is folded into the convs
(`init_from_dense` says why).
Not here: the layers (bayescomp.layers), measuring (bayescomp.metrics).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bayescomp.data import ImageData
from bayescomp.layers import BayesLayer, Conv2dGroupHS, Conv2dGroupNJ, LinearGroupHS, LinearGroupNJ
from bayescomp.method import Compressed, CompressedLayer, LayerSet, Method, lr_groups
from bayescomp.models import fold_batch_norm, prunable_layers
from bayescomp.precision import quantize_kept
from bayescomp.prune import cascade_masks, densify
from bayescomp.train import evaluate

THRESHOLD_RULES = ("validation", "fixed")


def bayes_layers(model: nn.Module) -> list[tuple[str, BayesLayer]]:
    return [(n, m) for n, m in prunable_layers(model) if isinstance(m, BayesLayer)]


def kl_penalty(model: nn.Module) -> Tensor:
    """The KL divergence of every Bayesian layer of `model`, summed."""
    return torch.stack([m.kl() for _, m in bayes_layers(model)]).sum()


@torch.no_grad()
def init_from_dense(model: nn.Module, dense: nn.Module) -> None:
    """Posterior means from a trained dense model of the same architecture; other state copied.

    Batch norm. A BatchNorm layer that `model` has too (Sparse VD keeps vgg_cifar's) is copied. One
    that `model` lacks (BC builds vgg_cifar without batch norm, `LayerSet.batch_norm`) is folded, in
    its eval form (running statistics), into the weights and bias of the layer before it
    (bayescomp.models.fold_batch_norm), so that in eval mode `model` starts as exactly the dense
    model's function. Why BC has no batch norm: z scales a conv filter including its bias ([LUW17]
    Sec. 3, conv case; bayescomp.layers forward). (1) A train-mode BatchNorm after z divides each
    channel by its batch statistics, so the scale of z cancels from the data term and only the KL
    acts on it. (2) A frozen (eval-mode) BatchNorm after z maps a pruned filter (z = 0) to the constant
    β − γμ/σ, so removing the filter changes the function, and that constant cannot be folded into the
    next conv's bias exactly either (its zero padding sees 0 at the border, not the constant). (3)
    With the batch norm folded into the conv, z = 0 zeroes the channel and removing it is exact, and
    the data term depends on every z.
    """
    dense = fold_batch_norm(dense, keep={n for n, m in model.named_modules()
                                         if isinstance(m, nn.modules.batchnorm._BatchNorm)})
    dense_mods = dict(dense.named_modules())
    for name, layer in bayes_layers(model):
        layer.init_from(dense_mods[name])
    prunable = {n for n, _ in prunable_layers(model)}
    own = model.state_dict()
    rest = {k: v for k, v in dense.state_dict().items()
            if k.rpartition(".")[0] not in prunable and k in own and own[k].shape == v.shape}
    model.load_state_dict(rest, strict=False)


@dataclass
class VariationalMethod(Method):
    """Base of methods whose layers carry a KL term and a per-group pruning statistic.

    clip_var: clamp of the weight variances of the first Linear layer (official LeNet-300 code: 0.04).
    threshold_rule: "validation" (default) or "fixed" (then `thresholds`, one per prunable layer:
        a group is removed when its statistic is >= the threshold).
    val_margin_pct: validation-error margin the pruning may spend, in percentage points.
    quantize: assign bits from the posterior variance and round the weights to them.
    scale_lr_mult: the learning rate of the q(z) parameters is the configured lr times this; the
        group scales start far from pruning (log α ≈ −9) and otherwise move about lr per step.
    """

    clip_var: float | None = 0.04
    threshold_rule: str = "validation"
    thresholds: list[float] = field(default_factory=list)
    val_margin_pct: float = 0.1
    quantize: bool = True
    scale_lr_mult: float = 1.0

    def __post_init__(self) -> None:
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold_rule {self.threshold_rule!r} unknown; valid: {list(THRESHOLD_RULES)}")

    def penalty(self, model: nn.Module) -> Tensor:
        return kl_penalty(model)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return lr_groups(model, [p for _, m in bayes_layers(model) for p in m.scale_parameters()], self.scale_lr_mult)

    def on_step_end(self, model: nn.Module) -> None:
        if self.clip_var is None:
            return
        first = next(m for _, m in bayes_layers(model) if not m.is_conv)
        first.clip_var = self.clip_var
        first.clip_variances()

    def init_from_pretrained(self, model: nn.Module, dense: nn.Module) -> None:
        init_from_dense(model, dense)

    reference_threshold: ClassVar[float]  # of the group statistic; only for the convergence curve

    @torch.no_grad()
    def epoch_stats(self, model: nn.Module) -> dict[str, float]:
        """prunable_pct: the share of the weights whose group statistic is at or above the method's
        fixed `reference_threshold` (before the cascade). It shows convergence epoch by epoch; the
        table's architecture comes from the validation rule of `compress`, not from it."""
        pruned = total = 0
        for _, m in bayes_layers(model):
            per_group = m.weight_mu.numel() // m.n_groups
            pruned += int((m.prune_statistic() >= self.reference_threshold).sum()) * per_group
            total += m.weight_mu.numel()
        return {"prunable_pct": 100.0 * pruned / max(total, 1)}

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
            w, bits = (quantize_kept(means[n], variances[n], masks[n]) if self.quantize
                       else (means[n] * masks[n] + 0.0, 32))
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
        return evaluate(dense, data.val_x, data.val_y, device)

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
class BCGroupNJ(VariationalMethod):
    """BC with the group normal-Jeffreys prior [LUW17] Sec. 3.1."""

    name: ClassVar[str] = "bc_gnj"
    reference_threshold: ClassVar[float] = -3.0  # log α; the official LeNet-300 code keeps log α < −2.8, −3, −5
    init_logvar: float = -9.0

    def layers(self) -> LayerSet:
        lv = self.init_logvar
        return LayerSet(lambda i, o, **kw: LinearGroupNJ(i, o, init_logvar=lv, **kw),
                        lambda i, o, k, **kw: Conv2dGroupNJ(i, o, k, init_logvar=lv, **kw),
                        batch_norm=False)  # folded into the convs: init_from_dense


@dataclass
class BCGroupHS(VariationalMethod):
    """BC with the group horseshoe prior [LUW17] Sec. 3.2; tau0 = 1e-5 (HORSESHOE.md §4),
    kl_form = "exact" (Gamma(½, scale τ0²)) or "appendix" (the reimplementations' eq. 34),
    scale_init = "mean_one" (HORSESHOE.md §8.5) or "prior_optimum" (bayescomp.layers)."""

    name: ClassVar[str] = "bc_ghs"
    reference_threshold: ClassVar[float] = 2.0  # −log mode(z): the mode below e⁻² (recorded rules: 0.5-2.9)
    tau0: float = 1e-5
    kl_form: str = "exact"
    init_logvar: float = -9.0
    scale_init: str = "mean_one"

    def layers(self) -> LayerSet:
        kw0 = dict(tau0=self.tau0, kl_form=self.kl_form, init_logvar=self.init_logvar, scale_init=self.scale_init)
        return LayerSet(lambda i, o, **kw: LinearGroupHS(i, o, **kw0, **kw),
                        lambda i, o, k, **kw: Conv2dGroupHS(i, o, k, **kw0, **kw),
                        batch_norm=False)  # folded into the convs: init_from_dense
