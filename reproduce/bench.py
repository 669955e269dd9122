"""Speed measurements. train_cost: seconds per training epoch of each method relative to the dense
model, same loop, batch size and data, measured side by side in one process (epochs interleaved,
median of the repetitions), so that the ratio is robust to other load on the machine.
"""
from __future__ import annotations

import statistics
from typing import Any

import torch

from bayescomp.data import ImageData
from bayescomp.train import TrainConfig, fit
from reproduce.registry import METHODS, MODELS


def train_cost(data: ImageData, model_name: str, methods: list[str], repeats: int = 3, batch_size: int = 128,
               train_subset: int | None = None) -> list[dict[str, Any]]:
    """One row per method: median epoch seconds and the ratio to the first method (put 'dense' first)."""
    cfg = TrainConfig(epochs=1, batch_size=batch_size)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(repeats + 1):  # the first round warms up and is discarded
        for name in methods:
            torch.manual_seed(rep)
            method = METHODS[name]()
            model = MODELS[model_name](layers=method.layers(), mean=data.mean, std=data.std)
            h = fit(model, method, data, cfg, seed=rep, progress=False, train_subset=train_subset, test_subset=1)
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
