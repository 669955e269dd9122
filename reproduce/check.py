"""Regression check: recorded metrics of a profile against the expected values in experiments.toml.

`python -m reproduce check --profile quick` retrains every experiment of the profile from scratch
(into a fresh folder) and compares each metric, averaged over the profile's seeds, with
`expected.<profile>.<metric> = { value, tol, kind, basis, source }` of its experiment. Expected
values and their tolerances are written only by `python -m reproduce calibrate` (reproduce/
calibrate.py), from runs over several seeds and CPU-kernel settings; `basis` says how each
tolerance was derived; nobody types them. kind "sanity" marks a metric too sensitive to last-bit
differences for a regression check: it is only checked to lie in a broad band.

Every run of a check uses one torch thread: the CPU kernels are deterministic for a fixed thread
count, and the numbers then do not depend on `--jobs` or the machine's cores.
"""
from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd

from reproduce.results import current_seeds, load_result
from reproduce.spec import Suite

METRICS = ("error_pct", "nonzero_pct", "cr_fast", "cr_max")


def measured(suite: Suite, profile: str, root: Path, exp_id: str) -> dict[str, float] | None:
    """The checked metrics of `exp_id`, mean over its seeds; None unless every seed has a current result."""
    spec = suite.resolve(exp_id, profile)
    if current_seeds(root, spec) != list(spec.seeds):
        return None
    runs = [load_result(root, spec, s) for s in spec.seeds]
    return {m: statistics.fmean(float(r[m]) for r in runs) for m in METRICS}


def deviations(suite: Suite, profile: str, root: Path) -> pd.DataFrame:
    """One row per (experiment, metric): expected, tolerance, measured, deviation, ok."""
    rows = []
    for exp_id in suite.ids():
        spec = suite.resolve(exp_id, profile)
        got = measured(suite, profile, root, exp_id)
        for metric in METRICS:
            exp = spec.expected.get(metric)
            value = None if got is None else got[metric]
            row = {"experiment": exp_id, "metric": metric, "kind": exp.get("kind", "regression") if exp else None,
                   "expected": exp["value"] if exp else None, "tol": exp.get("tol", 0.0) if exp else None,
                   "measured": value, "deviation": None, "ok": False, "problem": ""}
            if exp is None:
                row["problem"] = f"no expected value: run `python -m reproduce calibrate --profile {profile}`"
            elif value is None:
                row["problem"] = "no current result (the run failed or was not made)"
            else:
                row["deviation"] = value - exp["value"]
                row["ok"] = abs(row["deviation"]) <= row["tol"] + 1e-9
                row["problem"] = "" if row["ok"] else "outside the tolerance"
            rows.append(row)
    return pd.DataFrame(rows)


def format_deviations(frame: pd.DataFrame, only_failures: bool = False) -> str:
    shown = frame[~frame["ok"]] if only_failures else frame
    shown = shown.assign(ok=shown["ok"].map({True: "ok", False: "MISS"}))
    return shown.to_string(index=False, na_rep="—", float_format=lambda v: f"{v:.3f}")


def replace_section(lines: list[str], exp_id: str, header: str, section: list[str]) -> list[str]:
    """Put `section` (header first) at the end of experiment `exp_id`'s block, replacing an old one."""
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("[[")] + [len(lines)]  # any array table
    for a, b in zip(starts, starts[1:]):
        if f'id = "{exp_id}"' not in (line.strip() for line in lines[a:b]):
            continue
        block = lines[a:b]
        if header in block:  # drop the old section's lines up to the next table header; comments stay
            h = block.index(header)
            e = next((j for j in range(h + 1, len(block)) if block[j].startswith("[")), len(block))
            block = block[:h] + [line for line in block[h + 1:e] if not line.strip() or line.lstrip().startswith("#")] \
                + block[e:]
        last = max(j for j, line in enumerate(block) if line.strip() and not line.lstrip().startswith("#"))
        block = block[:last + 1] + section + block[last + 1:]
        return lines[:a] + block + lines[b:]
    raise KeyError(exp_id)
