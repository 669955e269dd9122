"""Which units a compressed network keeps, and its export to a smaller dense network.

The prunable layers of our models form a chain. A unit between layer l and l+1 (a neuron, or a
conv filter) is kept when layer l+1 still reads it (a nonzero weight in its column(s)); a unit no
one reads is dead compute and is removed with its row of layer l. The network's inputs to the first
Linear layer are kept when read; the outputs of the last layer (the classes) are always kept.
`export` builds the structurally pruned model with the model's own builder and `widths` (with batch
norm only if the model has it), so on any input it computes what the masked model computes.
Not here: choosing masks from a posterior (bayescomp.bc), measuring (bayescomp.metrics).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bayescomp.models import MODELS, InputSelect, LayerSet, Normalize, has_batch_norm, prunable_layers


@dataclass(frozen=True)
class LayerStructure:
    """Kept unit indices of one prunable layer. kept_in: input features (Linear) or channels (Conv2d)."""

    name: str
    kind: str  # "linear" | "conv"
    kept_in: Tensor
    kept_out: Tensor
    kernel_numel: int

    @property
    def n_weights(self) -> int:
        """Weights of the structurally pruned dense layer."""
        return len(self.kept_in) * len(self.kept_out) * self.kernel_numel


def structure(weights: dict[str, Tensor]) -> list[LayerStructure]:
    """Kept units of a chain of layers given their final weights (zeros where pruned), in forward order.

    weights: name -> (out, in) for Linear or (out, in, kh, kw) for Conv2d.
    """
    names = list(weights)
    ws = [weights[n].detach() for n in names]
    kept_out: list[Tensor] = []
    for i, w in enumerate(ws):
        if i == len(ws) - 1:
            kept_out.append(torch.arange(w.shape[0]))
            continue
        nxt = ws[i + 1]
        reads = nxt.ne(0).transpose(0, 1).reshape(nxt.shape[1], -1).any(1)  # per input feature of l+1
        per_unit = reads.view(w.shape[0], -1).any(1)  # conv -> linear: each channel feeds H*W features
        kept_out.append(per_unit.nonzero().flatten())
    out: list[LayerStructure] = []
    for i, (n, w) in enumerate(zip(names, ws)):
        kind = "conv" if w.dim() == 4 else "linear"
        if i == 0:
            kept_in = (w.ne(0).transpose(0, 1).reshape(w.shape[1], -1).any(1).nonzero().flatten()
                       if kind == "linear" else torch.arange(w.shape[1]))
        elif kind == "linear":
            kept_in = w.ne(0).any(0).nonzero().flatten()
            prev = ws[i - 1].shape[0]
            per = w.shape[1] // prev
            alive = torch.zeros(prev, dtype=torch.bool)
            alive[kept_out[i - 1]] = True
            kept_in = kept_in[alive[kept_in // per]]
        else:
            kept_in = kept_out[i - 1]
        kernel = w[0, 0].numel() if kind == "conv" else 1
        out.append(LayerStructure(n, kind, kept_in, kept_out[i], kernel))
    return out


def architecture(struct: list[LayerStructure]) -> list[int]:
    """Kept units in the paper's notation: conv -> kept filters, Linear -> kept inputs."""
    return [len(s.kept_out) if s.kind == "conv" else len(s.kept_in) for s in struct]


@torch.no_grad()
def export(model: nn.Module, model_name: str) -> tuple[nn.Module, list[int]]:
    """The smaller dense model with pruned units physically removed, and its widths.

    model: built with dense layers by `MODELS[model_name]`, pruned weights exactly zero.
    """
    layers = dict(prunable_layers(model))
    struct = structure({n: m.weight for n, m in layers.items()})
    widths = architecture(struct)
    norm = next(m for m in model.modules() if isinstance(m, Normalize))
    small = MODELS[model_name](layers=LayerSet(batch_norm=has_batch_norm(model)),  # none if BC's had none
                                 mean=norm.mean.flatten().tolist(), std=norm.std.flatten().tolist(), widths=widths)
    small_mods = dict(small.named_modules())
    channels: Tensor | None = None  # kept output units of the last prunable layer seen
    by_name = {s.name: s for s in struct}
    for name, big in model.named_modules():
        if name in by_name:
            s = by_name[name]
            w = big.weight[s.kept_out][:, s.kept_in]
            small_mods[name].weight.copy_(w)
            if big.bias is not None:
                small_mods[name].bias.copy_(big.bias[s.kept_out])
            channels = s.kept_out
        elif isinstance(big, nn.modules.batchnorm._BatchNorm):
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(small_mods[name], attr).copy_(getattr(big, attr)[channels])
            small_mods[name].num_batches_tracked.copy_(big.num_batches_tracked)
        elif isinstance(small_mods.get(name), InputSelect):
            nxt = struct[[s.name for s in struct].index(_next_prunable(model, name))]
            small_mods[name].index.copy_(_remap(nxt.kept_in, channels, small_mods[name].n_in))
        elif isinstance(big, Normalize):
            small_mods[name].load_state_dict(big.state_dict())
    return small.eval(), widths


def _next_prunable(model: nn.Module, after: str) -> str:
    names = [n for n, _ in model.named_modules()]
    pr = {n for n, _ in prunable_layers(model)}
    return next(n for n in names[names.index(after):] if n in pr)


def _remap(kept_in: Tensor, channels: Tensor | None, n_in_small: int) -> Tensor:
    """Indices of kept flattened features in the smaller model's flattened input."""
    if channels is None:  # the network's own input (pixels): nothing upstream was removed
        return kept_in
    per = n_in_small // len(channels)
    new_rank = torch.full((int(channels.max()) + 1,), -1, dtype=torch.long)
    new_rank[channels] = torch.arange(len(channels))
    return new_rank[kept_in // per] * per + kept_in % per


def cascade_masks(layers: list[tuple[str, nn.Module]], pruned: dict[str, Tensor]) -> dict[str, Tensor]:
    """Weight masks from pruned groups, cascaded across the chain of layers.

    pruned: name -> bool per group (Linear: input unit; Conv2d: output filter) to remove.
    A removed Linear input j zeroes column j and, when the previous layer is Linear, its row j;
    a removed conv filter f zeroes row f and the next layer's inputs from f (a conv's input
    channel, or the H*W columns a flattened channel feeds). The last layer's outputs stay.
    """
    masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in layers}
    for i, (n, m) in enumerate(layers):
        drop = pruned.get(n)
        if drop is None or not drop.any():
            continue
        w = masks[n]
        if w.dim() == 2:  # Linear: groups are inputs
            w[:, drop] = False
            if i > 0 and masks[layers[i - 1][0]].dim() == 2:
                masks[layers[i - 1][0]][drop] = False
        elif i < len(layers) - 1:  # Conv2d: groups are output filters (never the network's outputs)
            w[drop] = False
            nxt = masks[layers[i + 1][0]]
            nxt.view(nxt.shape[0], w.shape[0], -1)[:, drop] = False
    for st in structure({n: masks[n].float() for n, _ in layers}):  # units no one reads any more go too
        keep = torch.zeros_like(masks[st.name])
        keep[st.kept_out[:, None], st.kept_in[None, :]] = True
        masks[st.name] &= keep
    return masks


@torch.no_grad()
def densify(model: nn.Module, weights: dict[str, Tensor], biases: dict[str, Tensor]) -> nn.Module:
    """A copy of `model` with every prunable layer replaced by nn.Linear / nn.Conv2d holding the given
    weights and biases; every other module (normalisation, batch norm) is copied as it is."""
    dense = copy.deepcopy(model)
    for name, layer in prunable_layers(model):
        w = weights[name]
        if w.dim() == 4:
            new: nn.Module = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=layer.stride,
                                       padding=layer.padding, dilation=layer.dilation)
        else:
            new = nn.Linear(w.shape[1], w.shape[0])
        new.weight.copy_(w)
        new.bias.copy_(biases[name])
        parent_name, _, child = name.rpartition(".")
        setattr(dense.get_submodule(parent_name) if parent_name else dense, child, new.to(w.device))
    return dense.eval()
