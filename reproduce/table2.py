"""Table 2: measured speed of the compressed networks beside the FLOP-ratio bound, and training cost.

`python -m reproduce table2` times every recorded model of the chosen profile (first recorded seed
of each experiment) on this machine and writes results/bench/<device>/{inference.csv,
training.csv, meta.json}, then renders figures/table2.md and figures/table2_speedup.{png,pdf}.
Times are medians with their spread; meta.json records the machine (bench_train.machine: CPU model,
the CPU capability torch's kernels use), the code's commit and the models timed.
Everything but the times is deterministic: the models, inputs (seeded) and FLOP counts.
How each is timed: reproduce/bench_inference.py (forward passes), reproduce/bench_train.py (training).
"""
from __future__ import annotations

import argparse
import json
import sys
import platform
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bayescomp.data import DATASETS, load_dataset  # noqa: E402
from bayescomp.method import Dense  # noqa: E402
from bayescomp.models import load_model  # noqa: E402
from reproduce.bench_inference import inference_bench, op_profile  # noqa: E402
from reproduce.bench_train import machine, peak_training_memory, train_cost  # noqa: E402
from reproduce.figures import save_figures  # noqa: E402
from reproduce.registry import METHODS, has_posterior, prunes_groups, trains_like  # noqa: E402
from reproduce.results import (artifact, bench_dir, bench_dirs, code_version, current_specs, provenance,  # noqa: E402
                               result_dir, write_atomic)
from reproduce.run import resolve_device  # noqa: E402
from reproduce.spec import Suite  # noqa: E402
from reproduce.tables import MODEL_TITLES  # noqa: E402

TRAIN_SUBSET = {"lenet300": None, "lenet5_caffe": 5_000, "vgg_cifar": 2_560}  # images per timed epoch
CPU_TRAIN_MODELS = ("lenet300", "lenet5_caffe")  # VGG's training cost is measured on a GPU only


def table2_command(args: argparse.Namespace, suite: Suite) -> int:
    """`python -m reproduce table2`: time the recorded models (unless --no-measure) and render Table 2
    (figures/table2.md; `python -m reproduce report` then refreshes REPRODUCING.md's quotes of it); with --op-profile MODEL, only the time per operator of that model's."""
    if args.op_profile:
        return _op_profile_command(args, suite)
    if not args.no_measure:
        resolve_device(args.device)
        folder = measure(suite, args.profile, args.results_dir, args.device, args.data_dir,
                         tuple(int(t) for t in args.threads.split(",")), progress=not args.no_progress)
        print(summary(measured_rows(args.results_dir, folder.name), structured_labels(suite, args.profile)),
              file=sys.stderr)
    text = render(args.results_dir, args.figures_dir)
    print(text, end="")
    return 0


def _op_profile_command(args: argparse.Namespace, suite: Suite) -> int:
    models, _ = recorded_models(suite, args.profile, args.results_dir)
    if args.op_profile not in models:
        raise ValueError(f"--op-profile {args.op_profile}: no recorded models; with models: {', '.join(models)}")
    shape = DATASETS[suite.resolve(f"{args.op_profile}.dense", args.profile).dataset].shape
    frame = op_profile(models[args.op_profile], shape)
    out = bench_dir(args.results_dir, "cpu") / f"op_profile_{args.op_profile}.csv"
    write_atomic(out, frame.to_csv(index_label="operator"))
    print(f"self CPU ms per forward pass, batch 1024, 1 thread ({args.op_profile}, inference form; {out}):")
    print(frame.to_string(float_format=lambda v: f"{v:.2f}"))
    return 0


def train_methods() -> list[str]:
    """The methods whose training Table 2 times: the first registered of each way of training
    (registry.trains_like: deep_compression and random train as magnitude), the dense reference first,
    then those with a posterior, then the others."""
    first: dict[tuple, str] = {}
    for name in METHODS:
        first.setdefault(trains_like(name), name)
    return sorted(first.values(), key=lambda n: (n != Dense.name, not has_posterior(METHODS[n]())))


def structured_labels(suite: Suite, profile: str) -> set[str]:
    """The row labels of Table 1's group-pruning (BC) experiments: their structured models are what
    `summary` reports on."""
    specs = [suite.resolve(exp_id, profile) for exp_id in suite.ids("table1")]
    return {spec.label for spec in specs if prunes_groups(spec.method)}


def recorded_models(suite: Suite, profile: str, root: Path) -> tuple[dict[str, dict[str, nn.Module]], list[str]]:
    """model name -> {method label -> model} of the first current seed of each experiment with a
    model file here; and the results used (for provenance)."""
    models: dict[str, dict[str, nn.Module]] = {}
    used = []
    for spec, seeds in current_specs(suite, profile, root, suite.ids("table1")):
        for s in seeds:
            f = artifact(result_dir(root, spec.id, profile, s), "model")
            if f is not None:
                label = "dense" if spec.method == "dense" else spec.label
                models.setdefault(spec.model, {})[label] = load_model(f)
                used.append(f"{spec.id} seed {s}")
                break
    return {m: v for m, v in models.items() if "dense" in v}, used


def measure(suite: Suite, profile: str, root: Path, device: str, data_dir: str | None, threads: tuple[int, ...],
            progress: bool = True) -> Path:
    """Time everything; write results/bench/<device type>/. Returns that folder."""
    dev = torch.device(device)
    started = time.time()
    models, used = recorded_models(suite, profile, root)
    if not models:
        raise FileNotFoundError(f"no recorded models under {root} for profile {profile!r}: run `python -m reproduce "
                                f"table1 --profile {profile}` first")
    shapes = {m: DATASETS[suite.resolve(f"{m}.dense", profile).dataset].shape for m in models}
    rows = inference_bench(models, shapes, threads=threads, device=device, progress=progress)
    train_rows = []
    for model_name in models:
        if dev.type == "cpu" and model_name not in CPU_TRAIN_MODELS:
            continue
        data = load_dataset(suite.resolve(f"{model_name}.dense", profile).dataset, data_dir)
        costs = train_cost(data, model_name, train_methods(), repeats=2, train_subset=TRAIN_SUBSET[model_name],
                           device=device)
        for row in costs:
            row["peak_mb"] = peak_training_memory(model_name, row["method"], data, device=device)
        train_rows += costs
    out = bench_dir(root, dev.type)
    write_atomic(out / "inference.csv", pd.DataFrame(rows).to_csv(index=False))
    write_atomic(out / "training.csv", pd.DataFrame(train_rows).to_csv(index=False))
    host = machine()  # CPU model and capability, torch, python
    meta = {"device": dev.type, "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else (host["cpu_model"] or platform.processor() or platform.machine()),
            "threads": list(threads), **host, **code_version(),
            "models": used, "profile": profile,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": time.time() - started}
    write_atomic(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return out


def render(root: Path, out_dir: Path) -> str:
    """figures/table2.md and the speed-up figure from every results/bench/<device>/ present."""
    parts = ["# Table 2 — measured speed of the compressed networks", "",
             "Speed-up of a forward pass over the dense model (same device, threads and batch), with the "
             "FLOP-ratio bound (dense multiply-adds / the variant's) and the share of the bound reached. "
             "`structured`: the smaller dense network with pruned units removed; `sparse CSR`: the same with "
             "its Linear layers stored as torch.sparse CSR (conv layers stay dense). Medians; the CSV beside "
             "the results holds the interquartile ranges. Generated by `python -m reproduce table2`; do not edit.", ""]
    frames = []
    for folder in bench_dirs(root):
        if not (folder / "inference.csv").exists():
            continue
        meta = json.loads((folder / "meta.json").read_text())
        inf = pd.read_csv(folder / "inference.csv")
        frames.append(inf)
        parts += [f"## {meta['device'].upper()}: {meta['device_name']}", "",
                  f"torch {meta['torch']}, " + (f"{capability(meta)}, " if meta["device"] == "cpu" else "")
                  + f"{provenance(meta)}, "
                  f"{meta['finished'][:10]}, {meta['wall_seconds'] / 60:.1f} min, "
                  f"models: {', '.join(meta['models'])}", ""]
        for model_name, g in inf.groupby("model", sort=False):
            g = g.assign(col=g.apply(lambda r: (f"{int(r.threads)} thr, " if pd.notna(r.threads) else "")
                                     + f"batch {r.batch}", axis=1),
                         cell=g.apply(lambda r: f"{r.speedup:.2f}× ({r.of_bound_pct:.0f} %)", axis=1))
            table = g.pivot_table(index=["method", "variant", "flop_ratio"], columns="col", values="cell",
                                  aggfunc="first", sort=False)
            table = table.reset_index().rename(columns={"flop_ratio": "bound (FLOP ratio)"})
            parts += [f"### {MODEL_TITLES.get(model_name, model_name)}", "",
                      table.to_markdown(index=False, floatfmt=".2f"), ""]
        train = folder / "training.csv"
        if train.exists() and train.stat().st_size > 1:
            tr = pd.read_csv(train)
            spread = ("over `repeats` epochs interleaved with the other methods', with their range (one repeat: "
                      "no range; quartiles in training.csv)" if "epoch_seconds_min" in tr
                      else "(recorded without its spread)")
            parts += [f"### Training cost ({meta['device']})", "",
                      f"Median seconds per epoch (`train_images` images, batch 128, the suite's one loop) {spread}, "
                      "ratio of the medians to the dense model's (measured side by side), and the memory a few "
                      "training steps add at their peak (CPU: rise of the peak resident set in a fresh process; GPU: "
                      "max allocated).", "",
                      training_table(tr).to_markdown(index=False, floatfmt=".2f"), ""]
    text = "\n".join(parts) + "\n"
    write_atomic(out_dir / "table2.md", text)
    if frames:
        _figure(pd.concat(frames), out_dir)
    return text


def capability(meta: dict[str, Any]) -> str:
    """The CPU capability a bench folder's meta.json records ('CPU capability AVX2', with the CPU_ENV
    variables that were set), or 'capability not recorded' (meta.json written before it was)."""
    if not meta.get("cpu_capability"):
        return "capability not recorded"
    env = ", ".join(f"{k}={v}" for k, v in (meta.get("cpu_env") or {}).items())
    return f"CPU capability {meta['cpu_capability']}" + (f" ({env})" if env else "")


def training_table(tr: pd.DataFrame) -> pd.DataFrame:
    """training.csv as Table 2 shows it: the epoch seconds' min and max as one `epoch_seconds range`
    column beside the median, quartiles left in the file; a file without them (recorded before) as it is."""
    if "epoch_seconds_min" not in tr:
        return tr
    shown = tr.drop(columns=[f"epoch_seconds_{k}" for k in ("min", "q1", "q3", "max")])
    rng = tr.apply(lambda r: f"{r.epoch_seconds_min:.2f}–{r.epoch_seconds_max:.2f}", axis=1)
    shown.insert(list(shown.columns).index("epoch_seconds") + 1, "epoch_seconds range", rng)
    return shown


def _figure(inf: pd.DataFrame, out_dir: Path) -> None:
    """Speed-up against the FLOP-ratio bound, one panel per device/threads, colour = batch size."""
    inf = inf[inf["method"] != "dense"].copy()
    inf["setting"] = inf.apply(lambda r: r.device.upper() + (f", {int(r.threads)} thread(s)" if pd.notna(r.threads)
                                                             else ""), axis=1)
    settings = list(dict.fromkeys(inf["setting"]))
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4.2), squeeze=False)
    markers = {"structured": "o", "sparse CSR": "x"}
    for ax, setting in zip(axes[0], settings):
        g = inf[inf["setting"] == setting]
        for i, batch in enumerate(sorted(g["batch"].unique())):
            for variant, mk in markers.items():
                h = g[(g["batch"] == batch) & (g["variant"] == variant)]
                ax.scatter(h["flop_ratio"], h["speedup"], color=f"C{i}", marker=mk, s=28,
                           label=f"batch {batch}, {variant}")
        lim = [0.5, max(2.0, float(inf["flop_ratio"].max()) * 1.5)]
        ax.plot(lim, lim, color="0.5", lw=1, ls="--", label="bound (speed-up = FLOP ratio)")
        ax.axhline(1.0, color="0.7", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("FLOP ratio dense / variant (the bound)")
        ax.set_ylabel("measured speed-up over dense")
        ax.set_title(setting, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.suptitle("Compressed LeNets and VGG: measured speed-up vs FLOP-ratio bound", fontsize=10)
    save_figures(fig, out_dir, "table2_speedup")  # no creation date: unchanged data, unchanged file


def summary(rows: pd.DataFrame, labels: set[str]) -> str:
    """Acceptance line: share of the bound the structured BC models (rows of `labels`, structured_labels)
    reach at the largest CPU batch."""
    bc = rows[(rows["variant"] == "structured") & rows["method"].isin(labels) & (rows["device"] == "cpu")]
    bc = bc[bc["batch"] == bc.groupby("model")["batch"].transform("max")]
    return "\n".join(f"{r.model} {r.method} {int(r.threads)} thread(s), batch {r.batch}: speed-up {r.speedup:.2f}x "
                     f"of bound {r.flop_ratio:.2f}x = {r.of_bound_pct:.0f} %" for r in bc.itertuples())


def measured_rows(root: Path, device: str) -> pd.DataFrame:
    return pd.read_csv(bench_dir(root, device) / "inference.csv")
