"""Shared base of the mask-based baselines, on torch.nn.utils.prune: a subclass only computes masks.

Schedule (the iterative pruning of Han et al. 2015): after each epoch listed in `prune_epochs`
(0-based) the masks are recomputed so that the kept fraction of each layer falls geometrically,
round r of R keeping keep_target^(r/R); the epochs between and after the rounds retrain the
surviving weights. Masks only ever shrink (torch's PruningContainer multiplies them).
`sparsity` is the fraction of weights removed: one number for every layer (scope "layer"), one
number over all layers together (scope "global", magnitude ranks across layers), or a table
{layer name = fraction} for per-layer targets.
compress(): the masks are made permanent; weights stay 32-bit floats.

[HPTD15] Han, Pool, Tran, Dally. Learning both Weights and Connections for Efficient Neural Networks. NIPS 2015.
"""
from __future__ import annotations

import copy
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from bayescomp.data import ImageData
from bayescomp.method import Compressed, CompressedLayer, Method
from bayescomp.models import prunable_layers

SCOPES = ("layer", "global")


@dataclass
class MaskPruning(Method):
    """Base: subclasses implement `masks`. Fields: see the module docstring."""

    sparsity: float | dict[str, float] = 0.9
    scope: str = "layer"
    prune_epochs: list[int] = field(default_factory=lambda: [0])

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"scope {self.scope!r} unknown; valid: {list(SCOPES)}")
        values = self.sparsity.values() if isinstance(self.sparsity, dict) else [self.sparsity]
        if not all(0.0 <= v < 1.0 for v in values):
            raise ValueError(f"sparsity must lie in [0, 1) (the fraction of weights removed), got {self.sparsity}")
        if isinstance(self.sparsity, dict) and self.scope == "global":
            raise ValueError("a per-layer sparsity table needs scope = 'layer'")
        if not self.prune_epochs or sorted(set(self.prune_epochs)) != list(self.prune_epochs):
            raise ValueError(f"prune_epochs must be a non-empty increasing list, got {self.prune_epochs}")

    @abstractmethod
    def masks(self, weights: dict[str, Tensor], keep: dict[str, int]) -> dict[str, Tensor]:
        """Boolean keep-masks: for each layer, `keep[name]` True entries among its current weights
        (already pruned weights are exactly 0). With scope "global", keep holds one entry, "*": the
        total number to keep over all layers."""

    @torch.no_grad()
    def init_from_pretrained(self, model: nn.Module, dense: nn.Module) -> None:
        model.load_state_dict(dense.state_dict())

    def prepare(self, model: nn.Module) -> None:
        for _, layer in prunable_layers(model):
            if not prune.is_pruned(layer):
                prune.identity(layer, "weight")  # weight = weight_orig * weight_mask from the start

    def _layer_sparsity(self, name: str) -> float:
        if isinstance(self.sparsity, dict):
            if name not in self.sparsity:
                raise ValueError(f"sparsity table has no entry for layer {name!r}; layers need one each")
            return self.sparsity[name]
        return self.sparsity

    @torch.no_grad()
    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        if epoch not in self.prune_epochs:
            return
        frac = (self.prune_epochs.index(epoch) + 1) / len(self.prune_epochs)
        layers = dict(prunable_layers(model))
        weights = {n: m.weight.detach() for n, m in layers.items()}
        if self.scope == "global":
            total = sum(w.numel() for w in weights.values())
            keep = {"*": max(1, round(total * (1 - self.sparsity) ** frac))}  # type: ignore[operator]
        else:
            keep = {n: max(1, round(w.numel() * (1 - self._layer_sparsity(n)) ** frac)) for n, w in weights.items()}
        for n, mask in self.masks(weights, keep).items():
            prune.custom_from_mask(layers[n], "weight", mask.to(weights[n].dtype))

    def compress(self, model: nn.Module, data: ImageData | None = None) -> Compressed:
        with torch.no_grad():  # the masked weight torch.prune caches may carry autograd history: drop it
            for _, layer in prunable_layers(model):
                if prune.is_pruned(layer):
                    layer.weight = layer.weight_orig * layer.weight_mask
        final = copy.deepcopy(model).eval()
        for _, layer in prunable_layers(final):
            if prune.is_pruned(layer):
                prune.remove(layer, "weight")
        layers = {n: CompressedLayer(m.weight.detach().clone()) for n, m in prunable_layers(final)}
        info: dict[str, Any] = {"kept_per_layer": {n: int(c.weight.ne(0).sum()) for n, c in layers.items()}}
        return Compressed(final, layers, info)


def top_k_masks(scores: dict[str, Tensor], keep: dict[str, int]) -> dict[str, Tensor]:
    """Keep the highest scores: per layer, or over all layers when keep == {"*": k}."""
    if "*" in keep:
        flat = torch.cat([s.flatten() for s in scores.values()])
        k = min(keep["*"], len(flat))
        cut = flat.topk(k).values[-1]
        masks = {n: s >= cut for n, s in scores.items()}
    else:
        masks = {}
        for n, s in scores.items():
            flat = s.flatten()
            m = torch.zeros_like(flat, dtype=torch.bool)
            m[flat.topk(min(keep[n], len(flat))).indices] = True
            masks[n] = m.view_as(s)
    return masks
