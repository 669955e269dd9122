"""Expected values of a profile's regression check, with tolerances derived from measured spread.

`python -m reproduce calibrate --profile quick` runs every experiment of the profile for several
seeds under several CPU-kernel settings (`KERNELS`; each in its own process, since the kernels are
chosen when torch loads), one torch thread per run, and writes per experiment and metric into
experiments.toml:

    expected.<profile>.<metric> = { value, tol, kind, basis, source }

- value: the midpoint, over the kernel settings, of the profile's own seeds (those the check runs).
- spread: the largest range over the kernel settings at any one seed: how far another machine's
  last bits can move the metric. Several seeds give several chances to see a flip.
- kind "regression": tol = max(floor, spread). The floor is the metric's resolution (2 test
  images for the error, 1 % of the value for the compression metrics): tight enough that a one-bit
  change of every layer's precision (5-12 % of CR fast) fails the check where the spread is 0.
- kind "sanity": where the spread exceeds what a regression check could use (`USEFUL`), the metric
  is chaotic under last-bit changes (a pruning threshold flips); it is checked only to lie in a
  broad band around every measured value (all seeds and kernels, widened by their range).
`basis` says which rule applied and with what numbers. Every measured value is kept in
results/check/<profile>_calibration.csv.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from bayescomp.data import DATASETS
from reproduce.check import METRICS, replace_section
from reproduce.results import atomic_path, calibration_file, load_record, load_result, short_commit, status, write_atomic
from reproduce.spec import Suite, load_suite

KERNELS: dict[str, dict[str, str]] = {  # name -> environment that selects the CPU kernels
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
REL_FLOOR = 0.01  # compression metrics: 1 % of the value
ERROR_FLOOR_IMAGES = 2  # error: 2 test images
USEFUL = {"error_pct": 2.0, "nonzero_pct": 0.10, "cr_fast": 0.10, "cr_max": 0.10}  # error: points; others: share


def calibrate_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce calibrate`: measure in --work-dir (else a temporary folder), write the expected
    values into the experiments file, print them."""
    with tempfile.TemporaryDirectory(prefix=f"reproduce-calibrate-{args.profile}-") as tmp:
        table = calibrate(args.spec, args.profile, args.work_dir or Path(tmp), args.results_dir,
                          args.kernels.split(","), [int(s) for s in args.seeds.split(",")], args.jobs, args.data_dir)
    print(table.to_string(index=False))
    print(f"wrote expected.{args.profile} of {table['experiment'].nunique()} experiments into {args.spec}; "
          f"every measurement in {calibration_file(args.results_dir, args.profile)}", file=sys.stderr)
    return 0


def run_grid(spec_path: Path, profile: str, root: Path, seeds: list[int], jobs: int, data_dir: str | None) -> int:
    """Every experiment of the profile for `seeds` into `root` (this process's kernels); failures."""
    from reproduce.executors import LocalExecutor, plan_runs, report_failures
    suite = load_suite(spec_path)
    plan = plan_runs(suite, profile, root, suite.ids(), gpu=False, seeds=seeds)
    print(plan.describe(), file=sys.stderr, flush=True)
    outcomes = LocalExecutor(jobs=jobs, threads=1).run(plan, spec_path, root, device="cpu", data_dir=data_dir,
                                                       progress=False)
    return report_failures(outcomes)


def measure(spec_path: Path, profile: str, root: Path, kernels: list[str], seeds: list[int], jobs: int,
            data_dir: str | None) -> pd.DataFrame:
    """Run the grid under each kernel setting (a child process each); one row per (kernel, experiment, seed)."""
    for name in kernels:
        started = time.time()
        print(f"calibrate [{profile}]: kernels {name} {KERNELS[name] or '(this machine)'}", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "reproduce.calibrate", "--spec", str(spec_path), "--profile", profile,
               "--root", str(root / name), "--seeds", ",".join(map(str, seeds)), "--jobs", str(jobs)]
        if data_dir:
            cmd += ["--data-dir", data_dir]
        env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                                 "MKL_ENABLE_INSTRUCTIONS")}
        if subprocess.run(cmd, env={**env, **KERNELS[name]}).returncode:
            raise RuntimeError(f"calibration runs under kernels {name!r} failed (see above); nothing was written")
        print(f"calibrate [{profile}]: kernels {name} done in {time.time() - started:.0f} s", file=sys.stderr)
    suite = load_suite(spec_path)
    rows = []
    for name in kernels:
        for exp_id in suite.ids():
            spec = suite.resolve(exp_id, profile)
            for seed in seeds:
                if status(root / name, spec, seed) != "current":
                    raise RuntimeError(f"{exp_id} seed {seed} under kernels {name}: no result; nothing was written")
                got = load_result(root / name, spec, seed)
                record = load_record(root / name, spec, seed)
                rows.append({"kernels": name, "experiment": exp_id, "seed": seed, "spec_hash": spec.hash,
                             "commit": short_commit(record), **{m: float(got[m]) for m in METRICS}})
    return pd.DataFrame(rows)


def derive(frame: pd.DataFrame, suite: Suite, profile: str) -> dict[str, dict[str, dict]]:
    """experiment -> metric -> {value, tol, kind, basis} from the measured grid."""
    out: dict[str, dict[str, dict]] = {}
    kernels = "/".join(frame["kernels"].unique())
    seeds = sorted(int(s) for s in frame["seed"].unique())
    for exp_id, g in frame.groupby("experiment", sort=False):
        spec = suite.resolve(exp_id, profile)
        n_test = spec.test_subset or DATASETS[spec.dataset].test_size
        out[exp_id] = {}
        for m in METRICS:
            ranges = g.groupby("seed")[m].agg(lambda v: v.max() - v.min())
            spread = float(ranges.max())
            own = g[g["seed"].isin(spec.seeds)].groupby("kernels")[m].mean()
            value = float(own.max() + own.min()) / 2
            floor = 100 * ERROR_FLOOR_IMAGES / n_test if m == "error_pct" else REL_FLOOR * abs(value)
            useful = USEFUL[m] if m == "error_pct" else USEFUL[m] * abs(value)
            where = f"seeds {', '.join(map(str, seeds))} x kernels {kernels}"
            if spread <= useful:
                tol = max(floor, spread)
                rule = "floor" if floor >= spread else "spread"
                basis = (f"regression: tol = max(floor {floor:.4g}, kernel spread {spread:.4g}) = {rule}; "
                         f"spread = largest range over kernels at one seed, {where}")
                out[exp_id][m] = {"value": round(value, 4), "tol": round(float(tol), 4), "kind": "regression",
                                  "basis": basis}
            else:
                lo, hi = float(g[m].min()), float(g[m].max())
                lo, hi = lo - (hi - lo), hi + (hi - lo)
                basis = (f"sanity only: kernel spread {spread:.4g} exceeds {useful:.4g} (chaotic under last-bit "
                         f"changes: a pruning threshold flips); band = measured range widened by itself, {where}")
                out[exp_id][m] = {"value": round((lo + hi) / 2, 4), "tol": round((hi - lo) / 2, 4),
                                  "kind": "sanity", "basis": basis}
    return out


def write_expected(toml_path: Path, profile: str, derived: dict[str, dict[str, dict]], source: str) -> None:
    """Replace each experiment's [experiment.expected.<profile>] section; the file is replaced atomically."""
    lines = toml_path.read_text().split("\n")
    for exp_id, metrics in derived.items():
        section = [f"[experiment.expected.{profile}]"] + [
            f'{m} = {{ value = {d["value"]!r}, tol = {d["tol"]!r}, kind = "{d["kind"]}", '
            f'basis = "{d["basis"]}", source = "{source}" }}' for m, d in metrics.items()]
        lines = replace_section(lines, exp_id, f"[experiment.expected.{profile}]", section)
    with atomic_path(toml_path) as tmp:
        tmp.write_text("\n".join(lines))
        load_suite(tmp)  # still valid; else the file stays as it was


def calibrate(spec_path: Path, profile: str, root: Path, results_dir: Path, kernels: list[str], seeds: list[int],
              jobs: int, data_dir: str | None) -> pd.DataFrame:
    """Measure, derive, and write the expected values and the calibration table; the derived table."""
    unknown = sorted(set(kernels) - set(KERNELS))
    if unknown:
        raise ValueError(f"--kernels {','.join(unknown)}: unknown; valid: {', '.join(KERNELS)}")
    frame = measure(spec_path, profile, root, kernels, seeds, jobs, data_dir)
    suite = load_suite(spec_path)
    derived = derive(frame, suite, profile)
    source = (f"calibrated {time.strftime('%Y-%m-%d')}: {len(frame)} runs at commit(s) "
              f"{', '.join(sorted(frame['commit'].unique()))}, torch {torch.__version__}, 1 thread per run "
              f"(results/check/{profile}_calibration.csv)")
    write_expected(spec_path, profile, derived, source)
    write_atomic(calibration_file(results_dir, profile), frame.to_csv(index=False))
    return pd.DataFrame([{"experiment": e, "metric": m, **{k: d[k] for k in ("value", "tol", "kind")}}
                         for e, ms in derived.items() for m, d in ms.items()])


def _worker(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.calibrate",
                                description="one kernel setting's runs of `python -m reproduce calibrate`")
    p.add_argument("--spec", type=Path, required=True)
    p.add_argument("--profile", required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--seeds", required=True)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    a = p.parse_args(argv)
    return 1 if run_grid(a.spec, a.profile, a.root, [int(s) for s in a.seeds.split(",")], a.jobs, a.data_dir) else 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
