"""Bring recorded results folders up to a changed spec hash without retraining them.

`python -m reproduce migrate` is idempotent. What it migrates:

- pretrain hash (spec hash content gained `pretrain_hash`): a result whose recorded hash equals its
  spec's hash *without* the pretrain's hash, and whose pretrain result is current and finished
  before this run started (so this run was built from that very model), gets the new hash and the
  pretrain's hash written into its `spec.json`, with a `migrations` entry saying so. A result whose
  pretrain changed (stale, missing, or retrained after it) is left stale: it must be retrained.

A migrated `spec.json` is rewritten atomically (temporary file, then one rename).
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from reproduce.run import result_dir, status
from reproduce.spec import RunSpec, Suite, content_hash


def _depth(suite: Suite, exp_id: str) -> int:
    pre = suite.experiments[exp_id].get("pretrain")
    return 0 if pre is None else 1 + _depth(suite, pre)


def _started(record: dict[str, Any]) -> float:
    return _finished(record) - float(record["wall_seconds"])


def _finished(record: dict[str, Any]) -> float:
    return datetime.strptime(record["finished"], "%Y-%m-%dT%H:%M:%S%z").timestamp()


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


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
    pre = suite.resolve(spec.pretrain, spec.profile)
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
    _write_json(path, record)
    return "migrated"


def migrate(suite: Suite, root: Path) -> list[tuple[str, str, int, str]]:
    """Every recorded folder under `root`, pretrains first: (experiment, profile, seed, outcome)."""
    out = []
    for exp_id in sorted(suite.ids(), key=lambda i: _depth(suite, i)):
        for profile in suite.profiles:
            base = root / exp_id / profile
            if not base.is_dir():
                continue
            spec = suite.resolve(exp_id, profile)
            for folder in sorted(base.glob("seed*")):
                if folder.name[4:].isdigit() and (folder / "spec.json").exists():
                    seed = int(folder.name[4:])
                    out.append((exp_id, profile, seed, migrate_pretrain_hash(suite, root, spec, seed)))
    return out
