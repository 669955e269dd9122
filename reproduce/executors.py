"""Which runs a table still needs (the plan), and executors that carry a plan out.

A task is one (experiment, profile, seed). The plan orders tasks in stages: a run whose `pretrain`
experiment has no current result waits for it in an earlier stage. Within a stage tasks are
independent. An executor runs the stages in order and the tasks of a stage in any order; each task
records its results with `reproduce.run.run_one`, which writes the results folder in one rename,
so whichever executor ran it, a finished task looks the same and an interrupted one leaves nothing.

`local` runs tasks in this process (`jobs=1`, with per-step progress bars) or in `jobs` worker
processes sharing the cores. Another engine fits behind the same `run(stages)` method. Every
executor prints one line per finished task to stderr (`announce`), progress bars or not.

A task's time estimate is the recorded `wall_seconds` of an earlier run of the same experiment and
profile (any seed, even under another spec: results/<id>/<profile>/seed<k>/spec.json, scaled by
epochs and training images), else epochs x the spec's `cpu_epoch_seconds`.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from bayescomp.data import DATASETS
from reproduce.results import recorded_folders, status
from reproduce.run import run_one
from reproduce.spec import RunSpec, Suite, load_suite

if TYPE_CHECKING:
    from reproduce.ray_executor import RayExecutor


class ExecutorUnavailable(RuntimeError):
    """The chosen executor cannot run here (its engine is not installed or not reachable)."""


@dataclass(frozen=True)
class Task:
    exp_id: str
    profile: str
    seed: int
    estimate_s: float  # on this machine: from a recorded run, else from the spec's cpu_epoch_seconds
    recorded: bool = False  # estimate_s comes from a recorded run's wall time

    @property
    def name(self) -> str:
        return f"{self.exp_id} [{self.profile}] seed {self.seed}"


@dataclass(frozen=True)
class Plan:
    stages: list[list[Task]]
    needs_gpu: dict[str, float]  # experiment id -> estimated CPU seconds, for rows left untrained

    @property
    def tasks(self) -> list[Task]:
        return [t for stage in self.stages for t in stage]

    def describe(self) -> str:
        lines = []
        for i, stage in enumerate(self.stages, 1):
            lines.append(f"stage {i} ({len(stage)} runs, independent):")
            lines += [f"  {t.name:<48} ~{_duration(t.estimate_s)}{' (recorded run)' if t.recorded else ''}"
                      for t in stage]
        total = sum(t.estimate_s for t in self.tasks)
        lines.append(f"{len(self.tasks)} runs, ~{_duration(total)} on this CPU one after another" if self.tasks
                     else "nothing to train: every row has current results")
        if self.tasks:
            n = sum(t.recorded for t in self.tasks)
            lines.append(f"estimates: {n} from the wall time of a recorded run (results/<id>/<profile>/seed*/"
                         f"spec.json), {len(self.tasks) - n} from the spec's cpu_epoch_seconds")
        lines += [f"left out: {i} needs a GPU (~{_duration(s)} on this CPU); "
                  f"`python -m reproduce run {i} --device cuda`" for i, s in self.needs_gpu.items()]
        return "\n".join(lines)


OVERHEAD_S = 5.0  # data loading, compression, measuring: not proportional to the training


def _train_images(spec: RunSpec) -> int:
    full = DATASETS[spec.dataset].train_size - spec.val_size
    return min(spec.train_subset, full) if spec.train_subset else full


def estimate_seconds(spec: RunSpec) -> float:
    """Training time on this CPU: epochs x the spec's measured seconds per full epoch, scaled to the subset."""
    per_epoch = spec.cpu_epoch_seconds or 60.0
    full = DATASETS[spec.dataset].train_size - spec.val_size
    return spec.train.epochs * per_epoch * _train_images(spec) / full + OVERHEAD_S


def recorded_seconds(spec: RunSpec, roots: Sequence[Path], *, gpu: bool = False) -> float | None:
    """Median wall time of the runs recorded for spec's experiment and profile under `roots` (the first
    root holding any wins), on the same kind of device, any seed and spec hash, each scaled to this
    spec's epochs and training images; None if none is recorded."""
    for root in roots:
        estimates = []
        for _, folder in recorded_folders(Path(root), spec.id, spec.profile):
            try:
                rec = json.loads((folder / "spec.json").read_text())
                wall, epochs = float(rec["wall_seconds"]), int(rec["spec"]["train"]["epochs"])
                images, device = int(rec["n_train"]), str(rec.get("device", "cpu"))
            except (OSError, ValueError, KeyError, TypeError):  # unreadable or older records: not used
                continue
            if device.startswith("cuda") != gpu or wall <= 0 or epochs <= 0 or images <= 0:
                continue
            ratio = spec.train.epochs / epochs * _train_images(spec) / images
            estimates.append(max(0.0, wall - OVERHEAD_S) * ratio + OVERHEAD_S)
        if estimates:
            return statistics.median(estimates)
    return None


def plan_runs(suite: Suite, profile: str, root: Path, ids: list[str], *, gpu: bool,
              history: Sequence[Path] = (), seeds: Sequence[int] | None = None) -> Plan:
    """Tasks for every seed of `ids` without a current result, their missing pretraining first.
    Estimates come from the runs recorded under root, else under `history`, else from the spec."""
    roots = [root, *history]

    def estimate(spec: RunSpec, on_gpu: bool = gpu) -> tuple[float, bool]:
        seconds = recorded_seconds(spec, roots, gpu=on_gpu)
        return (estimate_seconds(spec), False) if seconds is None else (seconds, True)

    depth: dict[tuple[str, int], int] = {}
    tasks: dict[tuple[str, int], Task] = {}
    needs_gpu: dict[str, float] = {}

    def visit(exp_id: str, seed: int) -> int:  # the stage of (exp_id, seed); -1 when nothing to run
        key = (exp_id, seed)
        if key in depth:
            return depth[key]
        spec = suite.resolve(exp_id, profile)
        pre = visit(spec.pretrain, seed) if spec.pretrain else -1
        if status(root, spec, seed) == "current":
            depth[key] = -1
        else:
            depth[key] = pre + 1
            tasks[key] = Task(exp_id, profile, seed, *estimate(spec))
        return depth[key]

    for exp_id in ids:
        spec = suite.resolve(exp_id, profile)
        if spec.needs_gpu and not gpu:
            missing = [s for s in spec.seeds if status(root, spec, s) != "current"]
            if missing:
                chain = [spec] + ([suite.resolve(spec.pretrain, profile)] if spec.pretrain else [])
                needs_gpu[exp_id] = sum(estimate(c, False)[0] for c in chain) * len(missing)
            continue
        for seed in spec.seeds if seeds is None else seeds:  # seeds: instead of the profile's (calibration)
            visit(exp_id, seed)
    n_stages = max((d for d in depth.values()), default=-1) + 1
    stages = [[t for k, t in tasks.items() if depth[k] == i] for i in range(n_stages)]
    return Plan([s for s in stages if s], needs_gpu)


@dataclass(frozen=True)
class Outcome:
    task: Task
    metrics: dict[str, Any] | None
    error: str | None
    seconds: float


def _run_task(task: Task, spec_path: str, root: str, device: str, data_dir: str | None, progress: bool,
              threads: int | None = None) -> dict[str, Any]:
    """One task, in whichever process runs it (picklable: plain arguments only)."""
    if threads:
        torch.set_num_threads(threads)
    suite = load_suite(Path(spec_path))
    spec = suite.resolve(task.exp_id, task.profile)
    return run_one(suite, spec, task.seed, Path(root), device=device, data_dir=data_dir, progress=progress)


@dataclass
class LocalExecutor:
    """Tasks on this machine: in this process (jobs=1) or in `jobs` worker processes.
    threads: torch threads per run (default: the cores shared among the jobs)."""

    jobs: int = 1
    threads: int | None = None

    def run(self, plan: Plan, spec_path: Path, root: Path, *, device: str = "auto", data_dir: str | None = None,
            progress: bool = True) -> list[Outcome]:
        outcomes: list[Outcome] = []
        total = sum(t.estimate_s for t in plan.tasks)
        bar = tqdm(total=round(total), unit="s", desc="plan (estimated seconds)", disable=not progress or not total,
                   position=0, dynamic_ncols=True,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} est-s [{elapsed}<{remaining}]")
        n_tasks = len(plan.tasks)
        for stage in plan.stages:
            if self.jobs <= 1:
                for task in stage:
                    bar.set_postfix_str(task.name)
                    outcomes.append(_timed(task, lambda t=task: _run_task(t, str(spec_path), str(root), device,
                                                                          data_dir, progress, self.threads)))
                    announce(outcomes[-1], len(outcomes), n_tasks)
                    bar.update(round(task.estimate_s))
            else:
                threads = self.threads or max(1, (os.cpu_count() or 1) // self.jobs)
                pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"))
                try:
                    started = {pool.submit(_run_task, t, str(spec_path), str(root), device, data_dir, False, threads):
                               (t, time.time()) for t in stage}
                    pending = set(started)
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            task, t0 = started[fut]
                            err = fut.exception()
                            outcomes.append(Outcome(task, None if err else fut.result(),
                                                    None if err is None else f"{type(err).__name__}: {err}",
                                                    time.time() - t0))
                            announce(outcomes[-1], len(outcomes), n_tasks)
                            bar.update(round(task.estimate_s))
                except BaseException:  # Ctrl-C, SIGTERM turned into KeyboardInterrupt: stop the workers now
                    _terminate(pool)
                    raise
                pool.shutdown()
            failed = [o for o in outcomes if o.error]
            if failed:  # later stages depend on this one
                break
        bar.close()
        return outcomes


EXECUTORS = ("local", "ray")  # the engines --executor names


def make_executor(name: str, *, jobs: int = 1, threads: int | None = None, address: str | None = None
                  ) -> LocalExecutor | RayExecutor:
    """The executor `name` (one of EXECUTORS); jobs: runs side by side (local), address: Ray's cluster."""
    if name == "ray":
        from reproduce.ray_executor import RayExecutor  # built on this module's Task, Plan and Outcome
        return RayExecutor(threads=threads, address=address)
    return LocalExecutor(jobs=jobs, threads=threads)


def announce(outcome: Outcome, done: int, total: int) -> None:
    """One line on stderr per finished task, e.g.
    `[ 3/19] lenet300.bc_gnj seed 0: 12.3 s, error 10.25 %, CR fast 2.85`."""
    task = outcome.task
    head = f"[{done:>{len(str(total))}}/{total}] {task.exp_id} seed {task.seed}: {outcome.seconds:.1f} s"
    if outcome.error:
        line = f"{head}, FAILED ({outcome.error.splitlines()[0] if outcome.error.strip() else 'no message'})"
    else:
        m = outcome.metrics or {}
        line = head + "".join(f", {label} {m[key]:{fmt}}{unit}" for key, label, fmt, unit in
                              (("error_pct", "error", ".2f", " %"), ("cr_fast", "CR fast", ".2f", ""))
                              if isinstance(m.get(key), (int, float)))
    tqdm.write(line, file=sys.stderr)  # above any progress bar
    sys.stderr.flush()


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop a pool's workers without waiting for their runs (shutdown(wait=True) would wait for them)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.terminate()
    for p in processes:
        p.join(timeout=5)


def _timed(task: Task, fn) -> Outcome:
    t0 = time.time()
    try:
        return Outcome(task, fn(), None, time.time() - t0)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # reported by the caller with the task's name
        return Outcome(task, None, f"{type(e).__name__}: {e}", time.time() - t0)


def report_failures(outcomes: list[Outcome]) -> int:
    """Print failed tasks; the number of failures."""
    failed = [o for o in outcomes if o.error]
    for o in failed:
        print(f"error: {o.task.name} failed: {o.error}", file=sys.stderr)
    return len(failed)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
