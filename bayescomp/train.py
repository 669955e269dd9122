"""One training loop for every method: loss = NLL + beta_t * method.penalty(model) / N.

Batches are drawn by indexing in-memory uint8 tensors (resident on the training device); each
epoch's order and noise come from generators seeded by (seed, epoch), so a run resumed from its
per-epoch checkpoint continues exactly as an uninterrupted one (an unreadable checkpoint is deleted,
saying so, and the run starts over). A non-finite loss stops the run with an error naming the epoch
and step, and so does a finite one that exploded (`_check_not_exploded`). Each epoch's test and
validation error is bayescomp.metrics.error_pct's (eval mode: posterior means for the Bayesian layers).
Not here: data loading (bayescomp.data), compression and metrics (method.compress, metrics).
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import platform
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from bayescomp.artifact import ArtifactError, load_plain
from bayescomp.data import ImageData, augment_crop_flip
from bayescomp.method import Method
from bayescomp.metrics import error_pct

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "step", "linear")
EXPLODED_NLL_FACTOR = 10.0  # an epoch's mean NLL above this x ln(classes) is divergence (_check_not_exploded)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or finite but exploded (see `_check_not_exploded`)."""


class TrainingPaused(Exception):
    """The run stopped cleanly at an epoch boundary (its deadline): its checkpoint is the resume point."""

    def __init__(self, epochs_done: int, epochs: int, checkpoint: Path) -> None:
        super().__init__(f"paused after epoch {epochs_done}/{epochs}; resume point {checkpoint}")
        self.epochs_done, self.epochs, self.checkpoint = epochs_done, epochs, checkpoint


@dataclass(frozen=True)
class TrainConfig:
    """How to train. lr_schedule: constant | cosine | step (x lr_gamma at lr_milestones) | linear (to 0).
    kl_warmup_epochs: the penalty weight rises linearly from 0 to 1 over this many epochs [Sønderby 2016].
    kl_warmup_start: the weight stays 0 for this many epochs first and reaches 1 at epoch kl_warmup_epochs
        (Sparse VD's authors: 0 for 5 epochs, 1 from epoch 20 [MAV17]).
    """

    epochs: int
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    kl_warmup_epochs: int = 0
    kl_warmup_start: int = 0
    augment: bool = False
    amp_bf16: bool = False

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = _type_problem(value, hints[f.name])
            if expected is not None:
                example = "[80, 120]" if f.name == "lr_milestones" else json.dumps(
                    f.default if f.default is not dataclasses.MISSING else 10)
                raise ValueError(f"{f.name} must be {expected} (e.g. {f.name} = {example}), "
                                 f"got {value!r} ({type(value).__name__})")
        object.__setattr__(self, "lr_milestones", tuple(self.lr_milestones))  # a TOML array is a list
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} unknown; valid: {list(OPTIMIZERS)}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule {self.lr_schedule!r} unknown; valid: {list(SCHEDULES)}")
        for name, ok, rule in (("epochs", self.epochs >= 0, ">= 0"), ("batch_size", self.batch_size >= 1, ">= 1"),
                               ("lr", self.lr > 0, "> 0"), ("momentum", self.momentum >= 0, ">= 0"),
                               ("weight_decay", self.weight_decay >= 0, ">= 0"), ("lr_gamma", self.lr_gamma > 0, "> 0"),
                               ("kl_warmup_epochs", self.kl_warmup_epochs >= 0, ">= 0"),
                               ("kl_warmup_start", 0 <= self.kl_warmup_start < max(self.kl_warmup_epochs, 1),
                                ">= 0 and below kl_warmup_epochs"),
                               ("lr_milestones", all(m >= 1 for m in self.lr_milestones), "a list of epochs >= 1")):
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the system. Returns
    whether it applied (glibc only; a no-op elsewhere, or where MALLOC_MMAP_THRESHOLD_ /
    MALLOC_TRIM_THRESHOLD_ are set in the environment: those are the user's choice).

    A training step frees and reallocates the same few-hundred-KB to MB tensors (activations and
    their gradients). By default glibc serves such blocks by mmap and returns them at free, so every
    step page-faults and zeroes them afresh: on a 2-core CPU that costs about a tenth of a LeNet
    epoch (REPRODUCING.md, training cost). With blocks below 32 MiB from the heap and the heap
    trimmed only above 1 GiB, they are reused. Only speed changes, never a computed value.
    """
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def kl_weight(cfg: TrainConfig, epoch: int) -> float:
    """The penalty's weight in epoch `epoch` (from 0): 0 before kl_warmup_start, then rising linearly to 1
    at epoch kl_warmup_epochs - 1; 1 without warm-up."""
    if cfg.kl_warmup_epochs == 0:
        return 1.0
    return min(1.0, max(0, epoch + 1 - cfg.kl_warmup_start) / (cfg.kl_warmup_epochs - cfg.kl_warmup_start))


def fit(model: nn.Module, method: Method, data: ImageData, cfg: TrainConfig, *, seed: int,
        device: torch.device | str = "cpu", checkpoint: Path | None = None, progress: bool = True,
        train_subset: int | None = None, test_subset: int | None = None,
        deadline: float | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train `model` in place; return one history row per epoch. Resumes from `checkpoint` if it exists.
    Calls `keep_freed_memory()` first, and `on_epoch(row)` with each epoch's history row once it is saved.

    deadline (a `time.time()` value): after an epoch's checkpoint, if the next epoch would end past it,
    raise `TrainingPaused`; rerunning with the same checkpoint continues exactly where it stopped.
    """
    if deadline is not None and checkpoint is None:
        raise ValueError("a deadline needs a checkpoint to resume from")
    keep_freed_memory()
    device = torch.device(device)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    data = data.subset(train_subset, test_subset)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    test_x, test_y = data.test_x, data.test_y
    n = len(train_x)
    steps = math.ceil(n / cfg.batch_size)
    method.prepare(model)
    opt = _optimizer(method.param_groups(model), cfg)
    sched = _scheduler(opt, cfg)
    history: list[dict[str, Any]] = []
    start = 0
    state = _load_checkpoint(checkpoint, device) if checkpoint is not None and checkpoint.exists() else None
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if sched is not None:
                sched.load_state_dict(state["scheduler"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise ValueError(f"checkpoint {checkpoint} does not fit this run ({str(e).strip().splitlines()[0]}); "
                             "delete it to start the run over") from None
        history, start = state["history"], state["epoch"]
    bar = tqdm(total=cfg.epochs * steps, initial=start * steps, disable=not progress, unit="step",
               dynamic_ncols=True, desc=f"{type(method).__name__} seed{seed}")
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(seed * 100_003 + epoch)  # noise of stochastic layers
        gen = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=gen, device=device)
        beta = kl_weight(cfg, epoch)
        model.train()
        sums = torch.zeros(4, device=device)  # loss, nll, penalty/N, wrong
        window: list[Tensor] = []
        for step in range(steps):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x = train_x[idx].float().div_(255)
            if cfg.augment:
                x = augment_crop_flip(x, gen)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            y = train_y[idx]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp_bf16):
                logits = model(x)
            nll = F.cross_entropy(logits.float(), y)
            pen = method.penalty(model).to(device) / n
            loss = nll + beta * pen
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.on_step_end(model)
            with torch.no_grad():
                wrong = (logits.argmax(1) != y).sum()
                sums += torch.stack([loss.detach() * len(y), nll.detach() * len(y), pen.detach() * len(y), wrong])
            window.append(loss.detach())
            if len(window) == 50 or step == steps - 1:
                _check_finite(window, epoch, step)
                window = []
                bar.set_postfix(loss=f"{sums[0].item() / min(n, (step + 1) * cfg.batch_size):.4f}")
            bar.update(1)
        if sched is not None:
            sched.step()
        method.on_epoch_end(model, epoch)
        loss_m, nll_m, pen_m, wrong = (sums / n).tolist()
        _check_not_exploded(nll_m, logits.shape[1], epoch)  # before its checkpoint: that stays the last good one
        test_err = error_pct(model, test_x, test_y, device)
        val_err = error_pct(model, data.val_x, data.val_y, device) if len(data.val_x) else float("nan")
        history.append({"epoch": epoch + 1, "train_loss": loss_m, "train_nll": nll_m, "penalty_per_n": pen_m,
                        "kl_beta": beta, "train_error_pct": 100 * wrong, "test_error_pct": test_err,
                        "val_error_pct": val_err,
                        "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
                        "host": platform.node(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "threads": torch.get_num_threads(),
                        **method.epoch_stats(model)})
        bar.set_postfix(loss=f"{loss_m:.4f}", test_err=f"{test_err:.2f}%")
        if checkpoint is not None:
            _save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                          "scheduler": sched.state_dict() if sched is not None else None,
                                          "history": history, "epoch": epoch + 1})
        if on_epoch is not None:
            on_epoch(history[-1])
        if deadline is not None and epoch + 1 < cfg.epochs and time.time() + history[-1]["seconds"] > deadline:
            bar.close()  # a deadline comes with a checkpoint (checked above), saved for this epoch
            raise TrainingPaused(epoch + 1, cfg.epochs, checkpoint)
    bar.close()
    return history


def _check_finite(losses: list[Tensor], epoch: int, last_step: int) -> None:
    stacked = torch.stack(losses)
    bad = (~torch.isfinite(stacked)).nonzero()
    if len(bad):
        step = last_step - len(losses) + 1 + int(bad[0])
        raise TrainingDiverged(
            f"loss became {stacked[int(bad[0])].item()} at epoch {epoch + 1}, step {step + 1}; "
            "training stopped. Lower the learning rate (lr) or lengthen kl_warmup_epochs in the spec; "
            "the last good checkpoint is kept and no results were written")


def _type_problem(value: Any, hint: Any) -> str | None:
    """None if `value` is a `hint` (bool, int, float, str or tuple[int, ...]); else what it should be.

    bool is not accepted as a number (in Python True is an int); an int is accepted as a float.
    """
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if is_number and isinstance(value, int) else "an integer"
    if hint is float:
        return None if is_number and math.isfinite(value) else "a finite number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        ok = isinstance(value, (list, tuple)) and all(_type_problem(v, item) is None for v in value)
        return None if ok else "a list of integers" if item is int else f"a list of {item.__name__}"
    raise TypeError(f"no type check for {hint}")


def _check_not_exploded(mean_nll: float, classes: int, epoch: int) -> None:
    """Divergence with a finite loss: an epoch's mean training NLL above EXPLODED_NLL_FACTOR x ln(classes).

    ln(classes) is the NLL of guessing uniformly, which any network reaches with constant logits and a
    fresh one starts near; at ten times that (23 nats for 10 classes) the true class gets probability
    e^-23 on average, so the run is diverging, not learning. Only the NLL is compared, never the KL
    penalty, which is large by design in the Bayesian methods. Every recorded run stays below 0.3
    nats after its first epoch and below ln(classes) in it (tests/test_train.py checks them).
    """
    limit = EXPLODED_NLL_FACTOR * math.log(classes)
    if mean_nll > limit:
        raise TrainingDiverged(
            f"training diverged at epoch {epoch + 1}: the mean training NLL is {mean_nll:.3g} nats, above "
            f"{limit:.1f} ({EXPLODED_NLL_FACTOR:g} x ln {classes}, ten times the loss of guessing) although finite. "
            "Lower the learning rate (lr) in the spec; no results were written")


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint's state; None if it is unreadable, after deleting it and saying so: the run starts over."""
    again = "deleted it; this run starts over from epoch 1"
    try:
        state = load_plain(path, again, map_location=device)
        if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "history", "epoch"} <= state.keys():
            raise ArtifactError(f"{path} is not a training checkpoint (no model, optimizer and epoch); {again}")
    except ArtifactError as e:
        path.unlink(missing_ok=True)
        print(f"warning: checkpoint {e}", file=sys.stderr)
        return None
    return state


def _optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [{**{k: v for k, v in g.items() if k != "lr_mult"}, "lr": cfg.lr * g.get("lr_mult", 1.0)}
              for g in groups]
    # fused kernels: on a CPU, Adam's step over LeNet-300's 0.5 M variational parameters takes 0.6 ms
    # instead of 2.8 ms with the default multi-tensor form
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=True)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    if cfg.lr_schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma)
    if cfg.lr_schedule == "linear":
        return torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=max(cfg.epochs, 1))
    return None


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill leaves the previous checkpoint intact
