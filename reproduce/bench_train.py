"""Training cost of the methods (Table 2's training rows, `python -m reproduce bench-train`).

train_cost: seconds per training epoch of each method relative to the dense model, same loop,
batch size and data, measured side by side in one process (epochs interleaved, median of the
repetitions), so that the ratio is robust to other load on the machine. step_breakdown: where a
training step's time goes, by phase. peak_training_memory: what training adds to memory at its peak.
Inference speed is reproduce/bench_inference.py.
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bayescomp.data import DATASETS, ImageData, load_dataset
from bayescomp.models import MODELS
from bayescomp.train import TrainConfig, fit
from reproduce.registry import METHODS
from reproduce.spec import Suite


def bench_train_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce bench-train`: epoch time of --methods on --model, then a step's time by phase."""
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = suite.resolve(f"{args.model}.dense", "paper")  # its data set
    rows = train_cost(load_dataset(spec.dataset, args.data_dir), args.model, args.methods.split(","), args.repeats)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    steps = step_breakdown(args.model, args.methods.split(","), spec.dataset)
    print("\nper training step, by phase (random batch of 128):")
    print(pd.DataFrame(steps).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


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


def step_breakdown(model_name: str, methods: list[str], dataset: str = "mnist", batch_size: int = 128,
                   repeats: int = 100) -> list[dict[str, Any]]:
    """Milliseconds per training step, by phase, on random data shaped as `dataset`'s: where a method's
    extra cost goes; and the step's matrix-product MFLOP (torch's FlopCounterMode), the arithmetic floor
    of its cost."""
    info = DATASETS[dataset]

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
        model = MODELS[model_name](layers=method.layers(), mean=info.mean, std=info.std).train()
        opt = torch.optim.Adam(model.parameters(), 1e-3, fused=True)  # as bayescomp.train
        x, y = torch.rand(batch_size, *info.shape), torch.randint(0, info.num_classes, (batch_size,))

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
