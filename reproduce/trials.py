"""Recipe trials: variants of one experiment, recorded and compared epoch by epoch.

A `[[trial]]` of experiments.toml names an experiment, the profile it starts from (`base`) and the
keys it changes (`set`); `python -m reproduce trial NAME` runs it (resumable, `--stop-at`) into
results/<experiment>/trial.<name>/seed<k>/, and `python -m reproduce trials EXPERIMENT` compares
every trial of that experiment: per epoch the validation error of the unpruned posterior mean, the
KL per example and the share of weights past the method's reference threshold (from the finished
run's history, or from the resume point of one still in progress), and for finished trials the
table metrics under the experiment's own threshold rule. Trials never enter Table 1.

`python -m reproduce adopt EXPERIMENT FROM TO` records a finished run under another profile or trial
whose spec is the same (equal spec hash: the same training, seed for seed), instead of training it
again: a trial promoted to the `paper` recipe, or a superseded `paper` run kept as a trial.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from reproduce.figures import save_figures  # noqa: E402
from reproduce.results import (checkpoint_path, current_seeds, load_record, load_result, result_dir,  # noqa: E402
                               resume_point, run_lock, staged_dir, staging_dir, status, work_dir, write_atomic)
from reproduce.run import metrics_line, parse_deadline, run_one  # noqa: E402
from reproduce.spec import RunSpec, SpecError, Suite, train_command  # noqa: E402

CURVES = (("val_error_pct", "validation error % (unpruned)"), ("penalty_per_n", "KL per example (nats)"),
          ("prunable_pct", "% weights past the reference threshold"))
AT_EPOCHS = (5, 10, 25, 50, 100, 200)


def trial_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce trial NAME...`: run the trials (every name checked first), then compare each
    of their experiments' trials."""
    deadline = parse_deadline(args.stop_at) if args.stop_at else None
    specs = [suite.resolve_trial(n) for n in args.names]  # all names checked before training
    for name, spec in zip(args.names, specs):
        for seed in spec.seeds:
            m = run_one(suite, spec, seed, args.results_dir, device=args.device, data_dir=args.data_dir,
                        progress=not args.no_progress, deadline=deadline, epoch_lines=args.no_progress)
            print(f"trial {name} seed {seed}: {metrics_line(m)}")
    for exp_id in dict.fromkeys(s.id for s in specs):
        print(render(suite, exp_id, args.results_dir, args.figures_dir))
    return 0


def trials_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce trials [EXPERIMENT]`: list the trials, or compare an experiment's."""
    if args.experiment is None:
        for name, t in suite.trials.items():
            print(f"{name:<28} {t['experiment']:<24} {t.get('description', '')}")
    else:
        print(render(suite, args.experiment, args.results_dir, args.figures_dir))
    return 0


def run_history(spec: RunSpec, root: Path, seed: int) -> tuple[pd.DataFrame | None, str]:
    """(history, state) of one run of `spec`: its history.csv when current, else the epochs of its resume
    point. A result or resume point recorded under another spec hash (the trial's keys, or the profile it
    starts from, changed since) is not this trial's run: its state says so and no curve is drawn."""
    recorded = status(root, spec, seed)
    if recorded == "current":
        return pd.read_csv(result_dir(root, spec.id, spec.profile, seed) / "history.csv"), "finished"
    state = resume_point(root, spec, seed)
    if state is not None:
        return pd.DataFrame(state["history"]), f"in progress ({state['epoch']}/{spec.train.epochs} epochs)"
    if recorded == "stale" or checkpoint_path(root, spec.id, spec.profile, seed).exists():
        return None, "stale (recorded under another spec)"
    return None, "not started"


def compare(suite: Suite, experiment: str, root: Path, seed: int = 0) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per trial of `experiment`: what it changes, its curves at AT_EPOCHS, final metrics. First,
    as the reference the trials change, a row for the experiment's own run in each profile a trial starts
    from (named by its profile in brackets, e.g. `[paper]`), where that run is finished or in progress."""
    runs = _runs(suite, experiment, seed)
    rows, histories = [], {}
    for name, spec, changes in runs:
        if seed not in spec.seeds:  # nothing of seed `seed` to show; its seeds' means still are
            hist, state = None, f"seed {seed} not among its seeds ({', '.join(map(str, spec.seeds))})"
        else:
            hist, state = run_history(spec, root, seed)
        if name.startswith("[") and hist is None:
            continue  # a reference run not begun: nothing to compare against
        row = {"trial": name, "changes": changes, "state": state}
        if hist is not None:
            histories[name] = hist
            for e in AT_EPOCHS:
                if e <= len(hist):
                    h = hist.iloc[e - 1]
                    row[f"val err @{e}"] = h.get("val_error_pct")
                    row[f"prunable % @{e}"] = h.get("prunable_pct")
        if state == "finished":
            m = load_result(root, spec, seed)
            row.update({"error %": m["error_pct"], r"\|w≠0\|/\|w\| %": m["nonzero_pct"], "architecture": m["architecture"],
                        "CR fast": m["cr_fast"]})
        if len(spec.seeds) > 1:  # a row of several seeds: the means over those finished, beside seed `seed`'s
            done = [load_result(root, spec, s) for s in spec.seeds if status(root, spec, s) == "current"]
            row["seeds done"] = f"{len(done)}/{len(spec.seeds)}"
            if done:
                row["mean error %"] = sum(d["error_pct"] for d in done) / len(done)
                row["mean CR fast"] = sum(d["cr_fast"] for d in done) / len(done)
        rows.append(row)
    return pd.DataFrame(rows), histories


def _runs(suite: Suite, experiment: str, seed: int | None = None) -> list[tuple[str, RunSpec, str]]:
    """(row name, spec, what it changes) for the reference run of each profile a trial of `experiment` starts
    from (where it has seed `seed`, unless None), then every trial; a ValueError if `experiment` has no trials."""
    names = [n for n, t in suite.trials.items() if t["experiment"] == experiment]
    if not names:
        raise ValueError(f"no [[trial]] of {experiment!r} in the experiments file; trials exist for: "
                         f"{', '.join(sorted({t['experiment'] for t in suite.trials.values()})) or '(none)'}")
    runs: list[tuple[str, RunSpec, str]] = []
    for base in dict.fromkeys(suite.trials[n].get("base", "paper") for n in names):
        spec = suite.resolve(experiment, base)
        if seed is None or seed in spec.seeds:
            runs.append((f"[{base}]", spec, "(none: the reference)"))
    runs += [(n, suite.resolve_trial(n), ", ".join(f"{k}={v if v != '' else '(none)'}"
                                                                  for k, v in suite.trials[n].get("set", {}).items()))
             for n in names]
    return runs


def sweep_means(suite: Suite, experiment: str, root: Path) -> pd.DataFrame:
    """Per run (reference and trials, as `compare`) and threshold setting of `reproduce sweep`: test error,
    kept weights and CR fast averaged over the seeds whose current results hold a sweep.csv (columns run,
    setting, seeds = how many of the run's seeds have that setting, error_pct, nonzero_pct, cr_fast): the
    trade-off of each run's posteriors, to be read off at equal error. Empty where no run was swept."""
    parts = []
    for name, spec, _ in _runs(suite, experiment):
        files = [result_dir(root, spec.id, spec.profile, s) / "sweep.csv" for s in current_seeds(root, spec)]
        frames = [pd.read_csv(f, dtype={"setting": str}) for f in files if f.exists()]
        if frames:
            grouped = pd.concat(frames).groupby("setting", sort=False)
            mean = grouped[["error_pct", "nonzero_pct", "cr_fast"]].mean()
            mean.insert(0, "seeds", [f"{n} of {len(spec.seeds)}" for n in grouped.size()])
            parts.append(mean.reset_index().assign(run=name))
    if not parts:
        return pd.DataFrame()
    return pd.concat(parts)[["run", "setting", "seeds", "error_pct", "nonzero_pct", "cr_fast"]]


def render(suite: Suite, experiment: str, root: Path, figures: Path, seed: int = 0) -> str:
    """figures/trials_<experiment>.{md,png,pdf}; returns the markdown."""
    frame, histories = compare(suite, experiment, root, seed)
    text = (f"# Recipe trials of {experiment} (seed {seed})\n\n"
            + frame.to_markdown(index=False, floatfmt=".2f").replace(" nan ", " —   ") + "\n")
    swept = sweep_means(suite, experiment, root)
    if swept.empty:
        (figures / f"trials_{experiment}_sweeps.csv").unlink(missing_ok=True)
    else:
        write_atomic(figures / f"trials_{experiment}_sweeps.csv", swept.to_csv(index=False, float_format="%.6g"))
        seeds = swept.groupby("run", sort=False)["seeds"].agg(lambda v: " or ".join(dict.fromkeys(v)))
        cells = swept.assign(run=swept["run"] + ", " + swept["run"].map(seeds) + " seeds",
                             cell=[f"{e:.2f} / {c:.1f}" for e, c in zip(swept["error_pct"], swept["cr_fast"])])
        table = cells.pivot(index="run", columns="setting", values="cell")
        table = table.loc[list(dict.fromkeys(cells["run"])), list(dict.fromkeys(cells["setting"]))]
        text += ("\n## Threshold sweeps: test error % / CR fast, mean over the seeds swept\n\n"
                 "Each run's trade-off, to compare the runs at equal error. Columns: the validation margin in "
                 "percentage points (or the setting `python -m reproduce sweep` names); "
                 "`python -m reproduce sweep EXPERIMENT --profile trial.NAME` sweeps a trial. "
                 f"As CSV, with kept weights: [trials_{experiment}_sweeps.csv](trials_{experiment}_sweeps.csv).\n\n"
                 + table.rename_axis(index=None, columns=None).fillna("").to_markdown() + "\n")
    write_atomic(figures / f"trials_{experiment}.md", text)
    if histories:
        fig, axes = plt.subplots(1, len(CURVES), figsize=(12, 3.4))
        trials = [n for n in histories if not n.startswith("[")]
        for name, h in histories.items():
            label = name + "".join(f" (under {o})" for o in trials if o != name and _coincide(h, histories[o]))
            # the reference run black and dashed on top, so a trial adopted as it stays visible beneath
            style = (dict(color="k", ls="--", lw=1.0, zorder=3) if name.startswith("[")
                     else dict(color=f"C{trials.index(name) % 10}", lw=1.2))
            for ax, (col, title) in zip(axes, CURVES):
                if col in h.columns and h[col].notna().any():
                    ax.plot(h["epoch"], h[col], label=label, **style)
                ax.set_title(title, fontsize=8)
                ax.set_xlabel("epoch", fontsize=8)
                ax.grid(alpha=0.3)
                ax.tick_params(which="both", labelsize=7)
        axes[1].set_yscale("log")
        entries: dict[str, object] = {}  # every run once, whichever panels it has (older runs lack some curves)
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                entries.setdefault(label, handle)
        if entries:  # beside the panels, clear of the curves
            axes[-1].legend(list(entries.values()), list(entries), fontsize=7, loc="center left",
                            bbox_to_anchor=(1.02, 0.5))
        fig.suptitle(f"recipe trials: {experiment}, seed {seed}", fontsize=9)
        fig.tight_layout()
        save_figures(fig, figures, f"trials_{experiment}")
    else:  # no run of these trials is current any more: no figure of runs that are not theirs
        for suffix in (".png", ".pdf"):
            (figures / f"trials_{experiment}{suffix}").unlink(missing_ok=True)
    return text


def _coincide(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether run `a`'s curves lie under run `b`'s (b longer, the same values on a's epochs), as a trial's
    do under a longer trial of the same training: its line is hidden, so its label says where."""
    n = len(a)
    if len(b) <= n:
        return False
    cols = [c for c, _ in CURVES if c in a.columns and c in b.columns]
    return bool(cols) and a[cols].reset_index(drop=True).equals(b[cols].iloc[:n].reset_index(drop=True))


def adopt_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce adopt EXPERIMENT FROM TO`: copy the current results of profile (or trial.NAME)
    FROM to TO, for the seeds both list, when both resolve to the same spec hash; spec.json then names TO
    and records `adopted_from`. Refused, writing nothing, when the specs differ."""
    root = args.results_dir
    src, dst = suite.run_spec(args.experiment, args.source), suite.run_spec(args.experiment, args.dest)
    if src.hash != dst.hash:
        a, b = src.hashed_content(), dst.hashed_content()
        a.pop("train"), b.pop("train")
        a, b = {**a, **dataclasses.asdict(src.train)}, {**b, **dataclasses.asdict(dst.train)}  # defaults shown too
        diff = ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
        raise SpecError(f"{args.experiment}: {args.source} and {args.dest} are different specs ({diff}); a run of one "
                        f"is not a run of the other: train it with {train_command(args.experiment, args.dest)}")
    seeds = [s for s in dst.seeds if s in src.seeds and status(root, src, s) == "current"]
    for s in dst.seeds:
        if s not in seeds:
            why = "not among its seeds" if s not in src.seeds else run_history(src, root, s)[1]
            print(f"{dst.id} {dst.profile} seed {s}: not adopted, {args.source} seed {s} is {why}"
                  + ("" if s not in src.seeds else f"; finish it with {train_command(args.experiment, args.source)}"))
    if not seeds:
        raise ValueError(f"{args.experiment} has no current result in {args.source} for the seeds of {args.dest} "
                         f"({', '.join(map(str, dst.seeds))}) to adopt: see python -m reproduce trials {args.experiment}")
    for seed in seeds:
        out = result_dir(root, dst.id, dst.profile, seed)
        if status(root, dst, seed) == "current":
            print(f"{dst.id} {dst.profile} seed {seed}: already current, left as it is")
            continue
        with run_lock(out, wait=False) as held:
            if not held:
                raise ValueError(f"{dst.id} {dst.profile} seed {seed} is being trained by another process; "
                                 f"adopt when it has stopped")
            record = {**load_record(root, src, seed), "profile": dst.profile,
                      "adopted_from": {"profile": src.profile, "on": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
            with staged_dir(staging_dir(root, dst.id, dst.profile, seed, "adopt"), out) as tmp:
                shutil.copytree(result_dir(root, src.id, src.profile, seed), tmp, dirs_exist_ok=True)
                write_atomic(tmp / "spec.json", json.dumps(record, indent=2) + "\n")
            shutil.rmtree(work_dir(root, dst.id, dst.profile, seed), ignore_errors=True)  # its resume point, if any
        print(f"{dst.id} {dst.profile} seed {seed}: adopted from {src.profile} (spec {dst.hash})")
    return 0
