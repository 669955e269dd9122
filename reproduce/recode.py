"""Re-encode recorded results with the current weight file format, without retraining.

`python -m reproduce recode [--profile P] [--results-dir R]`: every results folder under R
(<root>/<id>/<profile>/seed<k>/, at any depth, e.g. a calibration's <work>/<kernels>/...) that has
a metrics.json gets its model.bcw rewritten from its model.pt (bayescomp.coding), and the CR max
fields of its metrics.json (cr_max, cr_max_entropy, artifact_*, coding) measured again by
bayescomp.metrics.artifact_metrics. The weights, the error and every other number stay as they
are. A folder whose model is not here (models over 5 MB are `model.large.pt`, kept out of git) is
skipped with a message, as is one whose run is being trained (its lock in <root>/.work/ is held).
Each folder is rebuilt beside itself (hard links to its other files) and swapped in with one
rename, so a killed recode leaves every folder whole; running it again gives the same bytes.
"""
from __future__ import annotations

import argparse
import json
import sys
import os
import shutil
from pathlib import Path
from typing import Any

from bayescomp.artifact import load_plain
from bayescomp.metrics import artifact_metrics
from bayescomp.models import load_model
from reproduce.results import (WEIGHT_FILES, artifact, check_metrics_format, results_folders, run_lock, sized_name,
                               staged_dir)
from reproduce.spec import Suite


def recode_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce recode`: every folder under --results-dir (of --profile), a row each."""
    rows = recode(args.results_dir, args.profile)
    for r in rows:
        if "skipped" in r:
            print(f"{r['folder']}: skipped, {r['skipped']}", file=sys.stderr)
    print(format_rows(rows))
    return 0


def recode(root: Path, profile: str | None = None) -> list[dict[str, Any]]:
    """Re-encode every results folder under root; one row per folder (see `recode_folder`)."""
    return [recode_folder(folder, root) for folder in results_folders(root, profile)]


def recode_folder(folder: Path, root: Path) -> dict[str, Any]:
    """Rewrite one folder's model.bcw and CR max fields; a row: folder, old and new metrics, or `skipped`."""
    row: dict[str, Any] = {"folder": str(folder.relative_to(root))}
    model_path = artifact(folder, "model")
    if model_path is None:
        return {**row, "skipped": "no model.pt here (a model over 5 MB is model.large.pt, kept out of git)"}
    with run_lock(folder, wait=False) as free:
        if not free:
            return {**row, "skipped": "being trained (its run holds the lock); recode it when the run ends"}
        metrics = json.loads((folder / "metrics.json").read_text())
        check_metrics_format(folder / "metrics.json", metrics, root)
        name = load_plain(model_path, "restore it from git or rerun the experiment")["model"]
        with staged_dir(folder.with_name(f".recode-{folder.name}-{os.getpid()}"), folder) as tmp:
            shutil.copytree(folder, tmp, copy_function=os.link, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(*WEIGHT_FILES, "metrics.json"))
            model_args = json.loads((folder / "spec.json").read_text())["spec"].get("model_args", {})
            new = artifact_metrics(load_model(model_path), name, tmp / "model.bcw", model_args)
            recorded = metrics.get("n_weights_dense")
            dense = sum(c["dense"] for c in new["coding"])
            if recorded is not None and recorded != dense:
                raise ValueError(f"{folder}: the dense model has {dense} weights, metrics.json records {recorded}")
            sized_name(tmp / "model.bcw", new["artifact_bytes"])
            old = metrics.get("cr_max")
            metrics.update(new)
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return {**row, "cr_fast": metrics.get("cr_fast"), "old_cr_max": old, **new}


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The table `recode` prints: old and new CR max, the entropy bound, where the bytes go."""
    head = (f"{'results folder':<50} {'CR fast':>8} {'CR max old':>10} {'new':>8} {'new/fast':>8} "
            f"{'entropy':>8} {'bytes':>9} {'positions':>9} {'values':>7} {'headers':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['folder']:<50} skipped: {r['skipped']}")
            continue
        share = {k: f"{100 * r[f'artifact_{k}_bytes'] / r['artifact_bytes']:.1f} %"
                 for k in ("positions", "values", "header")}
        fast = r["cr_fast"]
        lines.append(f"{r['folder']:<50} {_num(fast):>8} {_num(r['old_cr_max']):>10} {_num(r['cr_max']):>8} "
                     f"{_num(r['cr_max'] / fast if fast else None):>8} {_num(r['cr_max_entropy']):>8} "
                     f"{r['artifact_bytes']:>9} {share['positions']:>9} {share['values']:>7} {share['header']:>7}")
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"
