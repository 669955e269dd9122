"""The inference form of a model: the same function (up to float rounding), in the form Table 2 times.

The dense and the pruned models are timed in this form alike (reproduce/bench_inference.py): the input
normalisation folded into the first weight layer where that is exact; `sparse_variant` stores Linear
layers as torch.sparse CSR.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn

from bayescomp.models import Normalize


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored as torch.sparse CSR (the zeros of pruning not stored)."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        w = layer.weight.detach()
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            self.register_buffer("weight", w.to_sparse_csr())  # buffers: .to(device) moves them
        self.register_buffer("bias", layer.bias.detach().clone() if layer.bias is not None else None)

    def forward(self, x: Tensor) -> Tensor:
        y = (self.weight @ x.T).T  # CSR (out, in) @ dense (in, batch)
        return y + self.bias if self.bias is not None else y


@torch.no_grad()
def fold_normalize(model: nn.Module) -> nn.Module:
    """`model` (changed in place) with the input normalisation folded into the first weight layer where
    that is exact (a Linear layer, or a conv without padding): (x − m)/s · W = x · W/s − (W/s)·m.
    Otherwise the normalisation of the whole unpruned input would be a fixed cost that pruning cannot touch."""
    norm_parent, norm_name, first = None, None, None
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, Normalize) and norm_parent is None:
                norm_parent, norm_name = parent, name
            elif isinstance(child, (nn.Linear, nn.Conv2d)) and first is None:
                first = child
    if norm_parent is None or first is None:
        return model
    norm = getattr(norm_parent, norm_name)
    mean, std = norm.mean.flatten(), norm.std.flatten()
    if isinstance(first, nn.Conv2d):
        pad = first.padding
        if pad != "valid" and (isinstance(pad, str) or any(pad)):
            return model  # zero padding of the normalised input is not zero padding of the raw one
        w = first.weight / std.view(1, -1, 1, 1)
        shift = (w * mean.view(1, -1, 1, 1)).sum((1, 2, 3))
    else:
        w = first.weight / std.repeat_interleave(first.in_features // len(std))
        shift = w.sum(1) * mean if len(mean) == 1 else w @ mean.repeat_interleave(first.in_features // len(mean))
    first.weight.copy_(w)
    if first.bias is None:
        first.bias = nn.Parameter(-shift)
    else:
        first.bias.sub_(shift)
    setattr(norm_parent, norm_name, nn.Identity())
    return model


def sparse_variant(model: nn.Module) -> nn.Module:
    """The model with every Linear layer in CSR form; conv layers stay dense (their structured form)."""
    out = copy.deepcopy(model)
    for _, mod in list(out.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear):
                setattr(mod, child_name, SparseLinear(child))
    return out


@torch.no_grad()
def inference_form(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with the normalisation folded (`fold_normalize`)."""
    return fold_normalize(copy.deepcopy(model).eval())
