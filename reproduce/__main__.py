"""Command line: python -m reproduce {list, run, trial, trials, adopt, table1, table2, check, calibrate, sweep, recode,
migrate, figures, bench-train, report}.

Verbs and switches only; hyperparameters and expected values live in experiments.toml.
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import torch

from bayescomp.data import DataError
from bayescomp.train import TrainingDiverged, TrainingPaused
from reproduce.bench_train import bench_train_command
from reproduce.calibrate import KERNELS, calibrate_command
from reproduce.check import check_command
from reproduce.executors import EXECUTORS, ExecutorUnavailable
from reproduce.figures import figures_command
from reproduce.migrate import migrate_command
from reproduce.recode import recode_command
from reproduce.report import report_command
from reproduce.results import list_command
from reproduce.run import run_command
from reproduce.spec import DEFAULT_TOML, SpecError, Suite, load_suite
from reproduce.sweep import sweep_command
from reproduce.table2 import table2_command
from reproduce.tables import table1_command
from reproduce.trials import adopt_command, trial_command, trials_command


VERBS: dict[str, Callable[[argparse.Namespace, Suite], int]] = {  # what each verb does, in its own module
    "list": list_command, "run": run_command, "trial": trial_command, "trials": trials_command,
    "adopt": adopt_command,
    "table1": table1_command, "check": check_command, "table2": table2_command, "sweep": sweep_command,
    "calibrate": calibrate_command, "recode": recode_command, "migrate": migrate_command,
    "figures": figures_command, "bench-train": bench_train_command, "report": report_command}
EPOCH_LINES = "no progress bar; instead a line per finished epoch on stderr (for the log of a run in the background)"


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
    p_trial.add_argument("--no-progress", action="store_true", help=EPOCH_LINES)
    p_trials = sub.add_parser("trials", parents=[common],
                              help="compare the recorded trials of an experiment, epoch by epoch: figures/trials_<id>.{md,png}")
    p_trials.add_argument("experiment", nargs="?", default=None, help="experiment id (default: list the trials)")
    p_adopt = sub.add_parser("adopt", parents=[common],
                             help="record the finished runs of one profile or trial under another of the same spec (same hash), without training")
    p_adopt.add_argument("experiment", help="experiment id")
    p_adopt.add_argument("source", metavar="FROM", help="a profile, or trial.NAME")
    p_adopt.add_argument("dest", metavar="TO", help="a profile, or trial.NAME")
    for p in (p_run, p_trial):  # the verbs that can stop cleanly and resume later, on this or another machine
        p.add_argument("--stop-at", default=None, metavar="WHEN",
                       help="stop at the last epoch boundary before WHEN (+90m, +2h, +3600s, HH:MM or an ISO "
                            "time; an HH:MM passed less than 12 h ago is past: one epoch, then stop), leaving the resume point in results/.work/ (commit it); rerun to continue")
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
        p.add_argument("--no-progress", action="store_true", help=EPOCH_LINES if p is p_run else "no progress bars")
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
    p_sw.add_argument("--profile", default="paper", help=profile + "; trial.NAME: the runs of recipe trial NAME")
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
    sub.add_parser("report", parents=[common],
                   help="REPRODUCING.md's verdicts, contents and quoted numbers rewritten from results/ (never trains)")
    p_fig = sub.add_parser("figures", parents=[common], help="plots from recorded results (never trains)")
    p_fig.add_argument("--profile", default="paper", help=profile)
    p_bt = sub.add_parser("bench-train", parents=[common], help="epoch time of methods vs dense, side by side")
    p_bt.add_argument("--model", default="lenet300")
    p_bt.add_argument("--methods", default="dense,bc_gnj,bc_ghs", help="comma-separated; the first is the reference")
    p_bt.add_argument("--repeats", type=int, default=3, help="timed epochs per method, after a warm-up (default 3)")
    p_bt.add_argument("--train-subset", type=int, default=None, metavar="N",
                      help="images per timed epoch (default: the whole training set)")
    p_bt.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p_bt.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    try:
        suite = load_suite(args.spec)
        trial = args.verb == "sweep" and args.profile.startswith("trial.")  # a trial's runs: checked by Suite.run_spec
        if getattr(args, "profile", None) is not None and args.profile not in suite.profiles and not trial:
            raise SpecError(f"--profile {args.profile}: no such profile in {args.spec}; valid: "
                            + "; ".join(f"{n} = {p.get('description', 'no description')}"
                                        for n, p in suite.profiles.items()))
        _check_args(args, suite)
        return VERBS[args.verb](args, suite)
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
        spec = suite.run_spec(args.id, args.profile)
        wrong = [s for s in args.seed if s not in spec.seeds]
        if wrong:
            raise ValueError(f"--seed {wrong[0]}: {spec.id} has no such seed in profile {spec.profile!r} "
                             f"(its seeds: {', '.join(map(str, spec.seeds))}); pass one of those, or add it to "
                             + ("the trial's `set = { seeds = [...] }`" if spec.profile.startswith("trial.")
                                else "the experiment's seeds") + f" in {args.spec}")


if __name__ == "__main__":
    sys.exit(main())
