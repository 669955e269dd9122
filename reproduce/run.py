"""Train, compress, measure and record one (experiment, profile, seed); resumable.

`run_one` writes the results folder (spec.json, history.csv, metrics.json, details.json, model.pt,
model.bcw, and posterior.pt for Bayesian runs; model.bcw: the weight file of CR max,
bayescomp.coding) in one rename, so a killed run never leaves a half-written results folder. Where
each file lives, the `*.large.*` names of artifacts kept out of git, the lock and the work folder
(the per-epoch checkpoint, dropped when the spec hash changes) are decided in reproduce/results.py.
A run that needs a missing large pretrained model regenerates it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bayescomp.data import load_dataset
from bayescomp.metrics import summarize
from bayescomp.models import MODELS, load_model, model_record
from bayescomp.train import fit
from reproduce.registry import METHODS, has_posterior
from reproduce.results import (CHECKPOINT, artifact, code_version, load_result, result_dir, resume_point_is_specs, run_lock,
                               save_artifact, sized_name, staged_dir, staging_dir, status, work_dir)
from reproduce.spec import RunSpec, Suite


def run_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce run ID`: every seed of the experiment (or those of --seed), a line each."""
    spec = suite.resolve(args.id, args.profile)
    for seed in args.seed or list(spec.seeds):
        m = run_one(suite, spec, seed, args.results_dir, device=args.device, data_dir=args.data_dir,
                    progress=not args.no_progress, force=args.force,
                    deadline=parse_deadline(args.stop_at) if args.stop_at else None, epoch_lines=args.no_progress)
        print(f"{spec.id} [{spec.profile}] seed {seed}: {metrics_line(m)}")
    return 0


def metrics_line(m: dict[str, Any]) -> str:
    """The numbers a finished run prints: error, |w≠0|/|w|, architecture, CR fast."""
    return (f"error {m['error_pct']:.2f} %, |w≠0|/|w| {m['nonzero_pct']:.2f} %, architecture {m['architecture']}, "
            f"CR fast {m['cr_fast']:.1f}")


def parse_deadline(when: str, now: float | None = None) -> float:
    """A `time.time()` value from '+90m', '+2h', '+3600s', 'HH:MM' or an ISO time. 'HH:MM' is the nearest
    such local time: one passed less than 12 hours ago stays past (a queue's later commands, started after
    the hour, stop at their first epoch boundary instead of running until that hour tomorrow)."""
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if when.startswith("+") and when[-1] in units:
            return now + float(when[1:-1]) * units[when[-1]]
        if len(when) == 5 and when[2] == ":":
            t = datetime.fromtimestamp(now).replace(hour=int(when[:2]), minute=int(when[3:]), second=0, microsecond=0)
            return t.timestamp() + (86400 if t.timestamp() <= now - 12 * 3600 else 0)
        return datetime.fromisoformat(when).timestamp()
    except ValueError:
        raise ValueError(f"--stop-at {when!r}: not a time; give +90m, +2h, +3600s, HH:MM or an ISO time "
                         "like 2026-11-29T01:10") from None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available on this machine; use --device cpu")
    return torch.device(device)


def run_one(suite: Suite, spec: RunSpec, seed: int, root: Path, *, device: str = "auto",
            data_dir: str | None = None, progress: bool = True, force: bool = False,
            deadline: float | None = None, epoch_lines: bool = False) -> dict[str, Any]:
    """Run (or resume) one seed of `spec` and record it; returns its metrics. Skips current results.
    With `epoch_lines`, prints `epoch_line` to stderr after each epoch (a log's view of a long run).

    deadline (a `time.time()` value): stop at the last epoch boundary before it, raising
    `bayescomp.train.TrainingPaused`; the checkpoint in results/.work/ is the resume point (committed
    with the repository for `paper` runs) and the same call continues from it, on any machine.
    """
    out = result_dir(root, spec.id, spec.profile, seed)
    if not force and status(root, spec, seed) == "current":
        return load_result(root, spec, seed)
    dev = resolve_device(device)
    work = work_dir(root, spec.id, spec.profile, seed)
    work.parent.mkdir(parents=True, exist_ok=True)
    with run_lock(out, wait=True):  # one process per (experiment, profile, seed)
        if not force and status(root, spec, seed) == "current":  # finished by the process we waited for
            return load_result(root, spec, seed)
        if work.exists() and not resume_point_is_specs(work, spec):
            shutil.rmtree(work)  # a checkpoint of another spec, or of none recorded: start over
        work.mkdir(exist_ok=True)
        (work / "spec_hash").write_text(spec.hash)
        return _run_locked(suite, spec, seed, root, dev, work, out, device, data_dir, progress, deadline, epoch_lines)


def epoch_line(spec: RunSpec, seed: int, row: dict[str, Any]) -> str:
    """One finished epoch of a run (a row of its history): what `run` and `trial` print per epoch without a
    progress bar, so that a run in the background shows its progress in its log."""
    line = (f"{spec.id} [{spec.profile}] seed {seed}: epoch {row['epoch']}/{spec.train.epochs}, "
            f"KL per example {row['penalty_per_n']:.4g}, val error {row['val_error_pct']:.2f} %, "
            f"test error {row['test_error_pct']:.2f} %")
    if "prunable_pct" in row:
        line += f", {row['prunable_pct']:.1f} % of weights past the reference threshold"
    return line + f", {row['seconds']:.0f} s"


def _run_locked(suite: Suite, spec: RunSpec, seed: int, root: Path, dev: torch.device, work: Path, out: Path,
                device: str, data_dir: str | None, progress: bool, deadline: float | None,
                epoch_lines: bool) -> dict[str, Any]:
    started = time.time()
    version = code_version()  # of the code this run started with
    data = load_dataset(spec.dataset, data_dir, val_size=spec.val_size)
    if progress:
        print(f"{spec.id} [{spec.profile}] seed {seed}: {spec.dataset} from {data.source}", file=sys.stderr)
    torch.manual_seed(seed)
    method = METHODS[spec.method](**spec.method_args)
    model = MODELS[spec.model](layers=method.layers(), mean=data.mean, std=data.std, **spec.model_args)
    if spec.pretrain is not None:
        pre_spec = suite.resolve(spec.pretrain, spec.pretrain_profile or spec.profile)
        pre_dir = result_dir(root, pre_spec.id, pre_spec.profile, seed)
        regenerate = status(root, pre_spec, seed) == "current" and artifact(pre_dir, "model") is None
        if regenerate:  # recorded by its metrics only (a large model is not in git): train it again
            print(f"{pre_spec.id} seed {seed}: model file not here (only its metrics are recorded); "
                  "retraining it", file=sys.stderr)
        run_one(suite, pre_spec, seed, root, device=device, data_dir=data_dir, progress=progress, force=regenerate,
                deadline=deadline, epoch_lines=epoch_lines)
        pre_model = artifact(pre_dir, "model")
        assert pre_model is not None
        method.init_from_pretrained(model, load_model(pre_model))
    history = fit(model, method, data, spec.train, seed=seed, device=dev, checkpoint=work / CHECKPOINT,
                  progress=progress, train_subset=spec.train_subset, test_subset=spec.test_subset, deadline=deadline,
                  on_epoch=(lambda row: print(epoch_line(spec, seed, row), file=sys.stderr, flush=True))
                  if epoch_lines else None)
    compressed = method.compress(model, data.subset(spec.train_subset, spec.test_subset))  # the run's own data
    with staged_dir(staging_dir(root, spec.id, spec.profile, seed, str(os.getpid())), out) as tmp:
        metrics, small = summarize(compressed, data, spec.model, dev, test_subset=spec.test_subset,
                                   artifact_path=tmp / "model.bcw", model_args=spec.model_args)
        sized_name(tmp / "model.bcw", metrics["artifact_bytes"])
        record = {
            "id": spec.id, "profile": spec.profile, "seed": seed, "spec_hash": spec.hash,
            "spec": {**spec.hashed_content(), "train": asdict(spec.train)},
            **version,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
            "threads": torch.get_num_threads(), "data_source": data.source, "n_train": len(data.subset(spec.train_subset).train_x),
            "wall_seconds": time.time() - started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "train_seconds": sum(h["seconds"] for h in history), "segments": _segments(history),
            "pretrain": str(result_dir(root, spec.pretrain, spec.pretrain_profile or spec.profile, seed))
            if spec.pretrain else None,
        }
        artifacts = {"model": model_record(small, spec.model, [int(a) for a in metrics["architecture"].split("-")])}
        if has_posterior(method):  # the trained posterior, for re-thresholding without retraining
            artifacts["posterior"] = {"format": "bayescomp-posterior/1", "model": spec.model, "method": spec.method,
                                      "method_args": spec.method_args,
                                      "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
        record["artifacts"] = {name: save_artifact(obj, tmp, name) for name, obj in artifacts.items()}
        (tmp / "spec.json").write_text(json.dumps(record, indent=2) + "\n")
        pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "details.json").write_text(json.dumps(compressed.info) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return metrics


def _segments(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive epochs trained alike (a resumed run may have several): host, CPU kernels, CPU threads
    (None where an older checkpoint's epochs did not record it), epochs."""
    out: list[dict[str, Any]] = []
    for h in history:
        where = {"host": h.get("host"), "cpu_capability": h.get("cpu_capability"), "threads": h.get("threads")}
        if out and {k: out[-1][k] for k in where} == where and out[-1]["epochs"][1] == h["epoch"] - 1:
            out[-1]["epochs"][1] = h["epoch"]
        else:
            out.append({**where, "epochs": [h["epoch"], h["epoch"]]})
    return out
