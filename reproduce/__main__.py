"""Command line: python -m reproduce {list, run, table1, table2, check, sweep, figures, bench-train}.

Verbs and switches only; hyperparameters and expected values live in experiments.toml.
"""
from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import pandas as pd
import torch

from bayescomp.data import DataError, load_dataset
from bayescomp.train import TrainingDiverged, TrainingPaused
from reproduce.bench_inference import op_profile
from reproduce.bench_train import step_breakdown, train_cost
from reproduce.calibrate import KERNELS, calibrate
from reproduce.check import deviations, format_deviations
from reproduce.executors import ExecutorUnavailable, LocalExecutor, plan_runs, report_failures
from reproduce.ray_executor import RayExecutor
from reproduce.figures import all_figures
from reproduce.migrate import migrate
from reproduce.recode import format_rows, recode
from reproduce.registry import DATASETS
from reproduce.results import bench_dir, result_dir, status, write_atomic
from reproduce.run import parse_deadline, resolve_device, run_one
from reproduce.spec import DEFAULT_TOML, SpecError, Suite, load_suite
from reproduce.sweep import setting_help, sweep
from reproduce import table2, trials
from reproduce.tables import embed, render_sweeps, render_table1, render_wall_times


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def main(argv: list[str] | None = None) -> int:
    profile = _profile_help(argv) + " (default: %(default)s)"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--spec", type=Path, default=DEFAULT_TOML, help="experiments file (default: the packaged one)")
    common.add_argument("--results-dir", type=Path, default=Path("results"), help="default: ./results")
    common.add_argument("--figures-dir", type=Path, default=Path("figures"), help="default: ./figures")
    parser = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    p_list = sub.add_parser("list", parents=[common], help="experiments and whether each has current results")
    p_list.add_argument("--profile", default=None, help="only this profile: " + _profile_help(argv) + " (default: all)")
    p_run = sub.add_parser("run", parents=[common], help="train one experiment (all its seeds, or --seed) and record results")
    p_run.add_argument("id", help="experiment id, <model>.<method> (see `list`)")
    p_run.add_argument("--profile", default="paper", help=profile)
    p_run.add_argument("--seed", type=int, action="append", help="run only this seed (repeatable)")
    p_run.add_argument("--force", action="store_true", help="rerun even if current results exist")
    p_trial = sub.add_parser("trial", parents=[common],
                             help="run recipe trials ([[trial]] of experiments.toml) and compare them with their experiment's other trials")
    p_trial.add_argument("names", nargs="+", metavar="NAME", help="trial names (see `trials`)")
    p_trial.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p_trial.add_argument("--data-dir", default=None)
    p_trial.add_argument("--no-progress", action="store_true")
    p_trials = sub.add_parser("trials", parents=[common],
                              help="compare the recorded trials of an experiment, epoch by epoch: figures/trials_<id>.{md,png}")
    p_trials.add_argument("experiment", nargs="?", default=None, help="experiment id (default: list the trials)")
    for p in (p_run, p_trial):  # the verbs that can stop cleanly and resume later, on this or another machine
        p.add_argument("--stop-at", default=None, metavar="WHEN",
                       help="stop at the last epoch boundary before WHEN (+90m, +2h, +3600s, HH:MM or an ISO "
                            "time), leaving the resume point in results/.work/ (commit it); rerun to continue")
    p_t1 = sub.add_parser("table1", parents=[common],
                          help="train the missing rows of Table 1, then render figures/table1.{md,csv,tex}")
    p_t1.add_argument("--profile", default="paper", help=profile)
    p_t1.add_argument("--dry-run", action="store_true", help="print what would be trained and its estimated time")
    p_t1.add_argument("--no-train", action="store_true", help="only render what is recorded")
    p_ck = sub.add_parser("check", parents=[common],
                          help="retrain a profile from scratch and compare with the expected values in experiments.toml")
    p_ck.add_argument("--profile", default="quick", help=profile)
    p_ck.add_argument("--reuse", action="store_true",
                      help="use (and complete) the runs in --results-dir instead of a fresh folder; they resume "
                           "after an interrupt, where a fresh check starts from scratch")
    p_ck.add_argument("--keep", action="store_true",
                      help="keep the fresh folder of runs (default: removed when the check ends, whatever the "
                           "outcome) and print where it is")
    for p in (p_run, p_t1, p_ck):  # the verbs that train
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
        p.add_argument("--data-dir", default=None, help="folder with MNIST/raw and CIFAR10/ (or set BAYESCOMP_DATA)")
        p.add_argument("--no-progress", action="store_true")
    for p in (p_t1, p_ck):  # the verbs that run a plan
        p.add_argument("--jobs", type=int, default=1, help="independent runs side by side (default 1)")
        p.add_argument("--executor", choices=sorted(EXECUTORS), default="local",
                       help="local (default): this machine, --jobs N processes; ray: a Ray cluster (pip install '.[ray]')")
        p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p_t2 = sub.add_parser("table2", parents=[common],
                          help="time the recorded models (dense, structured, sparse CSR) and training; figures/table2.md")
    p_t2.add_argument("--profile", default="paper", help=profile)
    p_t2.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p_t2.add_argument("--threads", default="1,2", help="CPU thread counts to time (default 1,2)")
    p_t2.add_argument("--no-measure", action="store_true", help="only render the recorded results/bench/")
    p_t2.add_argument("--op-profile", metavar="MODEL", default=None,
                      help="instead: ms per operator of MODEL's recorded models at batch 1024, 1 thread "
                           "(also written to results/bench/cpu/op_profile_MODEL.csv)")
    p_t2.add_argument("--data-dir", default=None)
    p_t2.add_argument("--no-progress", action="store_true")
    p_sw = sub.add_parser("sweep", parents=[common], help="accuracy vs compression of a recorded Bayesian run")
    p_sw.add_argument("id")
    p_sw.add_argument("--profile", default="paper", help=profile)
    p_sw.add_argument("--seed", type=int, action="append")
    p_sw.add_argument("--data-dir", default=None)
    p_sw.add_argument("--no-progress", action="store_true")
    p_cal = sub.add_parser("calibrate", parents=[common],
                           help="write the check's expected values and tolerances from runs over several seeds "
                                "and CPU-kernel settings (after a deliberate change)")
    p_cal.add_argument("--profile", default="quick", help=profile)
    p_cal.add_argument("--seeds", default="0,1,2", help="seeds to measure the spread over (default 0,1,2)")
    p_cal.add_argument("--kernels", default=",".join(KERNELS),
                       help=f"CPU-kernel settings, each run in its own process (default {','.join(KERNELS)})")
    p_cal.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each (default 2)")
    p_cal.add_argument("--data-dir", default=None)
    p_cal.add_argument("--work-dir", type=Path, default=None,
                       help="keep the runs here (rerunning completes them) instead of a temporary folder")
    p_rc = sub.add_parser("recode", parents=[common],
                          help="rewrite every recorded model.bcw from its model.pt and update CR max (no retraining)")
    p_rc.add_argument("--profile", default=None, help="only this profile: " + _profile_help(argv) + " (default: all)")
    sub.add_parser("migrate", parents=[common],
                   help="bring recorded results up to a changed spec hash where nothing they were built from changed")
    p_fig = sub.add_parser("figures", parents=[common], help="plots from recorded results (never trains)")
    p_fig.add_argument("--profile", default="paper", help=profile)
    p_bt = sub.add_parser("bench-train", parents=[common], help="epoch time of methods vs dense, side by side")
    p_bt.add_argument("--model", default="lenet300")
    p_bt.add_argument("--methods", default="dense,bc_gnj,bc_ghs", help="comma-separated; the first is the reference")
    p_bt.add_argument("--repeats", type=int, default=3)
    p_bt.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p_bt.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    try:
        suite = load_suite(args.spec)
        if getattr(args, "profile", None) is not None and args.profile not in suite.profiles:
            raise SpecError(f"--profile {args.profile}: no such profile in {args.spec}; valid: "
                            + "; ".join(f"{n} = {p.get('description', 'no description')}"
                                        for n, p in suite.profiles.items()))
        _check_args(args, suite)
        if args.verb == "list":
            profiles = [args.profile] if args.profile else list(suite.profiles)
            for exp_id in suite.ids():
                for prof in profiles:
                    spec = suite.resolve(exp_id, prof)
                    states = ", ".join(f"seed{s}: {status(args.results_dir, spec, s)}" for s in spec.seeds)
                    print(f"{exp_id:<28} {prof:<6} {states}")
        elif args.verb == "run":
            spec = suite.resolve(args.id, args.profile)
            seeds = args.seed or list(spec.seeds)
            for seed in seeds:
                m = run_one(suite, spec, seed, args.results_dir, device=args.device, data_dir=args.data_dir,
                            progress=not args.no_progress, force=args.force,
                            deadline=parse_deadline(args.stop_at) if args.stop_at else None)
                print(f"{spec.id} [{spec.profile}] seed {seed}: error {m['error_pct']:.2f} %, "
                      f"|w≠0|/|w| {m['nonzero_pct']:.2f} %, architecture {m['architecture']}, "
                      f"CR fast {m['cr_fast']:.1f}")
        elif args.verb == "trial":
            deadline = parse_deadline(args.stop_at) if args.stop_at else None
            specs = [suite.resolve_trial(n) for n in args.names]  # all names checked before training
            for name, spec in zip(args.names, specs):
                for seed in spec.seeds:
                    m = run_one(suite, spec, seed, args.results_dir, device=args.device, data_dir=args.data_dir,
                                progress=not args.no_progress, deadline=deadline)
                    print(f"trial {name} seed {seed}: error {m['error_pct']:.2f} %, |w≠0|/|w| {m['nonzero_pct']:.2f} %, "
                          f"architecture {m['architecture']}, CR fast {m['cr_fast']:.1f}")
            for exp_id in dict.fromkeys(s.id for s in specs):
                print(trials.render(suite, exp_id, args.results_dir, args.figures_dir))
        elif args.verb == "trials":
            if args.experiment is None:
                for name, t in suite.trials.items():
                    print(f"{name:<28} {t['experiment']:<24} {t.get('description', '')}")
            else:
                print(trials.render(suite, args.experiment, args.results_dir, args.figures_dir))
        elif args.verb == "table1":
            gpu = resolve_device(args.device).type == "cuda"
            plan = plan_runs(suite, args.profile, args.results_dir, suite.ids("table1"), gpu=gpu)
            if args.dry_run or (plan.tasks and not args.no_train):
                print(plan.describe(), file=sys.stderr)
            if args.dry_run:
                return 0
            if plan.tasks and not args.no_train:
                outcomes = _executor(args).run(plan, args.spec, args.results_dir, device=args.device,
                                               data_dir=args.data_dir, progress=not args.no_progress)
                if report_failures(outcomes):
                    return 1
            table = render_table1(suite, args.profile, args.results_dir, args.figures_dir, plan.needs_gpu)
            print(table, end="")
            sweeps = render_sweeps(suite, args.profile, args.results_dir, args.figures_dir)
            doc = args.figures_dir.parent / "REPRODUCING.md"  # the repository's, beside figures/
            if args.profile == "paper" and embed(doc, "table1", table.split("\n", 2)[2]):
                embed(doc, "sweeps", sweeps)
                embed(doc, "walltimes", render_wall_times(suite, args.profile, args.results_dir))
                print("(updated the generated blocks of REPRODUCING.md)", file=sys.stderr)
        elif args.verb == "table2" and args.op_profile:
            models, _ = table2.recorded_models(suite, args.profile, args.results_dir)
            if args.op_profile not in models:
                raise ValueError(f"--op-profile {args.op_profile}: no recorded models; with models: {', '.join(models)}")
            shape = DATASETS[suite.resolve(f"{args.op_profile}.dense", args.profile).dataset]
            frame = op_profile(models[args.op_profile], shape)
            out = bench_dir(args.results_dir, "cpu") / f"op_profile_{args.op_profile}.csv"
            write_atomic(out, frame.to_csv(index_label="operator"))
            print(f"self CPU ms per forward pass, batch 1024, 1 thread ({args.op_profile}, inference form; {out}):")
            print(frame.to_string(float_format=lambda v: f"{v:.2f}"))
        elif args.verb == "table2":
            if not args.no_measure:
                resolve_device(args.device)
                folder = table2.measure(suite, args.profile, args.results_dir, args.device, args.data_dir,
                                        tuple(int(t) for t in args.threads.split(",")), progress=not args.no_progress)
                print(table2.summary(table2.measured_rows(args.results_dir, folder.name)), file=sys.stderr)
            text = table2.render(args.results_dir, args.figures_dir)
            print(text, end="")
            if embed(args.figures_dir.parent / "REPRODUCING.md", "table2", text.split("\n", 2)[2]):
                print("(updated the table2 block of REPRODUCING.md)", file=sys.stderr)
        elif args.verb == "check":
            return _check(args, suite)
        elif args.verb == "sweep":
            spec = suite.resolve(args.id, args.profile)
            data = load_dataset(spec.dataset, args.data_dir, val_size=spec.val_size)
            for seed in args.seed or list(spec.seeds):
                if status(args.results_dir, spec, seed) != "current":
                    print(f"{spec.id} seed {seed}: no current results; skipped", file=sys.stderr)
                    continue
                out = result_dir(args.results_dir, spec.id, spec.profile, seed) / "sweep.csv"
                existed = out.exists()
                frame = sweep(spec, seed, args.results_dir, data, progress=not args.no_progress)
                print(f"{spec.id} [{spec.profile}] seed {seed} ({setting_help(spec)}):")
                print(frame.drop(columns=["thresholds"]).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
                print(f"wrote {out}{' (replacing the previous one)' if existed else ''}", file=sys.stderr)
        elif args.verb == "calibrate":
            with tempfile.TemporaryDirectory(prefix=f"reproduce-calibrate-{args.profile}-") as tmp:
                table = calibrate(args.spec, args.profile, args.work_dir or Path(tmp), args.results_dir,
                                  args.kernels.split(","), [int(s) for s in args.seeds.split(",")], args.jobs,
                                  args.data_dir)
            print(table.to_string(index=False))
            print(f"wrote expected.{args.profile} of {table['experiment'].nunique()} experiments into {args.spec}; "
                  f"every measurement in {args.results_dir / 'check' / (args.profile + '_calibration.csv')}",
                  file=sys.stderr)
        elif args.verb == "recode":
            rows = recode(args.results_dir, args.profile)
            for r in rows:
                if "skipped" in r:
                    print(f"{r['folder']}: skipped, {r['skipped']}", file=sys.stderr)
            print(format_rows(rows))
        elif args.verb == "migrate":
            for exp_id, prof, seed, outcome in migrate(suite, args.results_dir):
                print(f"{exp_id:<28} {prof:<6} seed{seed}: {outcome}")
        elif args.verb == "figures":
            for path in all_figures(suite, args.profile, args.results_dir, args.figures_dir):
                print(path)
        elif args.verb == "bench-train":
            if args.threads:
                torch.set_num_threads(args.threads)
            spec = suite.resolve(f"{args.model}.dense", "paper")  # its data set
            rows = train_cost(load_dataset(spec.dataset, args.data_dir), args.model, args.methods.split(","),
                              args.repeats)
            print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
            shape = (3, 32, 32) if spec.dataset == "cifar10" else (1, 28, 28)
            steps = step_breakdown(args.model, args.methods.split(","), input_shape=shape)
            print("\nper training step, by phase (random batch of 128):")
            print(pd.DataFrame(steps).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    except (SpecError, DataError, TrainingDiverged, ValueError, FileNotFoundError, ExecutorUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingPaused as e:
        print(f"stopped at the deadline: {e}. Commit that folder to carry it to another machine; rerun the same "
              "command (with a new --stop-at) to continue", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last completed epoch", file=sys.stderr)
        return 130
    return 0


def _profile_help(argv: list[str] | None) -> str:
    """The profiles of the experiments file that --spec names (read before parsing), with their descriptions."""
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--spec", type=Path, default=DEFAULT_TOML)
    try:
        spec = pre.parse_known_args(argv)[0].spec
        profiles = tomllib.loads(spec.read_text()).get("profiles", {})
        listed = "; ".join(f"{name} = {p.get('description', 'no description')}" for name, p in profiles.items())
    except (argparse.ArgumentError, OSError, tomllib.TOMLDecodeError, AttributeError):
        return "a [profiles.<name>] of the experiments file"
    return f"a profile of {spec.name}: {listed}".replace("%", "%%")


DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


def _check_args(args: argparse.Namespace, suite: Suite) -> None:
    """Option values argparse cannot check by itself: a ValueError naming the option and the fix."""
    device = getattr(args, "device", None)
    if device is not None:
        valid = "cpu, cuda, cuda:N" + ("" if args.verb == "table2" else " or auto")
        if not (DEVICE.fullmatch(device) or (device == "auto" and args.verb != "table2")):
            raise ValueError(f"--device {device}: not a device this suite runs on; use {valid}")
        if device.startswith("cuda:") and torch.cuda.is_available() and int(device[5:]) >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    jobs = getattr(args, "jobs", None)
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs {jobs}: must be at least 1 (the number of runs side by side); e.g. --jobs 2")
    if getattr(args, "seed", None):
        spec = suite.resolve(args.id, args.profile)
        wrong = [s for s in args.seed if s not in spec.seeds]
        if wrong:
            raise ValueError(f"--seed {wrong[0]}: {spec.id} has no such seed in profile {spec.profile!r} "
                             f"(its seeds: {', '.join(map(str, spec.seeds))}); pass one of those, or add it to "
                             f"the experiment's seeds in {args.spec}")


def _executor(args: argparse.Namespace, threads: int | None = None) -> LocalExecutor | RayExecutor:
    if args.executor == "ray":
        return RayExecutor(threads=threads, address=args.address)
    return LocalExecutor(jobs=args.jobs, threads=threads)


def _check(args: argparse.Namespace, suite) -> int:
    """Retrain the profile, print the deviation table; 1 on any miss or failed run, 130 when interrupted.

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


def _check_in(args: argparse.Namespace, suite, root: Path, history: tuple[Path, ...]) -> int:
    """The check with its runs under root; time estimates may also come from the runs under `history`."""
    plan = plan_runs(suite, args.profile, root, suite.ids(), gpu=resolve_device(args.device).type == "cuda",
                     history=history)
    where = "" if args.reuse else " (a fresh folder, removed when the check ends; --keep keeps it)"
    print(f"check [{args.profile}]: results in {root}{where}\n{plan.describe()}", file=sys.stderr)
    started = time.time()
    # one thread per run: the numbers then do not depend on --jobs or on the number of cores
    outcomes = _executor(args, threads=1).run(plan, args.spec, root, device=args.device, data_dir=args.data_dir,
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


if __name__ == "__main__":
    sys.exit(main())
