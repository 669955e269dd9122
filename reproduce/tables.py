"""Recorded results -> figures/table1.md: ours (mean ± std over seeds) beside the paper's value.

Reads only results files; never trains. A result recorded under another spec hash is stale and is
never mixed in. "within" means not worse than the paper's value by more than the tolerance
(lower is better for error and |w≠0|/|w|, higher for compression rates).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from reproduce.executors import make_executor, plan_runs, report_failures
from reproduce.results import (current_specs, load_record, load_result, not_current_reason, profile_suffix, provenance,
                               result_dir, status, write_atomic)
from reproduce.run import resolve_device
from reproduce.spec import RunSpec, Suite

MODEL_TITLES = {"lenet300": "LeNet-300-100 (MNIST)", "lenet5_caffe": "LeNet-5-Caffe (MNIST)",
                "vgg_cifar": "VGG (CIFAR-10, JPEG copy)"}
# key, header, better direction (None: a string column), decimals
COLUMNS: tuple[tuple[str, str, str | None, int], ...] = (
    ("nonzero_pct", "\\|w≠0\\|/\\|w\\| %", "lower", 2), ("architecture", "Pruned architecture", None, 0),
    ("bits", "Bits per layer", None, 0), ("cr_fast", "CR fast", "higher", 1), ("cr_max", "CR max", "higher", 1),
    ("error_pct", "Error %", "lower", 2))


def table1_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce table1`: train the missing rows (unless --no-train), render Table 1 and the sweeps;
    1 if a run failed. (`python -m reproduce report` then brings REPRODUCING.md up to date.)"""
    gpu = resolve_device(args.device).type == "cuda"
    plan = plan_runs(suite, args.profile, args.results_dir, suite.ids("table1"), gpu=gpu)
    if args.dry_run or (plan.tasks and not args.no_train):
        print(plan.describe(), file=sys.stderr)
    if args.dry_run:
        return 0
    if plan.tasks and not args.no_train:
        executor = make_executor(args.executor, jobs=args.jobs, address=args.address)
        outcomes = executor.run(plan, args.spec, args.results_dir, device=args.device, data_dir=args.data_dir,
                                progress=not args.no_progress)
        if report_failures(outcomes):
            return 1
    table = render_table1(suite, args.profile, args.results_dir, args.figures_dir, plan.needs_gpu)
    print(table, end="")
    render_sweeps(suite, args.profile, args.results_dir, args.figures_dir)
    return 0


@dataclass
class Row:
    spec: RunSpec
    seeds: list[int]  # seeds with current results
    stale: list[int]
    missing: list[int]
    metrics: list[dict[str, Any]]


def collect(suite: Suite, profile: str, root: Path, table: str = "table1") -> list[Row]:
    rows = []
    ids = suite.ids(table)
    models = list(dict.fromkeys(i.split(".")[0] for i in ids))
    for exp_id in sorted(ids, key=lambda i: models.index(i.split(".")[0])):  # per model, methods in file order
        spec = suite.resolve(exp_id, profile)
        st = {s: status(root, spec, s) for s in spec.seeds}
        seeds = [s for s, v in st.items() if v == "current"]
        rows.append(Row(spec, seeds, [s for s, v in st.items() if v == "stale"],
                        [s for s, v in st.items() if v == "missing"], [load_result(root, spec, s) for s in seeds]))
    return rows


def within(value: float, target: dict[str, Any], better: str) -> bool:
    """Not worse than the paper's value by more than its tolerance."""
    slack = value - target["value"] if better == "lower" else target["value"] - value
    return slack <= target.get("tol", 0.0)


@dataclass(frozen=True)
class Summary:
    """One cell: ours over the seeds (mean and std, or the distinct strings) and the paper's value."""

    value: float | str | None
    std: float | None
    target: dict[str, Any] | None
    within: bool | None


def summarize_cell(row: Row, key: str, better: str | None) -> Summary:
    vals = [m.get(key) for m in row.metrics if m.get(key) is not None]
    target = row.spec.targets.get(key)
    if not vals:
        return Summary(None, None, target, None)
    if better is None:
        return Summary(vals[0] if len(set(vals)) == 1 else " / ".join(map(str, vals)), None, target, None)
    mean = statistics.fmean(vals)
    return Summary(mean, statistics.stdev(vals) if len(vals) > 1 else None, target,
                   within(mean, target, better) if target else None)


def cell(row: Row, key: str, better: str | None, decimals: int) -> str:
    s = summarize_cell(row, key, better)
    paper = f"{s.target['value']}{' (' + s.target['tag'] + ')' if s.target.get('tag') else ''}" if s.target else ""
    if s.value is None:
        ours = "—"
    elif isinstance(s.value, str):
        ours = s.value
    else:
        ours = f"{s.value:.{decimals}f}" + (f" ± {s.std:.{decimals}f}" if s.std is not None else "")
        ours += {True: " ✓", False: " ✗", None: ""}[s.within]
    return f"{ours} [{paper}]" if paper else ours


def _published_cells(pub: dict[str, Any]) -> list[str]:
    return [f"— [{pub[k]}]" if k in pub else "" for k, *_ in COLUMNS]


def render_table1(suite: Suite, profile: str, root: Path, out_dir: Path,
                  needs_gpu: dict[str, float] | None = None) -> str:
    """figures/table1{,_<profile>}.{md,csv,tex}; `needs_gpu`: rows left untrained for want of a GPU (CPU seconds)."""
    rows = collect(suite, profile, root)
    needs_gpu = needs_gpu or {}
    head = ["Model", "Method", "Seeds"] + [c[1] for c in COLUMNS]
    lines = [f"# Table 1 — profile `{profile}`", "",
             "Ours (mean ± std over seeds) with the paper's value in brackets and its PAPER.md tag; "
             "✓ = not worse than the paper by more than the tolerance in `reproduce/experiments.toml`. "
             "Rows marked (published) quote other methods' papers as [LUW17] does; the suite does not retrain them. "
             "Generated by `python -m reproduce table1` from `results/`; do not edit.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for i, r in enumerate(rows):
        title = MODEL_TITLES.get(r.spec.model, r.spec.model)
        if not r.seeds:
            if r.spec.id in needs_gpu:
                why = f"needs GPU (~{needs_gpu[r.spec.id] / 3600:.0f} h on this CPU)"
            else:
                why = not_current_reason(root, r.spec, bool(r.stale))
            cells = [f"{why}: `python -m reproduce run {r.spec.id} --profile {profile}`"] + [""] * (len(COLUMNS) - 1)
        else:
            cells = [cell(r, key, better, dec) for key, _, better, dec in COLUMNS]
        lines.append("| " + " | ".join([title, r.spec.label, f"{len(r.seeds)}/{len(r.spec.seeds)}"] + cells) + " |")
        if i + 1 == len(rows) or rows[i + 1].spec.model != r.spec.model:
            lines += ["| " + " | ".join([title, pub["label"], "—"] + _published_cells(pub)) + " |"
                      for pub in suite.published if pub["model"] == r.spec.model]
        for s in r.seeds:
            rec = load_record(root, r.spec, s)
            notes.append(f"- `{r.spec.id}` seed {s}: spec {rec['spec_hash']}, {provenance(rec)}, torch {rec['torch']}, "
                         f"{rec['device']}, {rec['wall_seconds'] / 60:.1f} min"
                         + (f", trained as {rec['adopted_from']['profile']} (same spec; `adopt`)" if "adopted_from" in rec else ""))
    lines += ["", "## Provenance", ""] + (notes or ["(no recorded results)"])
    lines += [f"- {pub['label']} ({pub['model']}): {pub['source']}" for pub in suite.published]
    text = "\n".join(lines) + "\n"
    suffix = profile_suffix(profile)
    write_atomic(out_dir / f"table1{suffix}.md", text)
    records = [_record(r) for r in rows] + [{"id": None, "model": p["model"], "method": p["label"],
                                             **{f"{k}_paper": p.get(k) for k, *_ in COLUMNS}} for p in suite.published]
    write_atomic(out_dir / f"table1{suffix}.csv", pd.DataFrame(records).to_csv(index=False))
    write_atomic(out_dir / f"table1{suffix}.tex", _latex(rows, suite.published))
    return text


def _record(r: Row) -> dict[str, Any]:
    """One table row as flat fields for the CSV: ours (mean, std), the paper's value, within."""
    rec: dict[str, Any] = {"id": r.spec.id, "model": r.spec.model, "method": r.spec.label,
                           "seeds": len(r.seeds), "seeds_planned": len(r.spec.seeds)}
    for key, _, better, _ in COLUMNS:
        s = summarize_cell(r, key, better)
        rec[key] = s.value
        if better is not None:
            rec[key + "_std"] = s.std
        rec[key + "_paper"] = s.target["value"] if s.target else None
        rec[key + "_within"] = s.within
    return rec


def _latex(rows: list[Row], published: list[dict[str, Any]]) -> str:
    """The table as a LaTeX tabular (booktabs): ours, with the paper's value in brackets."""
    def tex(v: str) -> str:
        return (v.replace("\\|", "|").replace("%", "\\%").replace("±", "$\\pm$").replace("✓", "")
                .replace("✗", "$^\\ast$").replace("≠", "$\\neq$").replace("—", "--").replace("_", "\\_"))

    head = ["Model", "Method", "Seeds"] + [c[1] for c in COLUMNS]
    out = ["% Generated by python -m reproduce table1; $^\\ast$ = outside the paper's value by more than the tolerance.",
           "\\begin{tabular}{" + "l" * 3 + "r" * len(COLUMNS) + "}", "\\toprule", " & ".join(map(tex, head)) + " \\\\",
           "\\midrule"]
    for i, r in enumerate(rows):
        title = MODEL_TITLES.get(r.spec.model, r.spec.model)
        if r.seeds:
            cells = [cell(r, key, better, dec) for key, _, better, dec in COLUMNS]
            out.append(" & ".join(tex(x) for x in [title, r.spec.label, f"{len(r.seeds)}/{len(r.spec.seeds)}", *cells])
                       + " \\\\")
        if i + 1 == len(rows) or rows[i + 1].spec.model != r.spec.model:
            out += [" & ".join(tex(x) for x in [title, p["label"], "--", *_published_cells(p)]) + " \\\\"
                    for p in published if p["model"] == r.spec.model]
    return "\n".join(out + ["\\bottomrule", "\\end{tabular}"]) + "\n"


def render_sweeps(suite: Suite, profile: str, root: Path, out_dir: Path) -> str:
    """Every recorded sweep.csv (reproduce sweep) as markdown tables -> figures/sweeps.md."""
    parts = []
    for spec, seeds in current_specs(suite, profile, root):
        for s in seeds:
            f = result_dir(root, spec.id, profile, s) / "sweep.csv"
            if f.exists():
                frame = pd.read_csv(f).drop(columns=["thresholds"])
                parts.append(f"### `{spec.id}` seed {s} (`{f}`)\n\n" + frame.to_markdown(index=False, floatfmt=".2f"))
    text = "\n\n".join(parts) + "\n" if parts else "(no sweeps recorded)\n"
    write_atomic(out_dir / f"sweeps{profile_suffix(profile)}.md", text)
    return text
