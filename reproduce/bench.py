"""Speed measurements (Table 2).

train_cost: seconds per training epoch of each method relative to the dense model, same loop,
batch size and data, measured side by side in one process (epochs interleaved, median of the
repetitions), so that the ratio is robust to other load on the machine. peak_training_memory: what
training adds to memory at its peak.
inference_bench: forward time of the dense model, of each recorded structurally pruned model and
of its CSR form (Linear layers as torch.sparse CSR), beside the bound a FLOP count allows.
"""
from __future__ import annotations

import copy
from pathlib import Path
import multiprocessing
import statistics
import time
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bayescomp.data import ImageData
from bayescomp.models import Normalize
from bayescomp.train import TrainConfig, fit
from reproduce.registry import METHODS, MODELS


def train_cost(data: ImageData, model_name: str, methods: list[str], repeats: int = 3, batch_size: int = 128,
               train_subset: int | None = None, device: str = "cpu") -> list[dict[str, Any]]:
    """One row per method: median epoch seconds and the ratio to the first method (put 'dense' first)."""
    cfg = TrainConfig(epochs=1, batch_size=batch_size)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(repeats + 1):  # the first round warms up and is discarded
        for name in methods:
            torch.manual_seed(rep)
            method = METHODS[name]()
            model = MODELS[model_name](layers=method.layers(), mean=data.mean, std=data.std)
            h = fit(model, method, data, cfg, seed=rep, device=device, progress=False, train_subset=train_subset,
                    test_subset=1)
            if rep:
                times[name].append(h[0]["seconds"])
    base = statistics.median(times[methods[0]])
    return [{"model": model_name, "method": m, "epoch_seconds": statistics.median(t),
             "ratio_to_" + methods[0]: statistics.median(t) / base, "threads": torch.get_num_threads(),
             "batch_size": batch_size} for m, t in times.items()]


def step_breakdown(model_name: str, methods: list[str], batch_size: int = 128, input_shape: tuple[int, ...] = (1, 28, 28),
                   repeats: int = 100) -> list[dict[str, Any]]:
    """Milliseconds per training step, by phase, on random data: where a method's extra cost goes;
    and the step's matrix-product MFLOP (torch's FlopCounterMode), the arithmetic floor of its cost."""
    import time

    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    def clock(fn) -> float:
        for _ in range(10):
            fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats * 1000

    rows = []
    for name in methods:
        torch.manual_seed(0)
        method = METHODS[name]()
        model = MODELS[model_name](layers=method.layers()).train()
        opt = torch.optim.Adam(model.parameters(), 1e-3, fused=True)  # as bayescomp.train
        x, y = torch.rand(batch_size, *input_shape), torch.randint(0, 10, (batch_size,))

        def forward_backward() -> None:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()

        def penalty() -> None:
            p = method.penalty(model)
            if p.requires_grad:
                p.backward()

        with FlopCounterMode(display=False) as counter:  # matrix products of one forward + backward
            forward_backward()
        rows.append({"method": name, "step_mflop": counter.get_total_flops() / 1e6,
                     "forward_ms": clock(lambda: F.cross_entropy(model(x), y)),
                     "forward_backward_ms": clock(forward_backward), "penalty_fwd_bwd_ms": clock(penalty),
                     "optimizer_ms": clock(opt.step), "step_end_ms": clock(lambda: method.on_step_end(model))})
    return rows


# ---------------------------------------------------------------- inference speed (Table 2)

BATCH_SIZES = {"lenet300": (1, 64, 1024), "lenet5_caffe": (1, 64, 1024), "vgg_cifar": (1, 64, 256)}


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored as torch.sparse CSR (the zeros of pruning not stored)."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        w = layer.weight.detach()
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            self.register_buffer("weight", w.to_sparse_csr())  # buffers: .to(device) moves them
        self.register_buffer("bias", layer.bias.detach().clone() if layer.bias is not None else None)
        self.nnz = int(w.count_nonzero())

    def forward(self, x: Tensor) -> Tensor:
        y = (self.weight @ x.T).T  # CSR (out, in) @ dense (in, batch)
        return y + self.bias if self.bias is not None else y


@torch.no_grad()
def inference_form(model: nn.Module) -> nn.Module:
    """A copy with the input normalisation folded into the first weight layer, where that is exact
    (a Linear layer, or a conv without padding): (x − m)/s · W = x · W/s − (W/s)·m. The dense and the
    pruned models are timed in this form alike; otherwise the normalisation of the whole unpruned
    input would be a fixed cost that pruning cannot touch."""
    out = copy.deepcopy(model).eval()
    norm_parent, norm_name, first = None, None, None
    for parent in out.modules():
        for name, child in parent.named_children():
            if isinstance(child, Normalize) and norm_parent is None:
                norm_parent, norm_name = parent, name
            elif isinstance(child, (nn.Linear, nn.Conv2d)) and first is None:
                first = child
    if norm_parent is None or first is None:
        return out
    norm = getattr(norm_parent, norm_name)
    mean, std = norm.mean.flatten(), norm.std.flatten()
    if isinstance(first, nn.Conv2d):
        pad = first.padding
        if pad != "valid" and (isinstance(pad, str) or any(pad)):
            return out  # zero padding of the normalised input is not zero padding of the raw one
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
    return out


def sparse_variant(model: nn.Module) -> nn.Module:
    """The model with every Linear layer in CSR form; conv layers stay dense (their structured form)."""
    out = copy.deepcopy(model)
    for name, mod in list(out.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Linear):
                setattr(mod, child_name, SparseLinear(child))
    return out


def weight_macs(model: nn.Module, input_shape: tuple[int, ...], *, nonzero: bool) -> int:
    """Multiply-adds of the weight layers per image: every weight (nonzero=False) or only the
    nonzero ones of Linear layers (a CSR product skips the zeros; a dense conv does not)."""
    total = 0

    def hook(mod: nn.Module, _inp: Any, out: Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            total += mod.weight.numel() * out.shape[-1] * out.shape[-2]
        elif isinstance(mod, nn.Linear):
            total += int(mod.weight.count_nonzero()) if nonzero else mod.weight.numel()
        elif isinstance(mod, SparseLinear):
            total += mod.nnz

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, SparseLinear))]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return total


def time_forwards(nets: list[nn.Module], x: Tensor, seconds: float = 0.5, min_reps: int = 9,
                  max_reps: int = 300) -> list[dict[str, float]]:
    """Median and interquartile range (ms) of one forward pass of each net on x. After 3 warm-up
    passes each, the nets take turns (one pass each per round, synchronised on a GPU), for as many
    rounds as fit `seconds` for the slowest (at least min_reps): slow drifts of the machine's speed
    then hit every net alike, and the ratios between them stay robust."""
    cuda = x.device.type == "cuda"

    def once(net: nn.Module) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        net(x)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1000

    with torch.inference_mode():
        slowest = max(min(once(net) for _ in range(3)) for net in nets)
        rounds = int(min(max_reps, max(min_reps, seconds * 1000 / max(slowest, 1e-3))))
        times: list[list[float]] = [[] for _ in nets]
        for _ in range(rounds):
            for i, net in enumerate(nets):
                times[i].append(once(net))
    out = []
    for t in times:
        q1, med, q3 = statistics.quantiles(t, n=4)
        out.append({"median_ms": med, "q1_ms": q1, "q3_ms": q3, "reps": len(t)})
    return out


def inference_bench(models: dict[str, dict[str, nn.Module]], input_shapes: dict[str, tuple[int, ...]],
                    threads: tuple[int, ...] = (1, 2), device: str = "cpu", progress: bool = True,
                    ) -> list[dict[str, Any]]:
    """models: model name -> {method label -> structurally pruned model}, 'dense' included.
    One row per (model, method, variant, threads, batch): time, speed-up vs dense, FLOP-ratio bound."""
    dev = torch.device(device)
    jobs = []
    for model_name, by_method in models.items():
        by_method = {k: inference_form(v) for k, v in by_method.items()}
        dense = by_method["dense"]
        dense_macs = weight_macs(dense, input_shapes[model_name], nonzero=False)
        for method, small in by_method.items():
            variants = {"dense": dense} if method == "dense" else {"structured": small}
            if method != "dense" and any(isinstance(m, nn.Linear) and bool((m.weight == 0).any()) for m in small.modules()):
                variants["sparse CSR"] = sparse_variant(small)
            for variant, net in variants.items():
                macs = weight_macs(net, input_shapes[model_name], nonzero=variant == "sparse CSR")
                jobs.append((model_name, method, variant, net.to(dev).eval(), macs, dense_macs))
    cpu_threads = threads if dev.type == "cpu" else (torch.get_num_threads(),)
    rows = []
    groups = {m: [j for j in jobs if j[0] == m] for m in models}  # every form of one model, timed in turns
    bar = tqdm(total=len(cpu_threads) * sum(len(BATCH_SIZES[m]) for m in groups), disable=not progress,
               desc="table2 inference", unit="group")
    saved_threads = torch.get_num_threads()
    try:
        for n_threads in cpu_threads:
            torch.set_num_threads(n_threads)
            for model_name, group in groups.items():
                for batch in BATCH_SIZES[model_name]:
                    gen = torch.Generator().manual_seed(batch)
                    x = torch.rand(batch, *input_shapes[model_name], generator=gen).to(dev)
                    for (_, method, variant, _, macs, dense_macs), t in zip(group, time_forwards([j[3] for j in group], x)):
                        rows.append({"model": model_name, "method": method, "variant": variant, "device": dev.type,
                                     "threads": n_threads if dev.type == "cpu" else None, "batch": batch, **t,
                                     "macs_per_image": macs, "flop_ratio": dense_macs / macs})
                    bar.update(1)
    finally:
        torch.set_num_threads(saved_threads)
        bar.close()
    ref = {(r["model"], r["threads"], r["batch"]): r["median_ms"] for r in rows if r["method"] == "dense"}
    for r in rows:
        r["speedup"] = ref[(r["model"], r["threads"], r["batch"])] / r["median_ms"]
        r["of_bound_pct"] = 100 * r["speedup"] / r["flop_ratio"]
    return rows


def peak_training_memory(model_name: str, method_name: str, data: ImageData, steps: int = 30,
                         batch_size: int = 128, device: str = "cpu") -> float:
    """MB of memory a few training steps add at their peak: CUDA max_memory_allocated on a GPU;
    on a CPU (Linux), the rise of the peak resident set over the one at the start, in a fresh
    process for each method."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        _train_steps(model_name, method_name, data.subset(steps * batch_size, 1), batch_size, device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_peak_child, (model_name, method_name, data.subset(steps * batch_size, 1), batch_size))


def _peak_child(model_name: str, method_name: str, data: ImageData, batch_size: int) -> float:
    """In a fresh process: warm torch up on a tiny network, reset the kernel's peak-RSS mark (Linux
    /proc/self/clear_refs, "5"), train, and return how far the peak rose above the resident set at
    the start, in MB."""
    torch.set_num_threads(1)
    tiny = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))  # torch's one-time set-up, not the
    opt = torch.optim.Adam(tiny.parameters(), fused=True)                     # method's memory
    nn.functional.cross_entropy(tiny(torch.rand(2, 1, 4, 4)), torch.tensor([0, 1])).backward()
    opt.step()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    _train_steps(model_name, method_name, data, batch_size, "cpu")
    return (_status_kb("VmHWM") - before) / 1024


def _status_kb(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def _train_steps(model_name: str, method_name: str, data: ImageData, batch_size: int, device: str) -> None:
    torch.manual_seed(0)
    method = METHODS[method_name]()
    model = MODELS[model_name](layers=method.layers(), mean=data.mean, std=data.std)
    fit(model, method, data, TrainConfig(epochs=1, batch_size=batch_size), seed=0, device=device, progress=False)


def op_profile(models: dict[str, nn.Module], input_shape: tuple[int, ...], batch: int = 1024, threads: int = 1,
               reps: int = 20) -> Any:
    """Self CPU milliseconds per forward pass, by operator (torch.profiler), for each model (in its
    inference form): where the time goes when a speed-up falls short of its FLOP ratio."""
    import pandas as pd
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    x = torch.rand(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    cols = {}
    for label, model in models.items():
        net = inference_form(model)
        with torch.inference_mode():
            for _ in range(3):
                net(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(reps):
                    net(x)
        cols[label] = {e.key: e.self_cpu_time_total / 1000 / reps for e in prof.key_averages()}
    frame = pd.DataFrame(cols).fillna(0.0)
    frame = frame[frame.max(axis=1) >= 0.05].sort_values(frame.columns[0], ascending=False)
    frame.loc["total"] = frame.sum()
    return frame
