"""The extension interface every compression method implements, and the record it returns.

A `Method` is a dataclass whose fields are its hyperparameters (from `reproduce/experiments.toml`).
It chooses the layer classes the model is built with, adds a penalty to the training loss, may act
at the end of each step or epoch, and turns a trained model into a `Compressed` record. It never
computes error or compression rates: `bayescomp.metrics.summarize` does, identically for every
method. `Dense` (no compression, 32-bit weights) is the first implementation.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bayescomp.data import ImageData
from bayescomp.models import DENSE, LayerSet, prunable_layers


@dataclass(frozen=True)
class CompressedLayer:
    """One prunable layer after compression.

    weight: final weights in the dense layer's shape, exactly zero where pruned.
    bits: total bits per stored weight (sign + exponent + significand, or log2 of the codebook size).
    codebook: the shared values when the method uses weight sharing, else None.
    """

    weight: Tensor
    bits: int = 32
    codebook: Tensor | None = None


@dataclass
class Compressed:
    """What `Method.compress` returns.

    model: the final, deterministic model built from dense layers (the one that is evaluated);
        its prunable layers hold exactly `layers[name].weight`.
    layers: prunable layer name -> record, in forward order.
    info: method-specific diagnostics (thresholds, pre-pruning error, ...), recorded as-is.
    """

    model: nn.Module
    layers: dict[str, CompressedLayer]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Method(ABC):
    """A compression method; the dataclass fields are its hyperparameters."""

    name: ClassVar[str]

    def layers(self) -> LayerSet:
        """Layer classes the model is built with (default: plain dense layers)."""
        return DENSE

    def penalty(self, model: nn.Module) -> Tensor:
        """Extra loss (e.g. a KL divergence), summed over the data set; the trainer divides by N."""
        return torch.zeros(())

    def init_from_pretrained(self, model: nn.Module, dense: nn.Module) -> None:
        """Start `model` (built with `layers()`) from `dense`, a trained dense model of the same
        architecture: what an experiment's `pretrain` gives. Default: not supported, a clear error."""
        raise ValueError(f"method {self.name!r} cannot start from a pretrained model; remove `pretrain` from "
                         "its experiment, or implement init_from_pretrained for it")

    def prepare(self, model: nn.Module) -> None:
        """Called by the trainer before the optimiser is built and a checkpoint is loaded (e.g. to
        attach pruning masks, so that a resumed model has the same parameters and buffers)."""

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimiser parameter groups; a group's optional "lr_mult" scales the configured lr."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def on_step_end(self, model: nn.Module) -> None:
        """Called after every optimiser step (e.g. to clip variances)."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Called after every epoch, 0-based (e.g. pruning schedules)."""

    def epoch_stats(self, model: nn.Module) -> dict[str, float]:
        """Numbers recorded in the training history after every epoch (e.g. how much would be pruned)."""
        return {}

    @abstractmethod
    def compress(self, model: nn.Module, data: ImageData | None = None) -> Compressed:
        """Trained model -> final weights, bits and codebooks. `data` offers the validation split."""


@dataclass
class Dense(Method):
    """No compression: the trained weights as they are, stored in 32-bit floats."""

    name: ClassVar[str] = "dense"

    def compress(self, model: nn.Module, data: ImageData | None = None) -> Compressed:
        final = copy.deepcopy(model).eval()
        layers = {n: CompressedLayer(m.weight.detach().clone()) for n, m in prunable_layers(final)}
        return Compressed(final, layers)


def lr_groups(model: nn.Module, faster: list[nn.Parameter], lr_mult: float) -> list[dict[str, Any]]:
    """Two parameter groups: the trainable parameters in `faster` at lr_mult times the lr, the rest at the lr."""
    ids = {id(p) for p in faster}
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if id(p) not in ids]},
            {"params": [p for p in params if id(p) in ids], "lr_mult": lr_mult}]
