"""Training cost of the methods (Table 2's training rows, `python -m reproduce bench-train`).

train_cost: seconds per training epoch of each method relative to the dense model, same loop,
batch size and data, measured side by side in one process (epochs interleaved, median of the
repetitions), so that the ratio is robust to other load on the machine. step_breakdown: where a
training step's time goes, by phase, each call timed on its own. peak_training_memory: what training
adds to memory at its peak. `spread` is how every timing here is recorded (median, min, quartiles,
max) and `machine` what it depends on besides the code (CPU model, the kernels torch dispatches
to). `bench-train` records its numbers in results/bench/cpu/train_<model>{.csv,_steps.csv,_meta.json};
inference speed is reproduce/bench_inference.py.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from bayescomp.data import DATASETS, DatasetInfo, ImageData, load_dataset
from bayescomp.method import Method
from bayescomp.models import MODELS
from bayescomp.train import TrainConfig, fit, keep_freed_memory
from reproduce.registry import METHODS
from reproduce.results import bench_dir, code_version, write_atomic
from reproduce.spec import Suite

CPU_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")  # environment variables that change the CPU kernels
PHASES = ("forward", "forward_backward", "penalty_fwd_bwd", "optimizer", "step_end", "sampling")  # step_breakdown's
OP_KINDS = {  # step_op_profile's summary: the operators whose self time is each kind of work; the rest is "rest"
    "products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::mkldnn_convolution", "aten::convolution_backward"),
    "sampling": ("aten::normal_",),
    "optimizer": ("aten::_fused_adam_",),
}


def bench_train_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce bench-train`: epoch time of --methods on --model, then a step's time by phase;
    printed, and recorded in results/bench/cpu/train_<model>.csv, train_<model>_steps.csv and
    train_<model>_meta.json (each file written whole or not at all)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: no method {unknown[0]!r}; valid: {', '.join(METHODS)}")
    spec = suite.resolve(f"{args.model}.dense", "paper")  # its data set
    rows = train_cost(load_dataset(spec.dataset, args.data_dir), args.model, methods, args.repeats,
                      train_subset=args.train_subset)
    shown = ["model", "method", "epoch_seconds", "ratio_to_" + methods[0], "threads", "batch_size"]
    print(pd.DataFrame(rows)[shown].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    steps = step_breakdown(args.model, methods, spec.dataset)
    print("\nper training step, by phase (random batch of 128):")
    shown = ["method", "step_mflop", *(f"{p}_ms" for p in PHASES)]
    print(pd.DataFrame(steps)[shown].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    ops = step_op_profile(args.model, methods, spec.dataset)
    print("\nper training step, self CPU ms by kind of operator (torch.profiler):")
    print(ops.loc[[f"({k})" for k in (*OP_KINDS, "rest", "total")]].to_string(float_format=lambda v: f"{v:.2f}"))
    out = bench_dir(args.results_dir, "cpu")
    meta = {**machine(), **code_version(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": time.time() - started}
    files = train_files(out, args.model)
    write_atomic(files["epochs"], pd.DataFrame(rows).to_csv(index=False))
    write_atomic(files["steps"], pd.DataFrame(steps).to_csv(index=False))
    write_atomic(files["ops"], ops.to_csv(index_label="operator"))
    write_atomic(files["meta"], json.dumps(meta, indent=2) + "\n")
    print(f"\nrecorded: {', '.join(str(f) for f in files.values())}")
    return 0


def train_files(folder: Path, model_name: str) -> dict[str, Path]:
    """Where bench-train records `model_name`'s numbers in a bench folder: per-epoch costs, per-phase
    step times, per-operator step times, and the machine and arguments they were measured with."""
    return {"epochs": folder / f"train_{model_name}.csv", "steps": folder / f"train_{model_name}_steps.csv",
            "ops": folder / f"train_{model_name}_ops.csv", "meta": folder / f"train_{model_name}_meta.json"}


def spread(name: str, values: list[float]) -> dict[str, float]:
    """`name`: the median of `values`; `name`_min, _q1, _q3, _max: their minimum, quartiles (inclusive
    method, never outside [min, max]) and maximum. Of a single value all five are that value: one
    measurement, no spread."""
    if not values:
        raise ValueError(f"spread of {name}: no measurements")
    q1, med, q3 = (statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1
                   else (values[0],) * 3)
    return {name: med, f"{name}_min": min(values), f"{name}_q1": q1, f"{name}_q3": q3, f"{name}_max": max(values)}


def machine() -> dict[str, Any]:
    """What a CPU timing depends on besides the code: CPU model (/proc/cpuinfo, None where unreadable),
    logical CPUs, the instruction set torch's kernels use (torch.backends.cpu.get_cpu_capability), the
    environment variables that change it (CPU_ENV, those set), torch and python versions."""
    return {"cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_env": {k: os.environ[k] for k in CPU_ENV if k in os.environ},
            "torch": torch.__version__, "python": platform.python_version()}


def _cpu_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), None)


def train_cost(data: ImageData, model_name: str, methods: list[str], repeats: int = 3, batch_size: int = 128,
               train_subset: int | None = None, device: str = "cpu") -> list[dict[str, Any]]:
    """One row per method: epoch seconds over `repeats` rounds (`spread`: median, min, quartiles, max;
    epochs interleaved after one discarded warm-up round), the ratio of its median to the first method's
    (put 'dense' first), repeats, threads, batch size and images per epoch."""
    if repeats < 1:
        raise ValueError(f"repeats {repeats}: must be at least 1 (the timed rounds after the warm-up)")
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
    images = len(data.train_x) if train_subset is None else min(train_subset, len(data.train_x))
    return [{"model": model_name, "method": m, **spread("epoch_seconds", t),
             "ratio_to_" + methods[0]: statistics.median(t) / base, "repeats": len(t),
             "threads": torch.get_num_threads(), "batch_size": batch_size, "train_images": images}
            for m, t in times.items()]


def step_breakdown(model_name: str, methods: list[str], dataset: str = "mnist", batch_size: int = 128,
                   repeats: int = 100) -> list[dict[str, Any]]:
    """Milliseconds per training step, by phase (PHASES), on random data shaped as `dataset`'s: where a
    method's extra cost goes; each phase called `repeats` times after 10 warm-up calls, each call timed on
    its own (`spread`: <phase>_ms the median, with _min, _q1, _q3, _max); and the step's matrix-product
    MFLOP (torch's FlopCounterMode), the arithmetic floor of its cost. `sampling`: drawing as many
    standard Gaussians as one forward pass draws (`gaussians`, counted by `_GaussianCounter`) in one
    call, the noise the method needs (one sample per example), a serial cost beside the products."""
    info = DATASETS[dataset]
    keep_freed_memory()  # as bayescomp.train.fit

    def clock(fn: Callable[[], Any]) -> list[float]:
        for _ in range(10):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return times

    rows = []
    for name in methods:
        method, model, opt, x, y = _step_setup(model_name, name, info, batch_size)

        def forward_backward() -> None:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()

        def penalty() -> None:
            p = method.penalty(model)
            if p.requires_grad:
                p.backward()

        with FlopCounterMode(display=False) as counter, _GaussianCounter() as gaussians:  # one forward + backward
            forward_backward()
        noise = torch.empty(gaussians.count)
        row: dict[str, Any] = {"model": model_name, "method": name, "step_mflop": counter.get_total_flops() / 1e6,
                               "gaussians": gaussians.count}
        phases = {"forward": lambda: F.cross_entropy(model(x), y), "forward_backward": forward_backward,
                  "penalty_fwd_bwd": penalty, "optimizer": opt.step, "step_end": lambda: method.on_step_end(model),
                  "sampling": noise.normal_}
        for phase in PHASES:
            row.update(spread(f"{phase}_ms", clock(phases[phase])))
        rows.append({**row, "calls": repeats, "threads": torch.get_num_threads(), "batch_size": batch_size})
    return rows


def step_op_profile(model_name: str, methods: list[str], dataset: str = "mnist", batch_size: int = 128,
                    steps: int = 50) -> pd.DataFrame:
    """Self CPU milliseconds per training step by operator (torch.profiler), one column per method, over
    `steps` whole steps (zero_grad, forward, loss and penalty, backward, optimizer, step end) after 10
    warm-up steps, on random data shaped as `dataset`'s. Operators under 0.01 ms in every column are
    left out of the rows but not of the summary rows after them: "(<kind>)" for each kind of OP_KINDS,
    "(rest)" for every other operator and "(total)"."""
    info = DATASETS[dataset]
    keep_freed_memory()  # as bayescomp.train.fit
    cols = {}
    for name in methods:
        method, model, opt, x, y = _step_setup(model_name, name, info, batch_size)

        def step() -> None:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            penalty = method.penalty(model)
            (loss + penalty / 55000 if penalty.requires_grad else loss).backward()  # N: MNIST's training split
            opt.step()
            method.on_step_end(model)

        for _ in range(10):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        cols[name] = {e.key: e.self_cpu_time_total / 1000 / steps for e in prof.key_averages()}
    frame = pd.DataFrame(cols).fillna(0.0)
    kinds = {k: frame.loc[frame.index.isin(ops)].sum() for k, ops in OP_KINDS.items()}
    summary = pd.DataFrame({f"({k})": v for k, v in kinds.items()}).T
    summary.loc["(rest)"] = frame.sum() - summary.sum()
    summary.loc["(total)"] = frame.sum()
    shown = frame[frame.max(axis=1) >= 0.01].sort_values(frame.columns[-1], ascending=False)
    return pd.concat([shown, summary])


def _step_setup(model_name: str, method_name: str, info: DatasetInfo, batch_size: int
                ) -> tuple[Method, nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    """What the per-step benchmarks time, seeded: the method, its model in train mode, fused Adam as
    bayescomp.train builds it, and one random batch shaped as the data set's."""
    torch.manual_seed(0)
    method = METHODS[method_name]()
    model = MODELS[model_name](layers=method.layers(), mean=info.mean, std=info.std).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3, fused=True)  # as bayescomp.train
    x, y = torch.rand(batch_size, *info.shape), torch.randint(0, info.num_classes, (batch_size,))
    return method, model, opt, x, y


class _GaussianCounter(TorchDispatchMode):
    """Counts the standard Gaussians drawn by the operations run inside it (aten.normal_, aten.randn*)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.normal_, torch.ops.aten.randn, torch.ops.aten.randn_like):
            self.count += out.numel()
        return out


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
