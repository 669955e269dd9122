"""Deep Compression [HMD16]: magnitude pruning with retraining, then k-means weight sharing per layer
with centroid fine-tuning; Huffman coding of the sparse layers is bayescomp.coding's job (CR max).

Weight sharing (compress): the kept weights of each layer are clustered into 2^bits values by
k-means with linear initialisation over [min, max] [HMD16] Sec. 3.1-3.2; then, with every weight
tied to its centroid, the centroids alone are trained for `centroid_epochs` on the training split,
each receiving the sum of its weights' gradients [HMD16] Sec. 3.3 (autograd of codebook[index]).
Bits per layer = log2(number of clusters): `bits_conv` for Conv2d, `bits_fc` for Linear (the paper's
LeNet choice: 8 and 5).

[HMD16] Han, Mao, Dally. Deep Compression. ICLR 2016.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from baselines.magnitude import MagnitudePruning
from bayescomp.data import ImageData
from bayescomp.method import Compressed, CompressedLayer, Dense
from bayescomp.models import prunable_layers
from bayescomp.prune import densify
from bayescomp.train import TrainConfig, fit


class _Shared(nn.Module):
    """weight = codebook[index] where kept, exactly 0 where pruned."""

    def __init__(self, codebook: Tensor, index: Tensor, mask: Tensor) -> None:
        super().__init__()
        self.codebook = nn.Parameter(codebook)
        self.register_buffer("index", index)
        self.register_buffer("mask", mask)

    def forward(self, _: Tensor) -> Tensor:
        return torch.where(self.mask, self.codebook[self.index], torch.zeros((), device=self.codebook.device))


def linear_kmeans(values: Tensor, k: int, iters: int = 30) -> tuple[Tensor, Tensor]:
    """(centroids, index per value): Lloyd's k-means on 1-D values from k centroids spaced linearly
    over [min, max] [HMD16] Sec. 3.2. In 1-D the nearest centroid is found by bisection between the
    sorted centroids' midpoints (O(n log k), where scipy's kmeans2 is O(n k): minutes on VGG's layers).
    An empty cluster keeps its centroid."""
    v = values.double().flatten()
    c = torch.linspace(float(v.min()), float(v.max()), max(1, k), dtype=torch.float64, device=v.device)
    for _ in range(iters):
        c = c.sort().values
        idx = torch.bucketize(v, (c[1:] + c[:-1]) / 2)
        counts = torch.bincount(idx, minlength=len(c))
        sums = torch.bincount(idx, weights=v, minlength=len(c))
        new = torch.where(counts > 0, sums / counts.clamp(min=1), c)
        if torch.equal(new, c):
            break
        c = new
    c = c.sort().values
    idx = torch.bucketize(v, (c[1:] + c[:-1]) / 2)
    used = torch.bincount(idx, minlength=len(c)) > 0  # drop empty clusters: they cost codebook entries
    remap = torch.cumsum(used.long(), 0) - 1
    return c[used].float(), remap[idx]


@dataclass
class DeepCompression(MagnitudePruning):
    """Pruning fields as `magnitude`; then weight sharing (module docstring)."""

    name: ClassVar[str] = "deep_compression"
    bits_conv: int = 8
    bits_fc: int = 5
    centroid_epochs: int = 1
    centroid_lr: float = 1e-4

    def compress(self, model: nn.Module, data: ImageData | None = None) -> Compressed:
        pruned = super().compress(model, data)
        shared = copy.deepcopy(pruned.model)
        for p in shared.parameters():
            p.requires_grad_(False)
        bits: dict[str, int] = {}
        for name, layer in prunable_layers(shared):
            w = layer.weight.detach()
            mask = w.ne(0)
            b = self.bits_conv if w.dim() == 4 else self.bits_fc
            centroids, labels = linear_kmeans(w[mask], 2 ** b)
            index = torch.zeros(w.shape, dtype=torch.long)
            index[mask.cpu()] = labels
            bits[name] = max(1, math.ceil(math.log2(len(centroids))))
            parametrize.register_parametrization(
                layer, "weight", _Shared(centroids.to(w.device), index.to(w.device), mask), unsafe=True)
        if data is not None and self.centroid_epochs > 0:
            fit(shared, Dense(), data, TrainConfig(epochs=self.centroid_epochs, lr=self.centroid_lr), seed=0,
                device=next(shared.parameters()).device, progress=False, test_subset=1)
        layers = dict(prunable_layers(shared))
        weights = {n: m.weight.detach().clone() for n, m in layers.items()}
        biases = {n: m.bias.detach().clone() for n, m in layers.items()}
        books = {n: m.parametrizations.weight[0].codebook.detach().clone() for n, m in layers.items()}
        for m in layers.values():
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        out = {n: CompressedLayer(weights[n], bits[n], books[n]) for n in weights}
        info = {**pruned.info, "clusters": {n: len(b) for n, b in books.items()}}
        return Compressed(densify(shared, weights, biases), out, info)
