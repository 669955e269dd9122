"""REPRODUCING.md's generated parts: the per-row verdict, the table of contents and quoted numbers.

REPRODUCING.md is prose plus links to generated files. What it does hold of the results is generated
here, from `results/` and the tolerances of `experiments.toml`, never typed:

- the verdict on every Table 1 row with a paper target (`<!-- verdicts:begin ... -->` block, and
  figures/verdicts.md): *reproduced* (every targeted metric within its tolerance), *close* (every
  miss within twice its tolerance), *not reproduced*, or *not run*, with the misses in one line;
- the table of contents (`<!-- toc:begin ... -->` block), from the document's own headings;
- every number quoted in the prose, written as `<!--q SOURCE KEY FORMAT-->value<!--/q-->`:
  SOURCE is an experiment id (the mean over its current `paper` seeds), optionally with
  `@<profile>` (or `@trial.NAME`) and/or `#<seed>` (that seed alone), or a `.json` file's path relative to the
  repository (KEY then a dotted key into it), or a `.csv` file's (KEY `col=value,.../column`: that
  column of the one matching row); FORMAT a Python format spec (`.1f`, `d`, `s`).
  `python -m reproduce report` rewrites the values; `refresh_quotes` also lists those that disagree
  with the results, and the test suite fails on any.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from reproduce.results import current_seeds, load_result, not_current_reason, profile_suffix, result_dir, status, write_atomic
from reproduce.spec import Suite
from reproduce.tables import COLUMNS, MODEL_TITLES, collect, within

QUOTE = re.compile(r"<!--q (?P<source>\S+) (?P<key>\S+?)(?: (?P<fmt>\S+?))?-->(?P<value>.*?)<!--/q-->")
CLOSE_FACTOR = 2.0  # "close": every miss is within this multiple of its tolerance
LABELS = {key: header for key, header, *_ in COLUMNS}  # markdown, as the table headers


class QuoteError(ValueError):
    """A quote names a source or key the results do not hold."""


@dataclass(frozen=True)
class Verdict:
    id: str
    model: str
    label: str
    seeds: str  # "3/3"
    verdict: str  # reproduced | close | not reproduced | not run
    why: str
    kl_trend: str = ""  # how the KL per example moved over the last tenth of training (was it still falling?)


def _miss(value: float, target: dict[str, Any], better: str) -> float:
    """How far `value` is worse than the paper's value, in units of its tolerance (<= 1: within)."""
    slack = value - target["value"] if better == "lower" else target["value"] - value
    tol = target.get("tol", 0.0)
    return slack / tol if tol > 0 else (0.0 if slack <= 0 else float("inf"))


def verdicts(suite: Suite, profile: str, root: Path) -> list[Verdict]:
    """One verdict per Table 1 row that has a paper target."""
    out = []
    for row in collect(suite, profile, root):
        targeted = [(key, better) for key, _, better, _ in COLUMNS if better and key in row.spec.targets]
        if not targeted:
            continue
        seeds = f"{len(row.seeds)}/{len(row.spec.seeds)}"
        title = MODEL_TITLES.get(row.spec.model, row.spec.model)
        if not row.seeds:
            why = not_current_reason(root, row.spec, bool(row.stale))
            out.append(Verdict(row.spec.id, title, row.spec.label, seeds, "not run",
                               f"{why}: `python -m reproduce run {row.spec.id} --profile {profile}`"))
            continue
        misses, worst = [], 0.0
        for key, better in targeted:
            vals = [float(m[key]) for m in row.metrics if m.get(key) is not None]
            target = row.spec.targets[key]
            mean = statistics.fmean(vals)
            if not within(mean, target, better):
                worst = max(worst, _miss(mean, target, better))
                misses.append(f"{LABELS[key]} {mean:.3g} vs {target['value']:g} ± {target.get('tol', 0):g}")
        verdict = "reproduced" if not misses else "close" if worst <= CLOSE_FACTOR else "not reproduced"
        why = "every targeted metric within the paper's tolerance" if not misses else "; ".join(misses)
        out.append(Verdict(row.spec.id, title, row.spec.label, seeds, verdict, why,
                           kl_trend(root, row.spec.id, profile, row.seeds)))
    return out


def kl_trend(root: Path, exp_id: str, profile: str, seeds: list[int]) -> str:
    """The KL per example's relative change over the last tenth of the epochs, mean over seeds ("" if none)."""
    changes, span = [], 0
    for s in seeds:
        h = pd.read_csv(result_dir(root, exp_id, profile, s) / "history.csv")
        kl = h["penalty_per_n"].dropna() if "penalty_per_n" in h else []
        if len(kl) < 10 or not (kl > 0).all():
            return ""
        span = max(1, len(kl) // 10)
        changes.append(kl.iloc[-1] / kl.iloc[-1 - span] - 1)
    return f"{100 * statistics.fmean(changes):+.2f} % over the last {span} epochs" if changes else ""


def render_verdicts(suite: Suite, profile: str, root: Path, out_dir: Path) -> str:
    """figures/verdicts{,_<profile>}.md: the verdict table; returns its markdown."""
    rows = verdicts(suite, profile, root)
    lines = [f"Verdict per Table 1 row (`{profile}` profile; reproduced = every targeted metric within the "
             f"tolerance in `reproduce/experiments.toml`, close = within {CLOSE_FACTOR:g}× it). "
             "Generated by `python -m reproduce report` from `results/`; do not edit.", "",
             "| Model | Method | Seeds | Verdict | Why | KL per example, end of training |", "|---|---|---|---|---|---|"]
    lines += [f"| {v.model} | {v.label} | {v.seeds} | **{v.verdict}** | {v.why} | {v.kl_trend or '—'} |" for v in rows]
    text = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / f"verdicts{profile_suffix(profile)}.md", text)
    return text


def toc(text: str) -> str:
    """A markdown list of the document's ## and ### headings, linked by GitHub's anchors."""
    lines, seen, fence = [], {}, False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"(##+) (.+)", line)
        if not m or len(m.group(1)) > 3 or m.group(2).strip() == "Contents":
            continue
        title = m.group(2).strip()
        anchor = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(anchor, 0)
        seen[anchor] = n + 1
        indent = "  " * (len(m.group(1)) - 2)
        lines.append(f"{indent}- [{title.replace('`', '')}](#{anchor}{'-' + str(n) if n else ''})")
    return "\n".join(lines) + "\n"


def quote_value(source: str, key: str, suite: Suite, root: Path, repo: Path) -> Any:
    """The value a quote names: a metric's mean over current seeds, one seed's, or a JSON file's key."""
    if source.endswith(".csv"):
        return _csv_value(repo / source, key)
    if source.endswith(".json"):
        path = repo / source
        try:
            value: Any = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise QuoteError(f"quote of {source}: cannot read it ({e})") from None
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise QuoteError(f"quote of {source}: no key {key!r}")
            value = value[part]
        return value
    m = re.fullmatch(r"(?P<id>[\w.]+)(?:@(?P<profile>[\w.]+))?(?:#(?P<seed>\d+))?", source)
    if not m:
        raise QuoteError(f"quote source {source!r}: give <id>[@profile or @trial.NAME][#seed], or a JSON or CSV file's path")
    try:
        spec = suite.run_spec(m["id"], m["profile"] or "paper")
    except ValueError as e:
        raise QuoteError(f"quote source {source!r}: {e}") from None
    if m["seed"]:
        current = [int(m["seed"])] if status(root, spec, int(m["seed"])) == "current" else []
    else:
        current = current_seeds(root, spec)
    if not current:
        raise QuoteError(f"quote of {source}: no current result")
    vals = [load_result(root, spec, s).get(key) for s in current]
    if any(v is None for v in vals):
        raise QuoteError(f"quote of {source}: its metrics hold no {key!r}")
    if isinstance(vals[0], str):
        return vals[0] if len(set(vals)) == 1 else " / ".join(vals)
    return statistics.fmean(float(v) for v in vals)


def _csv_value(path: Path, key: str) -> Any:
    """KEY `col=value,col=value/column`: `column` of the one row of the CSV file matching every `col=value`
    (a value is percent-decoded: `method=Sparse%20VD`, as a quote's key holds no space)."""
    where, _, column = key.rpartition("/")
    try:
        frame = pd.read_csv(path, dtype=str)
    except (OSError, ValueError) as e:
        raise QuoteError(f"quote of {path.name}: cannot read it ({e})") from None
    for cond in filter(None, where.split(",")):
        col, _, val = cond.partition("=")
        val = urllib.parse.unquote(val)
        if col not in frame:
            raise QuoteError(f"quote of {path.name}: no column {col!r}")
        frame = frame[frame[col] == val]
    if column not in frame or len(frame) != 1:
        raise QuoteError(f"quote of {path.name}: {key!r} matches {len(frame)} rows or names no column; it must match one")
    value = frame[column].iloc[0]
    try:
        return float(value)
    except ValueError:
        return value


def _format(value: Any, fmt: str | None) -> str:
    if fmt in (None, "s") or isinstance(value, str):
        return str(value)
    return format(int(round(value)) if fmt.endswith("d") else value, fmt)


def refresh_quotes(text: str, suite: Suite, root: Path, repo: Path) -> tuple[str, list[str]]:
    """`text` with every quoted value rewritten from the results; and one line per value that changed."""
    changed: list[str] = []

    def sub(m: re.Match[str]) -> str:
        new = _format(quote_value(m["source"], m["key"], suite, root, repo), m["fmt"])
        if new != m["value"]:
            changed.append(f"{m['source']} {m['key']}: the document says {m['value']!r}, the results {new!r}")
        return m.group(0).replace(f"-->{m['value']}<!--/q-->", f"-->{new}<!--/q-->")

    return QUOTE.sub(sub, text), changed


def replace_block(text: str, block: str, body: str, verb: str = "report") -> str | None:
    """`text` with generated block `block` replaced by `body`; None if it has no such block."""
    begin, end = f"<!-- {block}:begin (generated by python -m reproduce {verb}) -->", f"<!-- {block}:end -->"
    if begin not in text or end not in text:
        return None
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + body + end + rest.split(end, 1)[1]


def refresh(doc: Path, suite: Suite, root: Path, figures: Path) -> list[str]:
    """Rewrite REPRODUCING.md's verdicts, contents and quotes (atomically); the quotes that changed."""
    text = doc.read_text()
    for block, body in (("verdicts", render_verdicts(suite, "paper", root, figures)), ("toc", toc(text))):
        text = replace_block(text, block, body) or text
    text, changed = refresh_quotes(text, suite, root, doc.parent)
    write_atomic(doc, text)
    return changed


def report_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce report`: REPRODUCING.md (beside the figures folder) brought up to date with results/."""
    doc = args.figures_dir.parent / "REPRODUCING.md"
    if not doc.exists():
        raise FileNotFoundError(f"{doc}: no such file; --figures-dir must be the repository's figures/ folder")
    try:
        changed = refresh(doc, suite, args.results_dir, args.figures_dir)
    except QuoteError as e:
        raise ValueError(f"{doc}: {e}; correct that quote (reproduce/report.py says how they are written)") from None
    print("\n".join(changed) if changed else "no quoted number changed", file=sys.stderr)
    print(f"(updated the verdicts, the contents and {len(QUOTE.findall(doc.read_text()))} quoted numbers of {doc})",
          file=sys.stderr)
    return 0
