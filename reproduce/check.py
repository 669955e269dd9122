"""Regression check: recorded metrics of a profile against the expected values in experiments.toml.

`python -m reproduce check --profile quick` retrains every experiment of the profile from scratch
(into a fresh folder) and compares each metric, averaged over the profile's seeds, with
`expected.<profile>.<metric> = { value, tol, source }` of its experiment. Expected values are
written only by `--update`, from the runs just made, with the tolerance rule below and the run's
provenance as their source; nobody types them.

Every run of a check uses one torch thread: the CPU kernels are deterministic for a fixed thread
count, and the numbers then do not depend on `--jobs` or the machine's cores (the toy VGG rows,
one epoch on 256 images with thresholds chosen on 50, change a lot with the thread count).
Tolerance: max(absolute floor, relative share of the value); it absorbs last-bit differences of
another CPU. A real regression (a changed KL, threshold or encoder) moves the numbers far more.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd

from reproduce.run import load_result, result_dir, status
from reproduce.spec import Suite, load_suite

TOLERANCES = {"error_pct": (0.5, 0.05), "nonzero_pct": (0.1, 0.05), "cr_fast": (0.2, 0.05),
              "cr_max": (0.2, 0.05)}  # metric -> (absolute floor, relative share)


def tolerance(metric: str, value: float) -> float:
    floor, rel = TOLERANCES[metric]
    return round(max(floor, rel * abs(value)), 4)


def measured(suite: Suite, profile: str, root: Path, exp_id: str) -> dict[str, float] | None:
    """The checked metrics of `exp_id`, mean over its seeds; None unless every seed has a current result."""
    spec = suite.resolve(exp_id, profile)
    if any(status(root, spec, s) != "current" for s in spec.seeds):
        return None
    runs = [load_result(root, spec, s) for s in spec.seeds]
    return {m: statistics.fmean(float(r[m]) for r in runs) for m in TOLERANCES}


def deviations(suite: Suite, profile: str, root: Path) -> pd.DataFrame:
    """One row per (experiment, metric): expected, tolerance, measured, deviation, ok."""
    rows = []
    for exp_id in suite.ids():
        spec = suite.resolve(exp_id, profile)
        got = measured(suite, profile, root, exp_id)
        for metric in TOLERANCES:
            exp = spec.expected.get(metric)
            value = None if got is None else got[metric]
            row = {"experiment": exp_id, "metric": metric, "expected": exp["value"] if exp else None,
                   "tol": exp.get("tol", 0.0) if exp else None, "measured": value, "deviation": None, "ok": False,
                   "problem": ""}
            if exp is None:
                row["problem"] = f"no expected value: run `python -m reproduce check --profile {profile} --update`"
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


def update_expected(toml_path: Path, suite: Suite, profile: str, root: Path) -> list[str]:
    """Write every experiment's measured values as its expected.<profile> values; the ids updated."""
    lines = toml_path.read_text().split("\n")
    updated = []
    for exp_id in suite.ids():
        got = measured(suite, profile, root, exp_id)
        if got is None:
            continue
        spec = suite.resolve(exp_id, profile)
        recs = [json.loads((result_dir(root, exp_id, profile, s) / "spec.json").read_text()) for s in spec.seeds]
        source = (f"recorded run: seeds {', '.join(map(str, spec.seeds))}, spec {spec.hash}, commit "
                  f"{str(recs[0]['git_commit'])[:10]}{' (dirty)' if recs[0].get('git_dirty') else ''}, "
                  f"torch {recs[0]['torch']}, {recs[0]['device']} x{recs[0].get('threads')}, {recs[0]['finished'][:10]}")
        section = [f"[experiment.expected.{profile}]"] + [
            f'{m} = {{ value = {round(v, 4)!r}, tol = {tolerance(m, v)!r}, source = "{source}" }}'
            for m, v in got.items()]
        lines = _replace_section(lines, exp_id, f"[experiment.expected.{profile}]", section)
        updated.append(exp_id)
    text = "\n".join(lines)
    toml_path.write_text(text)
    load_suite(toml_path)  # still valid
    return updated


def _replace_section(lines: list[str], exp_id: str, header: str, section: list[str]) -> list[str]:
    """Put `section` (header first) at the end of experiment `exp_id`'s block, replacing an old one."""
    starts = [i for i, line in enumerate(lines) if line.strip() in ("[[experiment]]", "[[published]]")] + [len(lines)]
    for a, b in zip(starts, starts[1:]):
        if f'id = "{exp_id}"' not in (line.strip() for line in lines[a:b]):
            continue
        block = lines[a:b]
        if header in block:  # drop the old section: from its header to the next table header
            h = block.index(header)
            e = next((j for j in range(h + 1, len(block)) if block[j].startswith("[")), len(block))
            block = block[:h] + block[e:]
        last = max(j for j, line in enumerate(block) if line.strip() and not line.lstrip().startswith("#"))
        block = block[:last + 1] + section + block[last + 1:]
        return lines[:a] + block + lines[b:]
    raise KeyError(exp_id)
