"""Train, compress, measure and record one (experiment, profile, seed); resumable.

Results: results/<id>/<profile>/seed<k>/{spec.json, history.csv, metrics.json, details.json,
model.pt, model.bcw}, and posterior.pt for Bayesian runs (model.bcw: the weight file of CR max,
bayescomp.coding). They are written into a temporary folder and moved into place in one rename,
so a killed run never leaves a half-written results folder. Artifacts over 5 MB (a VGG model) are
written as `*.large.pt` (`model.large.bcw`), which git ignores: the repository keeps their
size and SHA-256 in spec.json, and a run that needs a missing one (as pretraining) regenerates it. Work in progress (the per-epoch checkpoint) lives in
results/.work/<id>/<profile>/seed<k>/ and is dropped when the spec hash changes.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bayescomp.data import load_dataset
from bayescomp.method import DENSE
from bayescomp.metrics import summarize
from bayescomp.models import load_model, model_record
from bayescomp.train import fit
from reproduce.registry import METHODS, MODELS
from reproduce.spec import RunSpec, Suite

RESULT_FILES = ("spec.json", "history.csv", "metrics.json")  # + details.json, model.pt, posterior.pt
LARGE_BYTES = 5_000_000  # larger artifacts are written as *.large.pt, kept out of git


def result_dir(root: Path, exp_id: str, profile: str, seed: int) -> Path:
    return root / exp_id / profile / f"seed{seed}"


def status(root: Path, spec: RunSpec, seed: int) -> str:
    """'current', 'stale' (recorded under another spec hash) or 'missing'."""
    d = result_dir(root, spec.id, spec.profile, seed)
    if not all((d / f).exists() for f in RESULT_FILES):
        return "missing"
    recorded = _read_record(d / "spec.json", spec, seed)
    return "current" if recorded.get("spec_hash") == spec.hash else "stale"


def artifact(folder: Path, name: str) -> Path | None:
    """The file of artifact `name` ('model', 'posterior') in a results folder, or None if absent here."""
    for p in (folder / f"{name}.pt", folder / f"{name}.large.pt"):
        if p.exists():
            return p
    return None


def load_result(root: Path, spec: RunSpec, seed: int) -> dict[str, Any]:
    """metrics.json of a current result (callers check `status` first); a ValueError naming the file if
    it is damaged or records a non-finite metric (NaN or infinity is never a result)."""
    path = result_dir(root, spec.id, spec.profile, seed) / "metrics.json"
    metrics = _read_record(path, spec, seed)
    bad = [k for k, v in metrics.items() if not k.startswith("info_") and isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(f"{path} records {bad[0]} = {metrics[bad[0]]}, which is not a valid result; "
                         + _redo(spec, seed, path.parent))
    return metrics


def _read_record(path: Path, spec: RunSpec, seed: int) -> dict[str, Any]:
    """A JSON file of a results folder; a ValueError naming it, and how to redo it, if it is damaged."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError (truncated) and UnicodeDecodeError
        raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}); {_redo(spec, seed, path.parent)}") from None
    if not isinstance(rec, dict):
        raise ValueError(f"{path} holds a {type(rec).__name__}, not a JSON object; {_redo(spec, seed, path.parent)}")
    return rec


def _redo(spec: RunSpec, seed: int, folder: Path) -> str:
    return (f"restore the folder (git checkout -- {folder}) or delete it and rerun: "
            f"python -m reproduce run {spec.id} --profile {spec.profile} --seed {seed}")


def parse_deadline(when: str, now: float | None = None) -> float:
    """A `time.time()` value from '+90m', '+2h', '+3600s', 'HH:MM' (next such local time) or an ISO time."""
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if when.startswith("+") and when[-1] in units:
            return now + float(when[1:-1]) * units[when[-1]]
        if len(when) == 5 and when[2] == ":":
            t = datetime.fromtimestamp(now).replace(hour=int(when[:2]), minute=int(when[3:]), second=0, microsecond=0)
            return t.timestamp() + (86400 if t.timestamp() <= now else 0)
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
            deadline: float | None = None) -> dict[str, Any]:
    """Run (or resume) one seed of `spec` and record it; returns its metrics. Skips current results.

    deadline (a `time.time()` value): stop at the last epoch boundary before it, raising
    `bayescomp.train.TrainingPaused`; the checkpoint in results/.work/ is the resume point (committed
    with the repository for `paper` runs) and the same call continues from it, on any machine.
    """
    out = result_dir(root, spec.id, spec.profile, seed)
    if not force and status(root, spec, seed) == "current":
        return load_result(root, spec, seed)
    dev = resolve_device(device)
    work = root / ".work" / spec.id / spec.profile / f"seed{seed}"
    work.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / ".work" / f"{spec.id}-{spec.profile}-seed{seed}.lock"):
        if not force and status(root, spec, seed) == "current":  # finished by the process we waited for
            return load_result(root, spec, seed)
        if (work / "spec_hash").exists() and (work / "spec_hash").read_text() != spec.hash:
            shutil.rmtree(work)  # checkpoint of another spec: start over
        work.mkdir(exist_ok=True)
        (work / "spec_hash").write_text(spec.hash)
        return _run_locked(suite, spec, seed, root, dev, work, out, device, data_dir, progress, deadline)


@contextlib.contextmanager
def _exclusive(lock: Path):
    """One process per (experiment, profile, seed); the OS releases the lock when a process dies."""
    with open(lock, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another process is running {lock.stem}; waiting for it", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _run_locked(suite: Suite, spec: RunSpec, seed: int, root: Path, dev: torch.device, work: Path, out: Path,
                device: str, data_dir: str | None, progress: bool, deadline: float | None) -> dict[str, Any]:
    started = time.time()
    commit, dirty = _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain", "--untracked-files=no"))
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
                deadline=deadline)
        pre_model = artifact(pre_dir, "model")
        assert pre_model is not None
        method.init_from_pretrained(model, load_model(pre_model))
    history = fit(model, method, data, spec.train, seed=seed, device=dev, checkpoint=work / "checkpoint.pt",
                  progress=progress, train_subset=spec.train_subset, test_subset=spec.test_subset, deadline=deadline)
    compressed = method.compress(model, data.subset(spec.train_subset, spec.test_subset))  # the run's own data
    tmp = root / f".tmp-{spec.id}-{spec.profile}-seed{seed}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    metrics, small = summarize(compressed, data, spec.model, dev, test_subset=spec.test_subset,
                               artifact_path=tmp / "model.bcw", model_args=spec.model_args)
    if metrics["artifact_bytes"] > LARGE_BYTES:
        (tmp / "model.bcw").rename(tmp / "model.large.bcw")
    record = {
        "id": spec.id, "profile": spec.profile, "seed": seed, "spec_hash": spec.hash,
        "spec": {**spec.hashed_content(), "train": asdict(spec.train)},
        "git_commit": commit, "git_dirty": dirty,  # of the code this run started with
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(), "data_source": data.source, "n_train": len(data.subset(spec.train_subset).train_x),
        "wall_seconds": time.time() - started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train_seconds": sum(h["seconds"] for h in history), "segments": _segments(history),
        "pretrain": str(result_dir(root, spec.pretrain, spec.pretrain_profile or spec.profile, seed))
        if spec.pretrain else None,
    }
    artifacts = {"model": model_record(small, spec.model, [int(a) for a in metrics["architecture"].split("-")])}
    if method.layers() is not DENSE:  # the trained posterior, for re-thresholding without retraining
        artifacts["posterior"] = {"format": "bayescomp-posterior/1", "model": spec.model, "method": spec.method,
                                  "method_args": spec.method_args,
                                  "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    record["artifacts"] = {name: _save_artifact(obj, tmp, name) for name, obj in artifacts.items()}
    (tmp / "spec.json").write_text(json.dumps(record, indent=2) + "\n")
    pd.DataFrame(history).to_csv(tmp / "history.csv", index=False)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (tmp / "details.json").write_text(json.dumps(compressed.info) + "\n")
    _replace_dir(tmp, out)
    shutil.rmtree(work, ignore_errors=True)
    return metrics


def _segments(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive epochs trained on one machine (a resumed run has several): host, CPU kernels, epochs."""
    out: list[dict[str, Any]] = []
    for h in history:
        where = {"host": h.get("host"), "cpu_capability": h.get("cpu_capability")}
        if out and {k: out[-1][k] for k in where} == where and out[-1]["epochs"][1] == h["epoch"] - 1:
            out[-1]["epochs"][1] = h["epoch"]
        else:
            out.append({**where, "epochs": [h["epoch"], h["epoch"]]})
    return out


def _save_artifact(obj: Any, folder: Path, name: str) -> dict[str, Any]:
    """torch.save obj as <name>.pt, or <name>.large.pt over LARGE_BYTES; its file name, size and SHA-256."""
    path = folder / f"{name}.pt"
    torch.save(obj, path)
    size = path.stat().st_size
    if size > LARGE_BYTES:
        path = path.rename(folder / f"{name}.large.pt")
    return {"file": path.name, "bytes": size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _replace_dir(new: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def env_summary() -> str:
    return f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads"
