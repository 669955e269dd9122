"""Inference speed of the recorded models (Table 2's timings).

inference_bench: forward time of the dense model, of each recorded structurally pruned model and
of its CSR form (Linear layers as torch.sparse CSR), beside the bound a FLOP count allows (multiply-adds
of the model itself, counted by bayescomp.metrics.multiply_adds); every model timed in its inference
form (reproduce/inference_form.py: the same function, rewritten to run fast, for dense and pruned alike).
op_profile: where the time of a forward pass goes, by operator. Training cost is
reproduce/bench_train.py.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from bayescomp.metrics import multiply_adds
from bayescomp.train import keep_freed_memory  # every forward pass then reuses its blocks, as training does
from reproduce.inference_form import SparseLinear, inference_form, sparse_variant  # noqa: F401 (re-exported)


BATCH_SIZES = {"lenet300": (1, 64, 1024), "lenet5_caffe": (1, 64, 1024), "vgg_cifar": (1, 64, 256)}


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
    if dev.type == "cpu":
        keep_freed_memory()
    jobs = []
    for model_name, by_method in models.items():
        shape = input_shapes[model_name]
        dense_macs = multiply_adds(by_method["dense"], shape)  # counted on the models, not on their forms
        for method, model in by_method.items():
            macs = dense_macs if method == "dense" else multiply_adds(model, shape)
            variants = {"dense" if method == "dense" else "structured": (inference_form(model, dev), macs)}
            if method != "dense" and any(isinstance(m, nn.Linear) and bool((m.weight == 0).any()) for m in model.modules()):
                variants["sparse CSR"] = (inference_form(model, dev, sparse=True),
                                          multiply_adds(model, shape, nonzero=True))
            for variant, (net, n_macs) in variants.items():
                jobs.append((model_name, method, variant, net.to(dev).eval(), n_macs, dense_macs))
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


def op_profile(models: dict[str, nn.Module], input_shape: tuple[int, ...], batch: int = 1024, threads: int = 1,
               reps: int = 20) -> pd.DataFrame:
    """Self CPU milliseconds per forward pass, by operator (torch.profiler), for each model (in its
    inference form): where the time goes when a speed-up falls short of its FLOP ratio."""
    keep_freed_memory()
    torch.set_num_threads(threads)
    x = torch.rand(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    cols = {}
    for label, model in models.items():
        net = inference_form(model, "cpu")
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
