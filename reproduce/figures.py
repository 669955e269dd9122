"""Plots from results files only (never trains): accuracy vs compression, pruning statistics, bits and
kept units per layer, learning curves.

Each figure is written as PNG and PDF into the figures folder; a figure covers the current
(non-stale) results of the chosen profile. The files hold no creation date (`save_figures`), so
rendering unchanged results again gives byte-identical files and leaves the git tree clean.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bayescomp.method import Method  # noqa: E402
from reproduce.groups import render_groups
from reproduce.registry import METHODS, prunes_groups  # noqa: E402
from reproduce.results import (atomic_path, current_specs, load_result, profile_suffix, result_dir,  # noqa: E402
                               status)
from reproduce.spec import Suite  # noqa: E402
from reproduce.tables import MODEL_TITLES  # noqa: E402


def statistic_label(method: str) -> str:
    """The axis label of a group-pruning method's statistic (registry.prunes_groups): its class's `statistic_label`."""
    return METHODS[method].statistic_label


# no creation date (nor SOURCE_DATE_EPOCH's) in the PDF; PNG holds none, only the matplotlib version
NO_DATE = {".pdf": {"CreationDate": None}, ".png": {}}


def save_figures(fig, out: Path, name: str) -> list[Path]:
    """fig as out/<name>.png and .pdf, then closed; byte-identical each time the same figure is drawn, and
    each file written beside and moved into place, so that an interrupted drawing leaves the old one."""
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=120, bbox_inches="tight", metadata=NO_DATE[path.suffix])
    plt.close(fig)
    return paths


def figures_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce figures`: every figure of the profile's recorded results; prints each file."""
    for path in all_figures(suite, args.profile, args.results_dir, args.figures_dir):
        print(path)
    return 0


def statistic_histograms(suite: Suite, profile: str, root: Path, out: Path) -> list[Path]:
    """Per group-pruning (BC) experiment, first recorded seed: histogram of the group statistic per layer,
    with the threshold."""
    written = []
    for spec, seeds in current_specs(suite, profile, root):
        d = result_dir(root, spec.id, profile, seeds[0]) / "details.json"
        if not prunes_groups(spec.method) or not d.exists():
            continue
        info = json.loads(d.read_text())
        stats, thr = info["statistic"], info["thresholds"]
        fig, axes = plt.subplots(1, len(stats), figsize=(3.2 * len(stats), 2.6), squeeze=False)
        for ax, (layer, values), t in zip(axes[0], stats.items(), thr):
            ax.hist(values, bins=60, color="tab:blue")
            if t != float("inf"):
                ax.axvline(t, color="tab:red", ls="--", label=f"threshold {t:.2f}")
                ax.legend(fontsize=7)
            ax.set_title(f"{layer} ({len(values)} groups)", fontsize=9)
            ax.set_xlabel(statistic_label(spec.method) + " (prune ≥ threshold)", fontsize=8)
            ax.set_yscale("log")
        fig.suptitle(f"{spec.id} [{profile}] seed {seeds[0]}: group statistics", fontsize=10, y=1.04)
        written += save_figures(fig, out, f"stat_hist_{spec.id.replace('.', '_')}{profile_suffix(profile)}")
    return written


def bits_and_units(suite: Suite, profile: str, root: Path, out: Path) -> list[Path]:
    """Per group-pruning (BC) experiment: bits per layer and kept units per layer (fraction of the dense
    architecture)."""
    rows = []
    for spec, seeds in current_specs(suite, profile, root):
        if not prunes_groups(spec.method):
            continue
        dense = suite.resolve(f"{spec.model}.dense", profile) if f"{spec.model}.dense" in suite.experiments else None
        for s in seeds:
            m = load_result(root, spec, s)
            dense_arch = None
            if dense is not None and status(root, dense, s) == "current":
                dense_arch = load_result(root, dense, s)["architecture"]
            rows.append((spec, s, m, dense_arch))
    if not rows:
        return []
    fig, axes = plt.subplots(2, 1, figsize=(7, 5.5))
    for spec, s, m, dense_arch in rows:
        label = f"{spec.id} s{s}"
        bits = [int(b) for b in m["bits"].split("-")]
        axes[0].plot(range(1, len(bits) + 1), bits, marker="o", label=label)
        if dense_arch:
            kept = [int(a) / int(d) for a, d in zip(m["architecture"].split("-"), dense_arch.split("-"))]
            axes[1].plot(range(1, len(kept) + 1), kept, marker="o", label=label)
    axes[0].set_ylabel("bits per weight")
    axes[1].set_ylabel("kept units / dense")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("layer (paper's architecture notation)")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Bayesian Compression per layer [{profile}]", fontsize=10)
    return save_figures(fig, out, "bc_bits_units" + profile_suffix(profile))


CURVES = (("test_error_pct", "test error % (posterior mean, unpruned)", "log"),
          ("penalty_per_n", "KL per training example (nats)", "log"),
          ("prunable_pct", "% of weights at the reference threshold", "linear"))


def learning_curves(suite: Suite, profile: str, root: Path, out: Path) -> list[Path]:
    """Convergence, one figure per model: a row per experiment, a column per curve (test error, KL per
    example, share of weights whose group statistic is past the method's reference threshold),
    against epoch; the line is the mean over the recorded seeds, the band their range."""
    by_model: dict[str, list] = {}
    for spec, seeds in current_specs(suite, profile, root):
        runs = [pd.read_csv(result_dir(root, spec.id, profile, s) / "history.csv") for s in seeds]
        if max(len(h) for h in runs) > 1:
            by_model.setdefault(spec.model, []).append((spec, seeds, runs))
    paths: list[Path] = []
    for model, rows in by_model.items():
        fig, axes = plt.subplots(len(rows), len(CURVES), figsize=(10, 1.9 * len(rows) + 0.6), squeeze=False,
                                 sharex="row")
        for r, (spec, seeds, runs) in enumerate(rows):
            for c, (col, label, scale) in enumerate(CURVES):
                ax = axes[r][c]
                have = [h for h in runs if col in h.columns and h[col].notna().any()]
                if col == "penalty_per_n":
                    have = [h for h in have if (h[col] > 0).any()]
                if not have:
                    tracked = col != "prunable_pct" or METHODS[spec.method].epoch_stats is not Method.epoch_stats
                    ax.text(0.5, 0.5, "not recorded in these runs" if tracked else "not this method's",
                            ha="center", va="center", transform=ax.transAxes, fontsize=7, color="grey")
                    ax.set_yticks([])
                else:
                    frame = pd.concat([h[["epoch", col]] for h in have]).groupby("epoch")[col]
                    stats = frame.agg(["mean", "min", "max"])
                    ax.plot(stats.index, stats["mean"], lw=1.2, color=f"C{r % 10}")
                    if len(have) > 1:
                        ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.25, color=f"C{r % 10}",
                                        lw=0)
                    ax.set_yscale(scale)
                    if scale == "log":  # plain numbers (1.5, 2) on a log axis, not 1.5×10⁰
                        few = stats["max"].max() > 3 * stats["min"].min()  # a wide range: label 1, 2, 5 only
                        plain = matplotlib.ticker.FuncFormatter(
                            lambda v, _, few=few: f"{v:g}" if not few or f"{v:.0e}"[0] in "125" else "")
                        ax.yaxis.set_major_formatter(plain)
                        ax.yaxis.set_minor_formatter(plain)
                ax.grid(alpha=0.3)
                ax.tick_params(which="both", labelsize=7)
                if r == 0:
                    ax.set_title(label, fontsize=8)
                if r == len(rows) - 1:
                    ax.set_xlabel("epoch", fontsize=8)
            axes[r][0].set_ylabel(f"{spec.label}\n({len(seeds)} seed{'s' * (len(seeds) > 1)})", fontsize=8)
        fig.suptitle(f"{MODEL_TITLES.get(model, model)}: convergence ({profile})", fontsize=9)
        fig.tight_layout()
        paths += save_figures(fig, out, f"learning_curves_{model}{profile_suffix(profile)}")
    return paths


def _mean_std(frame: pd.DataFrame, by: str | None, cols: list[str]) -> pd.DataFrame:
    """Mean and std (over seeds) of `cols`, per value of `by` (a sweep setting) or over all rows."""
    g = frame.groupby(by, sort=False) if by else frame.assign(_all=0).groupby("_all")
    out = g[cols].agg(["mean", "std"])
    out.columns = [f"{c}_{s}" for c, s in out.columns]
    return out.fillna({f"{c}_std": 0.0 for c in cols})


def tradeoff(suite: Suite, profile: str, root: Path, out: Path) -> list[Path]:
    """Per model: test error against CR fast and against |w≠0|/|w|, every method.

    Lines: threshold sweeps of the recorded posteriors (reproduce sweep), mean ± std over the
    seeds that have one. Large markers: the table's recorded rows (mean ± std over seeds). Stars:
    the paper's values. Mask baselines are points: another sparsity means another training run.
    """
    cols = ["error_pct", "cr_fast", "nonzero_pct"]
    by_model: dict[str, list] = {}
    for spec, seeds in current_specs(suite, profile, root):
        if spec.method == "dense":
            continue
        recorded = pd.DataFrame([load_result(root, spec, s) for s in seeds])
        sweeps = [pd.read_csv(f) for s in seeds if (f := result_dir(root, spec.id, profile, s) / "sweep.csv").exists()]
        curve = _mean_std(pd.concat(sweeps), "setting", cols) if sweeps else None
        if curve is not None and "official" in curve.index:
            curve = curve.drop(index="official")
        by_model.setdefault(spec.model, []).append((spec, _mean_std(recorded, None, cols), curve, len(sweeps)))
    written = []
    for model, methods in by_model.items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for i, (spec, point, curve, n_sweeps) in enumerate(methods):
            color = f"C{i}"
            for ax, x in zip(axes, ("cr_fast", "nonzero_pct")):
                if curve is not None:
                    ax.errorbar(curve[f"{x}_mean"], curve["error_pct_mean"], xerr=curve[f"{x}_std"],
                                yerr=curve["error_pct_std"], color=color, lw=1, marker=".", capsize=2, alpha=0.8)
                ax.errorbar(point[f"{x}_mean"], point["error_pct_mean"], xerr=point[f"{x}_std"],
                            yerr=point["error_pct_std"], color=color, marker="o", ms=7, capsize=3, ls="none",
                            label=f"{spec.label} ({f'sweep, {n_sweeps} seed(s)' if n_sweeps else 'recorded'})")
                tgt = spec.targets
                if x in tgt and "error_pct" in tgt:
                    ax.plot(tgt[x]["value"], tgt["error_pct"]["value"], marker="*", ms=13, color=color, mec="black",
                            ls="none")
        for pub_i, pub in enumerate(p for p in suite.published if p["model"] == model):
            if "nonzero_pct" in pub and "error_pct" in pub:
                axes[1].plot(pub["nonzero_pct"], pub["error_pct"], marker="P", ms=9, color="0.4", ls="none")
                axes[1].annotate(pub["label"], (pub["nonzero_pct"], pub["error_pct"]), fontsize=7,
                                 xytext=(4, 4 + 6 * pub_i), textcoords="offset points")
        axes[0].set_xlabel("CR fast (higher is better)")
        axes[1].set_xlabel("|w≠0|/|w| % (lower is better)")
        axes[0].set_xscale("log")
        axes[1].set_xscale("log")
        for ax in axes:
            ax.set_ylabel("test error %")
            ax.grid(alpha=0.3, which="both")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{MODEL_TITLES.get(model, model)} [{profile}]: accuracy vs compression "
                     "(lines: threshold sweeps; ★ paper; + published)", fontsize=10)
        written += save_figures(fig, out, f"tradeoff_{model}{profile_suffix(profile)}")
    return written


def all_figures(suite: Suite, profile: str, root: Path, out: Path) -> list[Path]:
    return (tradeoff(suite, profile, root, out) + statistic_histograms(suite, profile, root, out)
            + bits_and_units(suite, profile, root, out) + learning_curves(suite, profile, root, out)
            + render_groups(suite, profile, root, out))
