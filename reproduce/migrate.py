"""Bring recorded results folders up to a changed spec hash or metrics format without retraining them.

`python -m reproduce migrate` is idempotent. What it migrates:

- pretrain hash (spec hash content gained `pretrain_hash`): a result whose recorded hash equals its
  spec's hash *without* the pretrain's hash, and whose pretrain result is current and finished
  before this run started (so this run was built from that very model), gets the new hash and the
  pretrain's hash written into its `spec.json`, with a `migrations` entry saying so. A result whose
  pretrain changed (stale, missing, or retrained after it) is left stale: it must be retrained.
- renamed method_args (`RENAMED_METHOD_ARGS`; the method refuses the former name): a result whose
  recorded hash equals its spec's hash with the keys under their former names gets the new hash and
  names in its `spec.json` (and in its posterior.pt's `method_args`), with a `migrations` entry.
  A resume point (results/.work/<id>/<profile>/seed<k>/spec_hash) gets the new hash the same way,
  so the run continues from it instead of starting over.
- method_args given explicitly at their default: a result (or resume point) whose recorded hash equals
  its spec's hash with every method_args key whose value is the method's default left out was computed
  by the very same method (the key now only spells out what the code assumed), and gets the new hash
  the same way. Trials' results are covered too.
- metrics format (bayescomp.metrics.METRICS_FORMAT): every metrics.json under the results folder
  (any profile, trials and kept copies included) of format 1 (no `metrics_format` key) gets its
  `RENAMED_METRICS` keys renamed in place and `metrics_format` set; nothing else in it changes. A
  folder whose run holds its lock (being trained, by this code or older code) is left for a rerun;
  a file written by older code after a migration is format 1 again, and the next rerun migrates it.

A migrated file is rewritten atomically (temporary file, then one rename); spec.json last, so an
interrupted migration is completed by running it again.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from bayescomp.artifact import load_plain
from bayescomp.metrics import METRICS_FORMAT
from reproduce.registry import METHODS
from reproduce.results import (artifact, atomic_path, recorded_folders, result_dir, results_folders, run_lock, status,
                               write_atomic)
from reproduce.spec import RunSpec, Suite, SpecError, content_hash

RENAMED_METHOD_ARGS: dict[str, dict[str, str]] = {  # method -> {former key: key now}
    "sparse_vd": {"logvar_lr_mult": "scale_lr_mult"},  # one name for the knob, as BC's
}
RENAMED_METRICS = {"flops_dense": "macs_dense", "flops_pruned": "macs_pruned"}  # format 1 -> 2: multiply-adds


def migrate_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce migrate`: a line per recorded folder, saying what happened to it; then one per
    metrics.json."""
    for exp_id, prof, seed, outcome in migrate(suite, args.results_dir):
        print(f"{exp_id:<28} {prof:<6} seed{seed}: {outcome}")
    for folder, outcome in migrate_metrics(args.results_dir):
        print(f"{folder}/metrics.json: {outcome}")
    return 0


def _depth(suite: Suite, exp_id: str) -> int:
    pre = suite.experiments[exp_id].get("pretrain")
    return 0 if pre is None else 1 + _depth(suite, pre)


def _started(record: dict[str, Any]) -> float:
    return _finished(record) - float(record["wall_seconds"])


def _finished(record: dict[str, Any]) -> float:
    return datetime.strptime(record["finished"], "%Y-%m-%dT%H:%M:%S%z").timestamp()


def migrate_pretrain_hash(suite: Suite, root: Path, spec: RunSpec, seed: int) -> str:
    """Migrate one results folder; returns what happened ('current', 'migrated', or why it stays stale)."""
    folder = result_dir(root, spec.id, spec.profile, seed)
    if status(root, spec, seed) == "current":
        return "current"
    if spec.pretrain is None:
        return "stale (no pretrain: nothing to migrate)"
    path = folder / "spec.json"
    record = json.loads(path.read_text())
    without = {k: v for k, v in spec.hashed_content().items() if k != "pretrain_hash"}
    old = content_hash(without)
    if record.get("spec_hash") != old:
        return "stale (recorded under another spec: retrain it)"
    pre = suite.resolve(spec.pretrain, spec.pretrain_profile or spec.profile)
    if status(root, pre, seed) != "current":
        return f"stale (its pretrain {pre.id} seed {seed} is not current: retrain both)"
    pre_record = json.loads((result_dir(root, pre.id, pre.profile, seed) / "spec.json").read_text())
    if _finished(pre_record) > _started(record) + 1:
        return f"stale (its pretrain {pre.id} seed {seed} was recorded after this run started: retrain it)"
    record["spec_hash"] = spec.hash
    record["spec"]["pretrain_hash"] = spec.pretrain_hash
    record.setdefault("migrations", []).append({
        "from": old, "to": spec.hash, "date": time.strftime("%Y-%m-%d"),
        "why": "the spec hash now covers the pretrain's hash; this run's pretrain is unchanged and current"})
    write_atomic(path, json.dumps(record, indent=2) + "\n")
    return "migrated"


def _renamed(method: str, args: dict[str, Any]) -> dict[str, Any]:
    """method_args with every former key under its name now, in their order."""
    names = RENAMED_METHOD_ARGS.get(method, {})
    return {names.get(k, k): v for k, v in args.items()}


def _renames_text(method: str) -> str:
    return ", ".join(f"{a} -> {b}" for a, b in RENAMED_METHOD_ARGS[method].items())


def _former_hash(spec: RunSpec) -> str | None:
    """The hash of `spec` with its renamed method_args under their former names; None if it has none."""
    former = {new: old for old, new in RENAMED_METHOD_ARGS.get(spec.method, {}).items()}
    if not former.keys() & spec.method_args.keys():
        return None
    return content_hash({**spec.hashed_content(),
                         "method_args": {former.get(k, k): v for k, v in spec.method_args.items()}})


def _without_defaults_hashes(spec: RunSpec) -> dict[str, list[str]]:
    """The hashes of `spec` with some of the method_args keys that merely restate the method's default
    left out (each non-empty subset of them): hash -> the keys left out."""
    defaults = {f.name: f.default for f in dataclasses.fields(METHODS[spec.method])
                if f.default is not dataclasses.MISSING}
    restated = [k for k, v in spec.method_args.items() if k in defaults and defaults[k] == v]
    out = {}
    for n in range(1, len(restated) + 1):
        for dropped in itertools.combinations(restated, n):
            kept = {k: v for k, v in spec.method_args.items() if k not in dropped}
            out[content_hash({**spec.hashed_content(), "method_args": kept})] = list(dropped)
    return out


def _restated_text(spec: RunSpec, keys: list[str]) -> str:
    return ", ".join(f"{k} = {spec.method_args[k]!r}" for k in keys)


def migrate_explicit_defaults(root: Path, spec: RunSpec, seed: int) -> str | None:
    """Relabel one results folder recorded before method_args keys were written out at their defaults; None
    if it was not."""
    path = result_dir(root, spec.id, spec.profile, seed) / "spec.json"
    record = json.loads(path.read_text())
    old = record.get("spec_hash")
    keys = _without_defaults_hashes(spec).get(old)
    if keys is None:
        return None
    record["spec_hash"] = spec.hash
    record["spec"]["method_args"] = spec.method_args
    record.setdefault("migrations", []).append({
        "from": old, "to": spec.hash, "date": time.strftime("%Y-%m-%d"),
        "why": f"method_args now state their defaults ({_restated_text(spec, keys)}); nothing this run computed changed"})
    write_atomic(path, json.dumps(record, indent=2) + "\n")
    return f"migrated (method_args now state their defaults: {_restated_text(spec, keys)})"


def migrate_renamed_args(root: Path, spec: RunSpec, seed: int) -> str | None:
    """Relabel one results folder recorded under the former names of spec's method_args; None if it was not."""
    folder = result_dir(root, spec.id, spec.profile, seed)
    path = folder / "spec.json"
    record = json.loads(path.read_text())
    old = _former_hash(spec)
    if old is None or record.get("spec_hash") != old:
        return None
    post = artifact(folder, "posterior")
    if post is not None:  # absent: a large one on another machine; the run that needs it writes it again
        obj = load_plain(post, f"restore it (git checkout -- {post}) and migrate again")
        if "method_args" in obj:
            obj["method_args"] = _renamed(spec.method, obj["method_args"])
            with atomic_path(post) as tmp:
                torch.save(obj, tmp)
            entry = record.get("artifacts", {}).get("posterior")
            if entry is not None and entry.get("file") == post.name:  # recorded size and SHA-256
                entry.update(bytes=post.stat().st_size, sha256=hashlib.sha256(post.read_bytes()).hexdigest())
    record["spec_hash"] = spec.hash
    record["spec"]["method_args"] = _renamed(spec.method, record["spec"]["method_args"])
    names = _renames_text(spec.method)
    record.setdefault("migrations", []).append({
        "from": old, "to": spec.hash, "date": time.strftime("%Y-%m-%d"),
        "why": f"method_args renamed ({names}); nothing this run computed changed"})
    write_atomic(path, json.dumps(record, indent=2) + "\n")
    return f"migrated (method_args renamed: {names})"


def migrate_resume_point(suite: Suite, hash_file: Path) -> tuple[str, str, int, str]:
    """Relabel one resume point, results/.work/<id>/<profile>/seed<k>/spec_hash, recorded under the former
    names of its method_args: (experiment, '.work/<profile>', seed, outcome)."""
    exp_id, profile, seed = hash_file.parts[-4], hash_file.parts[-3], int(hash_file.parent.name[4:])
    where = (exp_id, f".work/{profile}", seed)
    try:
        spec = (suite.resolve_trial(profile[len("trial."):]) if profile.startswith("trial.")
                else suite.resolve(exp_id, profile))
    except SpecError as e:
        return (*where, f"left as it is ({e})")
    if spec.id != exp_id:
        return (*where, f"left as it is (trial {profile[len('trial.'):]!r} is of {spec.id})")
    recorded = hash_file.read_text().strip()
    if recorded == spec.hash:
        return (*where, "current")
    keys = _without_defaults_hashes(spec).get(recorded)
    if keys is not None:
        write_atomic(hash_file, spec.hash)
        return (*where, f"migrated (method_args now state their defaults: {_restated_text(spec, keys)})")
    if recorded != _former_hash(spec):
        return (*where, "stale (checkpoint of another spec: the run starts over)")
    write_atomic(hash_file, spec.hash)
    return (*where, f"migrated (method_args renamed: {_renames_text(spec.method)})")


def migrate(suite: Suite, root: Path) -> list[tuple[str, str, int, str]]:
    """Every recorded folder under `root`, pretrains first, then every resume point under root/.work:
    (experiment, profile, seed, outcome)."""
    out = []
    for exp_id in sorted(suite.ids(), key=lambda i: _depth(suite, i)):
        for profile in suite.profiles:
            folders = recorded_folders(root, exp_id, profile)
            if not folders:
                continue
            out += _migrate_folders(suite, root, suite.resolve(exp_id, profile), folders)
    for name in suite.trials:
        spec = suite.resolve_trial(name)
        out += _migrate_folders(suite, root, spec, recorded_folders(root, spec.id, spec.profile))
    for hash_file in sorted((root / ".work").glob("*/*/seed*/spec_hash")):
        if hash_file.parts[-4] in suite.experiments and hash_file.parent.name[4:].isdigit():
            out.append(migrate_resume_point(suite, hash_file))
    return out


def _migrate_folders(suite: Suite, root: Path, spec: RunSpec, folders: list[tuple[int, Path]]
                     ) -> list[tuple[str, str, int, str]]:
    out = []
    for seed, _ in folders:
        done = None
        if status(root, spec, seed) != "current":
            done = migrate_renamed_args(root, spec, seed) or migrate_explicit_defaults(root, spec, seed)
        out.append((spec.id, spec.profile, seed, done or migrate_pretrain_hash(suite, root, spec, seed)))
    return out


def migrate_metrics(root: Path) -> list[tuple[str, str]]:
    """Every metrics.json under root brought up to METRICS_FORMAT: (its folder relative to root, outcome)."""
    return [(str(folder.relative_to(root)), migrate_metrics_file(folder)) for folder in results_folders(root)]


def migrate_metrics_file(folder: Path) -> str:
    """Rename one format-1 metrics.json's RENAMED_METRICS keys in place and record the format; what happened."""
    path = folder / "metrics.json"
    with run_lock(folder, wait=False) as free:
        if not free:
            return "left for now (its run holds the lock): migrate again when it has finished"
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            return f"left as it is (unreadable: {type(e).__name__}: {e}; restore it with git checkout)"
        found = metrics.get("metrics_format", 1)
        if found == METRICS_FORMAT:
            return "current"
        if found != 1:
            return f"left as it is (metrics format {found}: this code migrates format 1 to {METRICS_FORMAT})"
        renamed = {RENAMED_METRICS.get(k, k): v for k, v in metrics.items()}
        write_atomic(path, json.dumps({"metrics_format": METRICS_FORMAT, **renamed}, indent=2) + "\n")
        names = ", ".join(f"{a} -> {b}" for a, b in RENAMED_METRICS.items() if a in metrics)
        return f"migrated (metrics format 1 -> {METRICS_FORMAT}{': ' + names if names else ''})"
