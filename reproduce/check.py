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

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

from reproduce.executors import make_executor, plan_runs, report_failures
from reproduce.results import current_seeds, load_result
from reproduce.run import resolve_device
from reproduce.spec import Suite

METRICS = ("error_pct", "nonzero_pct", "cr_fast", "cr_max")


def check_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce check`: retrain the profile, print the deviation table; 1 on any miss or failed
    run, 130 when interrupted.

    Without --reuse the runs go into a fresh temporary folder (about 600 MB for `quick`), removed
    when the check ends: passed, failed or interrupted (Ctrl-C, SIGTERM); --keep keeps it and says
    where. A check does not resume: rerun it to start from scratch, or use --reuse to keep and
    complete the runs in --results-dir (they resume from their last completed epoch).
    """
    if args.reuse:
        return _check_in(args, suite, args.results_dir, history=())
    root = Path(tempfile.mkdtemp(prefix=f"reproduce-check-{args.profile}-"))
    again = f"python -m reproduce check --profile {args.profile} --reuse --results-dir {root}"
    on_term = _sigterm_as_interrupt()
    code = 2  # an exception on the way out
    try:
        code = _check_in(args, suite, root, history=(args.results_dir,))
        return code
    except KeyboardInterrupt:
        code = 130
        print("interrupted: a check does not resume; rerun it to start from scratch (or use --reuse to keep "
              "and complete runs in --results-dir)", file=sys.stderr)
        return code
    finally:
        on_term()
        if args.keep:
            print(f"kept the check's results in {root} (--keep); to complete them: `{again}`", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
            if code:
                print(f"removed the check's results folder {root} (--keep keeps it)", file=sys.stderr)


def _sigterm_as_interrupt():
    """Make SIGTERM raise KeyboardInterrupt (so cleanup runs) until the returned function is called."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _check_in(args: argparse.Namespace, suite: Suite, root: Path, history: tuple[Path, ...]) -> int:
    """The check with its runs under root; time estimates may also come from the runs under `history`."""
    plan = plan_runs(suite, args.profile, root, suite.ids(), gpu=resolve_device(args.device).type == "cuda",
                     history=history)
    where = "" if args.reuse else " (a fresh folder, removed when the check ends; --keep keeps it)"
    print(f"check [{args.profile}]: results in {root}{where}\n{plan.describe()}", file=sys.stderr)
    started = time.time()
    # one thread per run: the numbers then do not depend on --jobs or on the number of cores
    executor = make_executor(args.executor, jobs=args.jobs, threads=1, address=args.address)
    outcomes = executor.run(plan, args.spec, root, device=args.device, data_dir=args.data_dir,
                            progress=not args.no_progress)
    failures = report_failures(outcomes)
    frame = deviations(suite, args.profile, root)
    misses = int((~frame["ok"]).sum())
    print(format_deviations(frame))
    print(f"\ncheck [{args.profile}]: {len(frame) - misses}/{len(frame)} metrics within tolerance "
          f"({time.time() - started:.0f} s)")
    if misses:
        print(f"\n{misses} MISSES:\n{format_deviations(frame, only_failures=True)}", file=sys.stderr)
    return 1 if misses or failures else 0


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
