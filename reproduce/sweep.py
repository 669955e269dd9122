"""Accuracy vs compression of a recorded Bayesian run, from its saved posterior (no retraining).

BC: for each validation margin, the method's own threshold rule picks thresholds on the validation
split; the official LeNet-300-100 thresholds (log α < −2.8, −3, −5 kept) are one more point for
BC-GNJ on that model. Sparse VD: the log α threshold ([MAV17] uses 3). Each compressed model is
measured by `metrics.summarize` like any table row. Written to results/<id>/<profile>/seed<k>/sweep.csv
(replacing an earlier one); a recipe trial's runs are swept as profile `trial.NAME`.

The `setting` column names the threshold setting of a row (`setting_help` says it per method):
- BC-GNJ / BC-GHS: the validation margin `val_margin_pct`, in percentage points: each layer's
  threshold removes the most groups such that the validation error stays within that margin of the
  unpruned model's (spent evenly over the layers); `official`: the official example's fixed
  thresholds instead.
- Sparse VD: `log α < t`: the weights whose log α is below t are kept, the others removed.
Which of the two a method gets is read off its class (`swept_field`), not from a list of ids.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from bayescomp.artifact import load_plain
from bayescomp.data import ImageData, load_dataset
from bayescomp.method import Method
from bayescomp.metrics import summarize
from bayescomp.models import MODELS
from reproduce.registry import METHODS
from reproduce.results import artifact, result_dir, status, write_atomic
from reproduce.spec import RunSpec, Suite, train_command

MARGINS = (0.0, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)
SVD_THRESHOLDS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)  # log α; weights at or above are removed
OFFICIAL_THRESHOLDS = {("lenet300", "bc_gnj"): [-2.8, -3.0, -5.0]}  # official example.py, kept if log α < t


def sweep_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce sweep ID`: sweep every current seed (or those of --seed) of profile (or trial.NAME)
    --profile; print and record each."""
    spec = suite.run_spec(args.id, args.profile)
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
    return 0


def swept_field(method: str) -> str | None:
    """The hyperparameter a sweep of method `method` varies: `val_margin_pct` where it has BC's validation
    threshold rule, else `threshold` where it has one (a log α threshold, as Sparse VD); None: no sweep."""
    fields = {f.name for f in dataclasses.fields(METHODS[method])}
    if {"val_margin_pct", "threshold_rule"} <= fields:
        return "val_margin_pct"
    return "threshold" if "threshold" in fields else None


def setting_help(spec: RunSpec) -> str:
    """What the `setting` column of spec's sweep means."""
    if swept_field(spec.method) == "threshold":
        return "setting = the log α threshold: weights with log α below it are kept, the others removed ([MAV17]: 3)"
    text = ("setting = validation margin in percentage points: per layer, the most groups are removed while "
            "the validation error stays within it of the unpruned model's (val_margin_pct)")
    if (spec.model, spec.method) in OFFICIAL_THRESHOLDS:
        text += f"; official = the official code's fixed thresholds {OFFICIAL_THRESHOLDS[(spec.model, spec.method)]}"
    return text


def sweep(spec: RunSpec, seed: int, root: Path, data: ImageData, margins: tuple[float, ...] = MARGINS,
          progress: bool = False) -> pd.DataFrame:
    """One row per threshold setting: margin (or 'official'), thresholds and the summarize() metrics;
    written to the run's sweep.csv (`setting_help` says what the setting column means)."""
    folder = result_dir(root, spec.id, spec.profile, seed)
    post = artifact(folder, "posterior")
    if post is None:
        raise FileNotFoundError(f"{folder} holds no posterior.pt: only Bayesian runs keep one, and a large one "
                                "(*.large.pt) only on the machine that trained it")
    again = (f"rm -r {folder} && " if spec.profile.startswith("trial.") else "") + train_command(
        spec.id, spec.profile, seed=seed, force=True)
    state = load_plain(post, f"restore it, or write it again: {again}")["state_dict"]
    base = METHODS[spec.method](**spec.method_args)
    model = MODELS[spec.model](layers=base.layers(), mean=data.mean, std=data.std, **spec.model_args)
    model.load_state_dict(state)
    rows = []
    for label, method in tqdm(sweep_settings(spec, base, margins), desc=f"{spec.id} seed {seed}: settings", unit="setting",
                              disable=not progress):
        c = method.compress(model.eval(), data)
        metrics, _ = summarize(c, data, spec.model, test_subset=spec.test_subset, model_args=spec.model_args)
        rows.append({"setting": label, "thresholds": c.info.get("thresholds", c.info.get("threshold")), "error_pct": metrics["error_pct"],
                     "nonzero_pct": metrics["nonzero_pct"], "architecture": metrics["architecture"],
                     "bits": metrics["bits"], "cr_fast": metrics["cr_fast"], "cr_max": metrics["cr_max"],
                     "val_error_pruned_pct": c.info.get("val_error_pruned_pct")})
    frame = pd.DataFrame(rows)
    write_atomic(folder / "sweep.csv", frame.to_csv(index=False))
    return frame


def sweep_settings(spec: RunSpec, base: Method, margins: tuple[float, ...] = MARGINS) -> list[tuple[str, Method]]:
    """(setting label, the method with that setting) for each point of spec's sweep, `base` its own method;
    a ValueError if the method has nothing to sweep (`swept_field`)."""
    field = swept_field(spec.method)
    settings: list[tuple[str, Method]]
    if field == "threshold":
        settings = [(f"log α < {t:g}", dataclasses.replace(base, threshold=t)) for t in SVD_THRESHOLDS]
    elif field == "val_margin_pct":
        settings = [(f"{m:g}", dataclasses.replace(base, val_margin_pct=m, threshold_rule="validation"))
                    for m in margins]
    else:
        raise ValueError(f"sweep: {spec.id} has no posterior threshold to sweep (BC and Sparse VD do)")
    if (spec.model, spec.method) in OFFICIAL_THRESHOLDS:
        settings.append(("official", dataclasses.replace(base, threshold_rule="fixed",
                                                         thresholds=OFFICIAL_THRESHOLDS[(spec.model, spec.method)])))
    return settings
