"""Plots from results files only (never trains): pruning statistics, bits per layer, learning curves.

Each figure is written as PNG and PDF into the figures folder; a figure covers the current
(non-stale) results of the chosen profile.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from reproduce.run import result_dir, status  # noqa: E402
from reproduce.spec import Suite  # noqa: E402

STAT_LABEL = {"bc_gnj": "log α", "bc_ghs": "−log mode of q(z)"}


def _current(suite: Suite, profile: str, root: Path):
    for exp_id in suite.ids():
        spec = suite.resolve(exp_id, profile)
        seeds = [s for s in spec.seeds if status(root, spec, s) == "current"]
        if seeds:
            yield spec, seeds


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def statistic_histograms(suite: Suite, profile: str, root: Path, out: Path) -> list[Path]:
    """Per BC experiment (first recorded seed): histogram of the group statistic per layer, with the threshold."""
    written = []
    for spec, seeds in _current(suite, profile, root):
        d = result_dir(root, spec.id, profile, seeds[0]) / "details.json"
        if spec.method not in STAT_LABEL or not d.exists():
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
            ax.set_xlabel(STAT_LABEL[spec.method] + " (prune ≥ threshold)", fontsize=8)
            ax.set_yscale("log")
        fig.suptitle(f"{spec.id} [{profile}] seed {seeds[0]}: group statistics", fontsize=10, y=1.04)
        written += _save(fig, out, f"stat_hist_{spec.id.replace('.', '_')}{'' if profile == 'paper' else '_' + profile}")
    return written


def bits_and_units(suite: Suite, profile: str, root: Path, out: Path) -> list[Path]:
    """Per BC experiment: bits per layer and kept units per layer (fraction of the dense architecture)."""
    rows = []
    for spec, seeds in _current(suite, profile, root):
        if spec.method not in STAT_LABEL:
            continue
        dense = suite.resolve(f"{spec.model}.dense", profile) if f"{spec.model}.dense" in suite.experiments else None
        for s in seeds:
            m = json.loads((result_dir(root, spec.id, profile, s) / "metrics.json").read_text())
            dense_arch = None
            if dense is not None and status(root, dense, s) == "current":
                dense_arch = json.loads((result_dir(root, dense.id, profile, s) / "metrics.json").read_text())["architecture"]
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
    return _save(fig, out, "bc_bits_units" + ("" if profile == "paper" else "_" + profile))


def learning_curves(suite: Suite, profile: str, root: Path, out: Path) -> list[Path]:
    """Test error (posterior mean, unpruned) per epoch, every recorded run."""
    groups: dict[str, list] = {}
    for spec, seeds in _current(suite, profile, root):
        for s in seeds:
            h = pd.read_csv(result_dir(root, spec.id, profile, s) / "history.csv")
            groups.setdefault(spec.model, []).append((f"{spec.label} s{s}", h))
    if not groups:
        return []
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.2), squeeze=False)
    for ax, (model, runs) in zip(axes[0], groups.items()):
        for label, h in runs:
            ax.plot(h["epoch"], h["test_error_pct"], label=label, lw=1)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error % (before pruning)")
        ax.set_yscale("log")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    return _save(fig, out, "learning_curves" + ("" if profile == "paper" else "_" + profile))


def all_figures(suite: Suite, profile: str, root: Path, out: Path) -> list[Path]:
    return (statistic_histograms(suite, profile, root, out) + bits_and_units(suite, profile, root, out)
            + learning_curves(suite, profile, root, out))
