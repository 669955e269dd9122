"""The base of the variational methods (BC-GNJ, BC-GHS in bayescomp.bc; Sparse VD in baselines.sparse_vd).

Their models are built from `bayescomp.layers.BayesLayer`s. The base holds what they share: the
penalty is the layers' KL summed (the trainer divides it by N); the parameters that
decide pruning learn at `scale_lr_mult` times the lr; a pretrained dense model gives the posterior
means (`init_from_dense`); kept weights are rounded to the bits their posterior variance allows.
Not here: how a method chooses what to prune (its `compress`), the layers (bayescomp.layers).

[LUW17] Louizos, Ullrich, Welling. Bayesian Compression for Deep Learning. NIPS 2017.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bayescomp.layers import BayesLayer
from bayescomp.method import Method, lr_groups
from bayescomp.models import fold_batch_norm, prunable_layers
from bayescomp.precision import quantize_kept


def bayes_layers(model: nn.Module) -> list[tuple[str, BayesLayer]]:
    """(name, layer) of every Bayesian layer of `model`, in forward order."""
    return [(n, m) for n, m in prunable_layers(model) if isinstance(m, BayesLayer)]


def kl_penalty(model: nn.Module) -> Tensor:
    """The KL divergence of every Bayesian layer of `model`, summed."""
    return torch.stack([m.kl() for _, m in bayes_layers(model)]).sum()


@torch.no_grad()
def prunable_pct(model: nn.Module, threshold: float) -> float:
    """The share (%) of the Bayesian layers' weights whose group (or weight) statistic is >= threshold."""
    pruned = total = 0
    for _, m in bayes_layers(model):
        stat = m.prune_statistic()
        pruned += int((stat >= threshold).sum()) * (m.weight_mu.numel() // stat.numel())
        total += m.weight_mu.numel()
    return 100.0 * pruned / max(total, 1)


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
    """Base of methods whose layers are `BayesLayer`s: a KL penalty and a pruning statistic per group or weight.

    quantize: assign bits from the posterior variance and round the kept weights to them.
    scale_lr_mult: the learning rate of the parameters that decide pruning (each layer's
        `scale_parameters()`: q(z) for BC, log σ² for Sparse VD) is the configured lr times this;
        they start far from pruning (log α ≈ −9) and otherwise move about lr per step.
    """

    quantize: bool = True
    scale_lr_mult: float = 1.0

    def penalty(self, model: nn.Module) -> Tensor:
        return kl_penalty(model)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return lr_groups(model, [p for _, m in bayes_layers(model) for p in m.scale_parameters()], self.scale_lr_mult)

    def init_from_pretrained(self, model: nn.Module, dense: nn.Module) -> None:
        init_from_dense(model, dense)

    def kept_weights(self, mean: Tensor, var: Tensor, keep: Tensor) -> tuple[Tensor, int]:
        """A layer's final weights and bits: the kept posterior means rounded to the bits their variance
        allows ([LUW17] Sec. 4, bayescomp.precision) if `quantize`, else as 32-bit floats; zero elsewhere."""
        return quantize_kept(mean, var, keep) if self.quantize else (mean * keep + 0.0, 32)
