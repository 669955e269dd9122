"""The results layout: where every recorded and generated file lives, how it is written, how it is read.

A run of (experiment, profile, seed) is recorded in results/<id>/<profile>/seed<k>/: spec.json,
history.csv, metrics.json, details.json, model.pt, model.bcw, and posterior.pt for Bayesian runs.
Artifacts over LARGE_BYTES are named `*.large.*` (git ignores them; spec.json keeps their size
and SHA-256). Work in progress lives in results/.work/<id>/<profile>/seed<k>/ (the resume point),
with one lock file per run in results/.work/. Table 2's timings are in results/bench/<device>/,
the check's calibration in results/check/. Generated tables and figures of a profile other than
`paper` carry its name (`profile_suffix`).

Writing: a results folder appears whole or not at all (`staged_dir`: written beside, moved into
place in one rename), and so does every generated or rewritten file (`atomic_path`,
`write_atomic`). Reading: `status` (current, stale or missing), `load_result`, `load_record`, the
current seeds of a spec, and the provenance of a record. A metrics.json of an older format
(bayescomp.metrics.METRICS_FORMAT) is refused, naming `python -m reproduce migrate`, which brings it
up. This module trains nothing (run.py does).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bayescomp.artifact import ArtifactError, load_plain
from bayescomp.metrics import METRICS_FORMAT
from reproduce.spec import RunSpec, Suite

RESULT_FILES = ("spec.json", "history.csv", "metrics.json")  # + details.json, model.pt, posterior.pt
LARGE_BYTES = 5_000_000  # larger artifacts are written as *.large.pt, kept out of git
WEIGHT_FILES = ("model.bcw", "model.large.bcw")  # the weight file of CR max (bayescomp.coding)
CHECKPOINT = "checkpoint.pt"  # a run's resume point, in its work folder (fit() writes it at each epoch boundary)


# ---------------------------------------------------------------- paths

def result_dir(root: Path, exp_id: str, profile: str, seed: int) -> Path:
    return root / exp_id / profile / f"seed{seed}"


def work_dir(root: Path, exp_id: str, profile: str, seed: int) -> Path:
    """The run's work in progress: its checkpoint (the resume point) and the spec hash it belongs to."""
    return root / ".work" / exp_id / profile / f"seed{seed}"


def checkpoint_path(root: Path, exp_id: str, profile: str, seed: int) -> Path:
    """The run's resume point: the checkpoint fit() writes at each epoch boundary, in its work folder."""
    return work_dir(root, exp_id, profile, seed) / CHECKPOINT


def staging_dir(root: Path, exp_id: str, profile: str, seed: int, tag: str) -> Path:
    """A temporary folder in which a run's results folder is written before it is moved into place."""
    return root / f".tmp-{exp_id}-{profile}-seed{seed}-{tag}"


def bench_dir(root: Path, device_type: str) -> Path:
    """Table 2's measurements on one kind of device (cpu, cuda)."""
    return root / "bench" / device_type


def bench_dirs(root: Path) -> list[Path]:
    """Every device's folder of Table 2's measurements under root, by name."""
    return sorted((root / "bench").glob("*/"))


def calibration_file(root: Path, profile: str) -> Path:
    """Every measurement behind a profile's expected values (reproduce calibrate)."""
    return root / "check" / f"{profile}_calibration.csv"


def profile_suffix(profile: str) -> str:
    """What generated file names of `profile` carry: nothing for `paper`, else `_<profile>`."""
    return "" if profile == "paper" else f"_{profile}"


def recorded_folders(root: Path, exp_id: str, profile: str) -> list[tuple[int, Path]]:
    """(seed, folder) of every seed<k> folder under root/<id>/<profile>/ that holds a spec.json, by name."""
    base = root / exp_id / profile
    return [(int(f.name[4:]), f) for f in sorted(base.glob("seed*"))
            if f.name[4:].isdigit() and (f / "spec.json").exists()] if base.is_dir() else []


def results_folders(root: Path, profile: str | None = None) -> list[Path]:
    """Every <id>/<profile>/seed<k> folder with a metrics.json under root, at any depth (e.g. a
    calibration's <work>/<kernels>/...), hidden folders (.work, staging) excluded; only `profile`'s if given."""
    found = []
    for m in root.rglob("metrics.json"):
        folder = m.parent
        rel = folder.relative_to(root).parts
        if (folder.name.startswith("seed") and len(rel) >= 3 and not any(p.startswith(".") for p in rel)
                and (profile is None or folder.parent.name == profile)):
            found.append(folder)
    return sorted(found)


# ---------------------------------------------------------------- artifacts

def artifact(folder: Path, name: str) -> Path | None:
    """The file of artifact `name` ('model', 'posterior') in a results folder, or None if absent here."""
    for p in (folder / f"{name}.pt", folder / f"{name}.large.pt"):
        if p.exists():
            return p
    return None


def sized_name(path: Path, nbytes: int) -> Path:
    """path, renamed <name>.large.<ext> when nbytes exceeds LARGE_BYTES (kept out of git); its name now."""
    if nbytes <= LARGE_BYTES:
        return path
    return path.rename(path.with_name(f"{path.stem}.large{path.suffix}"))


def save_artifact(obj: Any, folder: Path, name: str) -> dict[str, Any]:
    """torch.save obj as <name>.pt, or <name>.large.pt over LARGE_BYTES; its file name, size and SHA-256."""
    path = folder / f"{name}.pt"
    torch.save(obj, path)
    size = path.stat().st_size
    path = sized_name(path, size)
    return {"file": path.name, "bytes": size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


# ---------------------------------------------------------------- writing

@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to. When the block ends without an exception it
    replaces `path` in one rename; otherwise it is removed and `path` stays as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write a whole file (text as UTF-8) so that a reader sees the old content or the new, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))


def replace_dir(new: Path, dest: Path) -> None:
    """Move folder `new` to `dest`, replacing what is there, by renames only."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(staging: Path, dest: Path) -> Iterator[Path]:
    """An empty folder `staging` to write a results folder into; it replaces `dest` when the block ends
    without an exception (`replace_dir`), and is removed otherwise: dest is never half-written."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        replace_dir(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def run_lock(folder: Path, *, wait: bool) -> Iterator[bool]:
    """The lock of the run recorded in results folder `folder` (held while it trains; the OS releases it
    when a process dies). Yields True once held; without `wait`, False at once if another process holds it."""
    lock = folder.parents[2] / ".work" / f"{folder.parts[-3]}-{folder.parts[-2]}-{folder.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            print(f"another process is running {lock.stem}; waiting for it", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield True


# ---------------------------------------------------------------- reading

def status(root: Path, spec: RunSpec, seed: int) -> str:
    """'current', 'stale' (recorded under another spec hash) or 'missing'."""
    d = result_dir(root, spec.id, spec.profile, seed)
    if not all((d / f).exists() for f in RESULT_FILES):
        return "missing"
    recorded = _read_json(d / "spec.json", spec, seed)
    return "current" if recorded.get("spec_hash") == spec.hash else "stale"


def resume_point_is_specs(work: Path, spec: RunSpec) -> bool:
    """Whether the work folder `work` holds a resume point of `spec`: a checkpoint beside a spec_hash file
    naming spec's hash. One without that file, or naming another hash, is of no spec this code can vouch for."""
    hash_file = work / "spec_hash"
    return (work / CHECKPOINT).exists() and hash_file.exists() and hash_file.read_text().strip() == spec.hash


def resume_point(root: Path, spec: RunSpec, seed: int) -> dict[str, Any] | None:
    """The state saved at spec's resume point for `seed` (results/.work/: epoch, history, ...), None if
    there is none of spec's; an ArtifactError naming the fix if its checkpoint cannot be read."""
    work = work_dir(root, spec.id, spec.profile, seed)
    if not resume_point_is_specs(work, spec):
        return None
    return load_plain(work / CHECKPOINT, f"delete it to restart the run: rm {work / CHECKPOINT}")


def resume_epoch(root: Path, spec: RunSpec, seed: int) -> int | None:
    """The last epoch of spec's committed resume point for `seed`, None if it has none (or an unreadable one)."""
    try:
        state = resume_point(root, spec, seed)
        return None if state is None else int(state["epoch"])
    except (ArtifactError, KeyError, TypeError, ValueError):
        return None


def not_current_reason(root: Path, spec: RunSpec, stale: bool) -> str:
    """Why a row has no current result, in a few words: in progress (from its resume point), stale or not run."""
    progress = [f"seed {s} at epoch {e}/{spec.train.epochs}" for s in spec.seeds
                if (e := resume_epoch(root, spec, s)) is not None]
    if progress:
        return f"in progress ({', '.join(progress)}; resume point in results/.work/)"
    return "stale results (the spec changed)" if stale else "not run"


def current_seeds(root: Path, spec: RunSpec) -> list[int]:
    """The seeds of `spec` (its profile's) whose results are current."""
    return [s for s in spec.seeds if status(root, spec, s) == "current"]


def current_specs(suite: Suite, profile: str, root: Path, ids: list[str] | None = None
                  ) -> Iterator[tuple[RunSpec, list[int]]]:
    """(spec, current seeds) of each experiment (all, or `ids`) with at least one current result."""
    for exp_id in suite.ids() if ids is None else ids:
        spec = suite.resolve(exp_id, profile)
        seeds = current_seeds(root, spec)
        if seeds:
            yield spec, seeds


def load_result(root: Path, spec: RunSpec, seed: int) -> dict[str, Any]:
    """metrics.json of a current result (callers check `status` first); a ValueError naming the file if
    it is damaged or records a non-finite metric (NaN or infinity is never a result)."""
    path = result_dir(root, spec.id, spec.profile, seed) / "metrics.json"
    metrics = _read_json(path, spec, seed)
    check_metrics_format(path, metrics, root)
    bad = [k for k, v in metrics.items() if not k.startswith("info_") and isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(f"{path} records {bad[0]} = {metrics[bad[0]]}, which is not a valid result; "
                         + _redo(spec, seed, path.parent))
    return metrics


def check_metrics_format(path: Path, metrics: dict[str, Any], root: Path) -> None:
    """A ValueError naming `python -m reproduce migrate` if metrics.json `path` (under results root `root`)
    is not of the format this code reads, METRICS_FORMAT (format 1 has no `metrics_format` key)."""
    found = metrics.get("metrics_format", 1)
    if found != METRICS_FORMAT:
        raise ValueError(f"{path} is in metrics format {found}, this code reads format {METRICS_FORMAT} (multiply-adds "
                         f"as macs_dense/macs_pruned, formerly flops_*): bring it up without retraining with "
                         f"`python -m reproduce migrate --results-dir {root}`")


def load_record(root: Path, spec: RunSpec, seed: int) -> dict[str, Any]:
    """spec.json of a recorded result: what it was built from and where (spec, commit, device, times)."""
    return _read_json(result_dir(root, spec.id, spec.profile, seed) / "spec.json", spec, seed)


def _read_json(path: Path, spec: RunSpec, seed: int) -> dict[str, Any]:
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


def list_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce list`: the status of every seed of every experiment, per profile."""
    profiles = [args.profile] if args.profile else list(suite.profiles)
    for exp_id in suite.ids():
        for prof in profiles:
            spec = suite.resolve(exp_id, prof)
            states = ", ".join(f"seed{s}: {status(args.results_dir, spec, s)}" for s in spec.seeds)
            print(f"{exp_id:<28} {prof:<6} {states}")
    return 0


# ---------------------------------------------------------------- provenance

def git(*args: str) -> str | None:
    """`git ARGS` in this code's repository: its output, or None where git or the repository is absent."""
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def code_version() -> dict[str, Any]:
    """The commit of the code now running and whether its tracked files differ from it, as records store them."""
    return {"git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def short_commit(record: dict[str, Any]) -> str:
    """The first 10 hex digits of a record's commit ('None' where it has none)."""
    return str(record.get("git_commit"))[:10]


def provenance(record: dict[str, Any]) -> str:
    """'commit <short>', marked ' (dirty)' when the code had uncommitted changes: of a run's spec.json
    or a bench folder's meta.json."""
    return f"commit {short_commit(record)}{' (dirty)' if record.get('git_dirty') else ''}"
