"""The paper's three networks, each built from a `LayerSet` so that methods swap in their layers.

lenet300: 784-300-100-10 MLP with ReLU. lenet5_caffe: conv 20@5x5, pool, conv 50@5x5, pool,
fc 800-500, fc 500-10 (ReLU after every hidden layer, as in the Sparse VD and BC reimplementations).
vgg_cifar: the cifar.torch VGG (13 conv 3x3 + batch norm, fc 512-512 + batch norm, fc 512-10),
without its dropout, since the compression methods bring their own noise; built without its batch
norm layers when the layer set says so (BC: see bayescomp.variational.init_from_dense, `fold_batch_norm`).
Every model starts with `Normalize`, so it takes raw images scaled to [0, 1]; its input shape,
classes and default normalisation are its data set's (bayescomp.data.MNIST / CIFAR10). `widths`
builds the smaller dense model a structural export produces; `InputSelect` then keeps only the used
inputs. `MODELS` is the one registry of model names.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Sequence

import torch
from torch import Tensor, nn

from bayescomp.artifact import load_plain
from bayescomp.data import CIFAR10, MNIST

VGG_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                  512, 512, 512, "M", 512, 512, 512, "M")


@dataclass(frozen=True)
class LayerSet:
    """The Linear / Conv2d classes a model is built with (signatures as torch.nn's, less `bias`: the
    models always have biases and the Bayesian layers take no such argument), and whether the
    model keeps its batch norm layers (vgg_cifar; the LeNets have none). BC builds VGG without them:
    bayescomp.variational.init_from_dense folds the dense model's batch norm into the layers before it."""

    linear: Callable[..., nn.Module] = nn.Linear
    conv2d: Callable[..., nn.Module] = nn.Conv2d
    batch_norm: bool = True


DENSE = LayerSet()


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers, saved with the model.

    Also the model's input check: x must be (N, *image_shape), or (N, C*H*W) if `accept_flat`
    (it is then viewed as images). Anything else is a ValueError naming the expected shape, never a
    silent broadcast against the (1, C, 1, 1) buffers.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], image_shape: tuple[int, int, int],
                 accept_flat: bool = False) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.image_shape, self.accept_flat = tuple(image_shape), accept_flat

    def forward(self, x: Tensor) -> Tensor:
        flat = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        if self.accept_flat and x.dim() == 2 and x.shape[1] == flat:
            x = x.unflatten(1, self.image_shape)
        elif x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            dims = ", ".join(map(str, self.image_shape))
            fix = (f"; reshape it with x.view(-1, {dims})" if x.dim() == 2 and x.shape[1] == flat
                   else "; pass a batch of such images")
            raise ValueError(f"the model takes images of shape (N, {dims})"
                             + (f" or flat (N, {flat})" if self.accept_flat else "")
                             + f", got a tensor of shape {tuple(x.shape)}{fix}")
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, accept_flat={self.accept_flat}"


class InputSelect(nn.Module):
    """Flattens the input and keeps the features listed in `index` (a buffer)."""

    def __init__(self, n_in: int, n_keep: int) -> None:
        super().__init__()
        self.n_in = n_in
        self.register_buffer("index", torch.arange(n_keep))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1).index_select(1, self.index)


def _flatten_or_select(n_in: int, n_keep: int) -> nn.Module:
    return nn.Flatten() if n_keep == n_in else InputSelect(n_in, n_keep)


def lenet300(layers: LayerSet = DENSE, mean: Sequence[float] = MNIST.mean, std: Sequence[float] = MNIST.std,
             widths: Sequence[int] = (MNIST.input_features, 300, 100)) -> nn.Module:
    """LeNet-300-100 for MNIST; widths = (kept input pixels, hidden1, hidden2)."""
    w = list(widths)
    return nn.Sequential(OrderedDict([
        ("normalize", Normalize(mean, std, MNIST.shape, accept_flat=True)),  # an MLP: flat input is natural
        ("flatten", _flatten_or_select(MNIST.input_features, w[0])),
        ("fc1", layers.linear(w[0], w[1])), ("relu1", nn.ReLU()),
        ("fc2", layers.linear(w[1], w[2])), ("relu2", nn.ReLU()),
        ("fc3", layers.linear(w[2], MNIST.num_classes)),
    ]))


def lenet5_caffe(layers: LayerSet = DENSE, mean: Sequence[float] = MNIST.mean, std: Sequence[float] = MNIST.std,
                 widths: Sequence[int] = (20, 50, 800, 500)) -> nn.Module:
    """LeNet-5-Caffe for MNIST; widths = (conv1 filters, conv2 filters, fc1 inputs, fc1 outputs)."""
    c1, c2, f_in, f_out = widths
    return nn.Sequential(OrderedDict([
        ("normalize", Normalize(mean, std, MNIST.shape)),
        ("conv1", layers.conv2d(MNIST.shape[0], c1, 5)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", layers.conv2d(c1, c2, 5)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("flatten", _flatten_or_select(c2 * 16, f_in)),  # 28 -> conv 24 -> pool 12 -> conv 8 -> pool 4: 4x4
        ("fc1", layers.linear(f_in, f_out)), ("relu3", nn.ReLU()),
        ("fc2", layers.linear(f_out, MNIST.num_classes)),
    ]))


def vgg_cifar(layers: LayerSet = DENSE, mean: Sequence[float] = CIFAR10.mean, std: Sequence[float] = CIFAR10.std,
              widths: Sequence[int] | None = None, width: float = 1.0) -> nn.Module:
    """cifar.torch VGG for CIFAR-10; widths = 13 conv filter counts, then fc1 inputs, fc1 outputs. Without widths,
    `width` scales every layer of the original (the `quick` profile trains a 1/8-wide VGG on a CPU).
    Batch norm after every conv and after fc1 unless `layers.batch_norm` is False (BC's layer sets)."""
    if not 0 < width <= 1:
        raise ValueError(f"vgg_cifar width {width!r}: must be in (0, 1] (a share of cifar.torch's widths)")
    convs = [c for c in VGG_CFG if c != "M"]
    w = list(widths) if widths is not None else [max(1, round(c * width)) for c in (*convs, 512, 512)]
    mods: list[tuple[str, nn.Module]] = [("normalize", Normalize(mean, std, CIFAR10.shape))]
    c_in, k = CIFAR10.shape[0], 0
    for c in VGG_CFG:
        if c == "M":
            mods.append((f"pool{k}", nn.MaxPool2d(2)))
            continue
        k += 1
        mods += [(f"conv{k}", layers.conv2d(c_in, w[k - 1], 3, padding=1))]
        mods += [(f"bn{k}", nn.BatchNorm2d(w[k - 1]))] if layers.batch_norm else []
        mods += [(f"relu{k}", nn.ReLU())]
        c_in = w[k - 1]
    mods += [("flatten", _flatten_or_select(c_in, w[13])), ("fc1", layers.linear(w[13], w[14]))]
    mods += [("bn_fc1", nn.BatchNorm1d(w[14]))] if layers.batch_norm else []
    mods += [("relu_fc1", nn.ReLU()), ("fc2", layers.linear(w[14], CIFAR10.num_classes))]
    return nn.Sequential(OrderedDict(mods))


MODELS: dict[str, Callable[..., nn.Module]] = {  # the models an experiment may name, and their builders
    "lenet300": lenet300, "lenet5_caffe": lenet5_caffe, "vgg_cifar": vgg_cifar,
}


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear/Conv2d-like layer, in forward order."""
    return [(n, m) for n, m in model.named_modules()
            if hasattr(m, "in_features") or hasattr(m, "in_channels")]


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def fold_batch_norm(model: nn.Module, keep: Collection[str] = ()) -> nn.Module:
    """A copy of `model` whose eval-mode batch norm layers (other than those named in `keep`) are folded
    into the prunable layer before them, and replaced by nn.Identity: in eval mode it computes the same.

    BN(Wx + b) = s ⊙ (Wx + b − μ) + β with s = γ / √(σ² + ε) per output unit (running statistics)
    [IS15] Sec. 3.1, so the folded layer has weight s ⊙ W (row-wise) and bias s ⊙ (b − μ) + β.
    [IS15] Ioffe, Szegedy. Batch Normalization. ICML 2015.
    """
    out = copy.deepcopy(model)
    previous: nn.Module | None = None
    for name, m in list(out.named_modules()):
        if hasattr(m, "in_features") or hasattr(m, "in_channels"):
            previous = m
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and name not in keep:
            if previous is None or previous.weight.shape[0] != m.num_features:
                raise ValueError(f"batch norm {name!r} follows no layer with {m.num_features} outputs: cannot fold it")
            s = m.weight / torch.sqrt(m.running_var + m.eps)  # [IS15] Alg. 2, inference
            bias = previous.bias if previous.bias is not None else torch.zeros_like(s)
            previous.weight.mul_(s.view(-1, *[1] * (previous.weight.dim() - 1)))
            previous.bias = nn.Parameter((bias - m.running_mean) * s + m.bias)
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, nn.Identity())
    return out


def count_weights(model: nn.Module, biases: bool = False) -> int:
    """Number of weights of the prunable layers (biases optional; batch norm never counted)."""
    total = 0
    for _, m in prunable_layers(model):
        total += m.weight.numel()
        if biases and getattr(m, "bias", None) is not None:
            total += m.bias.numel()
    return total


MODEL_FORMAT = "bayescomp-model/1"


def model_record(model: nn.Module, model_name: str, widths: Sequence[int]) -> dict:
    """A model as plain data (tensors, lists, strings), loadable with torch.load(weights_only=True)."""
    norm = next(m for m in model.modules() if isinstance(m, Normalize))
    return {"format": MODEL_FORMAT, "model": model_name, "widths": [int(w) for w in widths],
            "batch_norm": has_batch_norm(model),
            "mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist(),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def load_model(path: str | Path) -> nn.Module:
    """Rebuild a saved model (model.pt of a results folder) for inference on images scaled to [0, 1].

    Loads with weights_only=True: the file is plain data and cannot run code when opened.
    """
    rec = load_plain(path, "delete it and rerun the experiment that wrote it (python -m reproduce run ID --force)")
    if not isinstance(rec, dict) or rec.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a {MODEL_FORMAT} file (written by bayescomp's reproduce run)")
    if rec["model"] not in MODELS:
        raise ValueError(f"{path}: unknown model {rec['model']!r}; valid: {sorted(MODELS)}")
    layers = LayerSet(batch_norm=rec.get("batch_norm", True))  # records before the key were built with it
    model = MODELS[rec["model"]](layers=layers, mean=rec["mean"], std=rec["std"], widths=rec["widths"])
    model.load_state_dict(rec["state_dict"])
    return model.eval()
