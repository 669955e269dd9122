"""The inference form of a model: the same function (up to float rounding), rewritten to run fast.

Table 2 times the dense and the pruned models in this form alike (reproduce/bench_inference.py), so that
a speed-up compares two networks, not a fast and a slow way to run them. The rewrites:

- everywhere: the input normalisation folded into the first weight layer, where that is exact;
- on a CPU, for a model that is an nn.Sequential of layers (the paper's three are), also
  - ReLU after a max-pool instead of before (max and ReLU commute), in place: on a quarter of the values;
  - a one-channel conv followed by a 2×2 max-pool as one conv at stride 2 (`ConvPool`);
  - the other non-overlapping max-pools as the max of their strided views (`StridedMaxPool`);
  - conv weights in channels_last memory format (oneDNN then runs its NHWC kernels: LeNet-5's dense
    conv2 1.4× faster at 64 images, the pruned ones' (9-11 input channels) alike either way);
  - Linear layers as `FastLinear`, their hidden widths padded with zero units to a multiple of 16;
  - with conv layers, the batch run in chunks of `CPU_CHUNK` examples whose activations stay in cache.

Each was kept for what it measured on the LeNets (1 thread, the recorded models, dense and pruned
timed in turns): see the classes. The form does more multiply-adds than the model (zero units,
ConvPool's larger kernel); the FLOP-ratio bound counts the model's own, so that the extra work is
charged to the form's time, not to the bound.
"""
from __future__ import annotations

import copy
import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayescomp.models import Normalize

CPU_CHUNK = 64  # examples per chunk for conv nets on a CPU (LeNet-5: 64 and 128 measured alike, unchunked slower)
WIDTH_MULTIPLE = 16  # AVX-512 holds 16 floats: MKL's GEMM runs 310x107 at 30 GMAC/s, 310x112 at 45 (measured)


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


class StridedMaxPool(nn.Module):
    """nn.MaxPool2d(k) (stride k, no padding) as the elementwise max of the k² views x[..., i::k, j::k].
    Same values; on a CPU, max_pool2d also writes the index of every maximum and was 3-9× slower on
    NCHW tensors (LeNet-5 pool1 at batch 1024: 64 ms against 7.5), 1.3× on channels_last ones. Below
    SMALL values it calls max_pool2d: one op instead of 2k² - 1, whose fixed cost (~20 µs) then dominates."""

    SMALL = 32768

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        if x.numel() < self.SMALL:
            return F.max_pool2d(x, k)
        h, w = x.shape[-2] // k * k, x.shape[-1] // k * k
        views = [x[..., i:h:k, j:w:k] for i in range(k) for j in range(k)]
        out = torch.maximum(views[0], views[1])
        for v in views[2:]:
            torch.maximum(out, v, out=out)
        return out

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class ConvPool(nn.Module):
    """A conv (k×k, stride 1) then a 2×2 max-pool, as one conv with a (k+1)×(k+1) kernel at stride 2
    whose 4 channel groups are the 4 positions (di, dj) of each pool window (the kernel shifted by
    (di, dj)), and the max over the groups. 1.44× the multiply-adds for k = 5, but oneDNN runs a conv
    of one input channel slowly (25 terms per output): LeNet-5's conv1 + pool1 took 0.58 ms instead of
    0.88 (9 filters) and 0.90 instead of 1.70 (20 filters), 64 images. Each group is padded with zero
    filters to a multiple of 4 channels (4 groups: a multiple of 16), which measured faster again."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        w = conv.weight.detach()
        co, ci, kh, kw = w.shape
        cp = -(-co // 4) * 4
        big = w.new_zeros(4, cp, ci, kh + 1, kw + 1)
        bias = w.new_zeros(4, cp)
        for g, (di, dj) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            big[g, :co, :, di:di + kh, dj:dj + kw] = w
            if conv.bias is not None:
                bias[g, :co] = conv.bias.detach()
        self.register_buffer("weight", big.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", bias.flatten())
        self.padding, self.out_channels, self.group = conv.padding, co, cp

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv2d(x, self.weight, self.bias, stride=2, padding=self.padding)
        co, g = self.out_channels, self.group
        out = torch.maximum(y[:, :co], y[:, g:g + co])
        torch.maximum(out, y[:, 2 * g:2 * g + co], out=out)
        return torch.maximum(out, y[:, 3 * g:3 * g + co], out=out)

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, weight={tuple(self.weight.shape)}, stride=2, padding={self.padding}"


class FastLinear(nn.Module):
    """A Linear layer, and the ReLU after it (in place), in one module call. A layer of fewer than
    WIDTH_MULTIPLE outputs (the classifier's 10) is computed transposed, as (W xᵀ + b)ᵀ: MKL ran
    x Wᵀ with 10 columns at a quarter of its speed (batch 1024: 112→10 in 0.096 ms against 0.046,
    512→10 in 0.38 against 0.22); the output is then a transposed view. (Wᵀ stored contiguous was
    slower than F.linear's transposed view of W in every LeNet shape, and is not used.)"""

    def __init__(self, layer: nn.Linear, relu: bool) -> None:
        super().__init__()
        self.register_buffer("weight", layer.weight.detach().clone())
        bias = layer.bias.detach() if layer.bias is not None else layer.weight.new_zeros(layer.out_features)
        self.narrow = layer.out_features < WIDTH_MULTIPLE
        self.register_buffer("bias", bias.clone().view(-1, 1) if self.narrow else bias.clone())
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        y = torch.addmm(self.bias, self.weight, x.t()).t() if self.narrow else torch.addmm(self.bias, x, self.weight.t())
        return y.relu_() if self.relu else y

    def extra_repr(self) -> str:
        return (f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, relu={self.relu}, "
                f"transposed={self.narrow}")


class Chunked(nn.Module):
    """Runs `net` on chunks of `size` examples and concatenates the outputs: the same function, with
    activations that fit in cache (LeNet-5's conv1 output is 47 MB at batch 1024)."""

    def __init__(self, net: nn.Module, size: int) -> None:
        super().__init__()
        self.net, self.size = net, size

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] <= self.size:
            return self.net(x)
        return torch.cat([self.net(c) for c in x.split(self.size)])


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


def _is_plain_pool(m: nn.Module) -> bool:
    """A max-pool whose windows tile the input: k×k at stride k, no padding, dilation or ceil mode."""
    return (isinstance(m, nn.MaxPool2d) and isinstance(m.kernel_size, int) and m.kernel_size >= 2
            and m.stride in (m.kernel_size, (m.kernel_size, m.kernel_size)) and m.padding in (0, (0, 0))
            and m.dilation in (1, (1, 1)) and not m.ceil_mode and not m.return_indices)


def _pools_into(conv: nn.Module, pool: nn.Module) -> bool:
    """A one-channel conv (stride 1, zero padding) followed by a 2×2 pool: ConvPool's case."""
    return (type(conv) is nn.Conv2d and conv.in_channels == 1 and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and _is_plain_pool(pool) and pool.kernel_size == 2)


@torch.no_grad()
def _pad_hidden_widths(layers: list[tuple[str, nn.Module]], multiple: int) -> None:
    """Pad every Linear layer whose outputs feed the next Linear through ReLUs only with zero units up to
    `multiple`: a zero unit outputs ReLU(0) = 0, and the next layer's zero columns add nothing."""
    linear = [i for i, (_, m) in enumerate(layers) if type(m) is nn.Linear]
    for i, j in zip(linear, linear[1:]):
        if not all(isinstance(m, nn.ReLU) for _, m in layers[i + 1:j]):
            continue
        (name_a, a), (name_b, b) = layers[i], layers[j]
        width = -(-a.out_features // multiple) * multiple
        if width == a.out_features:
            continue
        wide = nn.Linear(a.in_features, width, bias=a.bias is not None)
        wide.weight.zero_()
        wide.weight[:a.out_features] = a.weight
        if a.bias is not None:
            wide.bias.zero_()
            wide.bias[:a.out_features] = a.bias
        after = nn.Linear(width, b.out_features, bias=b.bias is not None)
        after.weight.zero_()
        after.weight[:, :a.out_features] = b.weight
        if b.bias is not None:
            after.bias.copy_(b.bias)
        layers[i], layers[j] = (name_a, wide), (name_b, after)


_FRESH = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.modules.batchnorm._BatchNorm, ConvPool, StridedMaxPool, FastLinear)


def cpu_rewrite(model: nn.Sequential) -> nn.Module:
    """The CPU rewrites of the module docstring, for an nn.Sequential of layers."""
    layers = [(n, m) for n, m in model.named_children() if not isinstance(m, nn.Identity)]
    for i in range(len(layers) - 1):  # ReLU then max-pool -> max-pool then ReLU
        if isinstance(layers[i][1], nn.ReLU) and isinstance(layers[i + 1][1], nn.MaxPool2d):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    _pad_hidden_widths(layers, WIDTH_MULTIPLE)
    out: list[tuple[str, nn.Module]] = []
    i = 0
    while i < len(layers):
        name, m = layers[i]
        after = layers[i + 1][1] if i + 1 < len(layers) else None
        if isinstance(m, nn.Conv2d) and after is not None and _pools_into(m, after):
            out.append((f"{name}_{layers[i + 1][0]}", ConvPool(m)))
            i += 2
            continue
        if type(m) is nn.Linear:
            relu = isinstance(after, nn.ReLU)
            out.append((name, FastLinear(m, relu)))
            i += 2 if relu else 1
            continue
        if isinstance(m, nn.MaxPool2d) and _is_plain_pool(m):
            m = StridedMaxPool(m.kernel_size)
        elif isinstance(m, nn.ReLU) and out and isinstance(out[-1][1], _FRESH):
            m = nn.ReLU(inplace=True)  # on a tensor of its own (not a view of the caller's input)
        elif type(m) is nn.Conv2d:
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        out.append((name, m))
        i += 1
    net = nn.Sequential(OrderedDict(out))
    if any(isinstance(m, (nn.Conv2d, ConvPool)) for m in net.modules()):
        return Chunked(net, CPU_CHUNK)
    return net


@torch.no_grad()
def inference_form(model: nn.Module, device: str | torch.device = "cpu", sparse: bool = False) -> nn.Module:
    """An eval-mode copy of `model` that computes the same, in the form Table 2 times on `device`:
    the normalisation folded; with sparse=True, Linear layers in CSR form (`sparse_variant`); on a
    CPU, the rewrites of the module docstring (for an nn.Sequential)."""
    out = fold_normalize(copy.deepcopy(model).eval())
    if sparse:
        out = sparse_variant(out)
    if torch.device(device).type == "cpu" and isinstance(out, nn.Sequential):
        out = cpu_rewrite(out)
    return out.eval()
