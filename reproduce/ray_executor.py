"""The `ray` executor: each run of a plan is a Ray task; results travel back to the driver.

Needs Ray (`pip install '.[ray]'`). A task gets 1 CPU (and 1 thread), plus 1 GPU when its spec
`needs_gpu` and the device is not the CPU. No shared filesystem is assumed: the driver sends the
experiments file and the pretraining results a run needs; the worker runs `reproduce.run.run_one`
into a scratch folder and returns every file of the finished results folder, which the driver
writes under `results/` in one rename, exactly as a local run would have. Ray retries a task once
when its worker dies or it raises (`max_retries=1`, `retry_exceptions=True`); a task that fails
twice is reported with its traceback and leaves nothing behind. The data set must be readable on
every worker (`--data-dir` or BAYESCOMP_DATA there).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from reproduce.executors import ExecutorUnavailable, Outcome, Plan, Task, announce
from reproduce.results import result_dir, staged_dir, staging_dir
from reproduce.run import run_one
from reproduce.spec import load_suite


def pack(folder: Path) -> dict[str, bytes]:
    """Every file of a results folder, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def run_packed(task: Task, spec_text: str, pretrain: dict[str, dict[str, bytes]], device: str,
               data_dir: str | None, threads: int) -> dict[str, Any]:
    """On a worker: run one task in a scratch folder; return its results files and metrics."""
    import torch

    torch.set_num_threads(threads)
    scratch = Path(tempfile.mkdtemp(prefix="reproduce-ray-"))
    try:
        (scratch / "experiments.toml").write_text(spec_text)
        for rel, files in pretrain.items():  # the pretraining results this run starts from
            d = scratch / "results" / rel
            d.mkdir(parents=True)
            for name, blob in files.items():
                (d / name).write_bytes(blob)
        suite = load_suite(scratch / "experiments.toml")
        spec = suite.resolve(task.exp_id, task.profile)
        metrics = run_one(suite, spec, task.seed, scratch / "results", device=device, data_dir=data_dir,
                          progress=False)
        return {"files": pack(result_dir(scratch / "results", task.exp_id, task.profile, task.seed)),
                "metrics": metrics, "host": os.uname().nodename}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class RayExecutor:
    """Runs each stage's tasks as Ray tasks on the cluster at `address` (None: start a local one)."""

    jobs: int = 1  # not used: Ray schedules by the CPUs and GPUs each task asks for
    threads: int | None = None
    address: str | None = None
    task_fn: Callable[..., dict[str, Any]] = run_packed

    def run(self, plan: Plan, spec_path: Path, root: Path, *, device: str = "auto", data_dir: str | None = None,
            progress: bool = True) -> list[Outcome]:
        try:
            import ray
        except ImportError as e:
            raise ExecutorUnavailable("--executor ray needs Ray, an optional extra: pip install '.[ray]' "
                               "(or pip install ray)") from e
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}})
        suite = load_suite(spec_path)
        spec_text = Path(spec_path).read_text()
        remote = ray.remote(self.task_fn)
        outcomes: list[Outcome] = []
        bar = tqdm(total=len(plan.tasks), unit="run", desc="ray", disable=not progress)
        for stage in plan.stages:
            pending: dict[Any, tuple[Task, float]] = {}
            for task in stage:
                spec = suite.resolve(task.exp_id, task.profile)
                pretrain = {}
                if spec.pretrain:
                    d = result_dir(root, spec.pretrain, task.profile, task.seed)
                    pretrain[str(d.relative_to(root))] = pack(d)
                gpu = 1 if spec.needs_gpu and device != "cpu" else 0
                ref = remote.options(num_cpus=1, num_gpus=gpu, max_retries=1, retry_exceptions=True).remote(
                    task, spec_text, pretrain, device, data_dir, self.threads or 1)
                pending[ref] = (task, time.time())
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                task, t0 = pending.pop(done[0])
                try:
                    out = ray.get(done[0])
                except ray.exceptions.RayError as e:  # carries the worker's traceback
                    trace = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # without the terminal colours
                    outcomes.append(Outcome(task, None, f"failed twice on Ray workers:\n{trace}", time.time() - t0))
                else:
                    _write(root, task, out["files"])
                    outcomes.append(Outcome(task, out["metrics"], None, time.time() - t0))
                announce(outcomes[-1], len(outcomes), len(plan.tasks))
                bar.update(1)
            if any(o.error for o in outcomes):
                break
        bar.close()
        return outcomes


def _write(root: Path, task: Task, files: dict[str, bytes]) -> None:
    """The worker's results folder under root, in one rename (never half-written)."""
    staging = staging_dir(root, task.exp_id, task.profile, task.seed, f"ray{os.getpid()}")
    with staged_dir(staging, result_dir(root, task.exp_id, task.profile, task.seed)) as tmp:
        for name, blob in files.items():
            (tmp / name).write_bytes(blob)
