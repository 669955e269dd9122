"""The harness as a user drives it: python -m reproduce {list, run, table1}."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bayescomp import load_model
from bayescomp.data import load_dataset
from bayescomp.metrics import METRICS_FORMAT, error_pct
from reproduce.__main__ import main

REPO = Path(__file__).resolve().parent.parent
TINY = '''
[profiles.paper]
[profiles.quick]
train_subset = 512
test_subset = 500
[[experiment]]
id = "lenet300.dense"
table = "table1"
model = "lenet300"
dataset = "mnist"
method = "dense"
epochs = 2
batch_size = 64
[experiment.targets]
error_pct = { value = 1.6, tol = 0.2, tag = "M", source = "test" }
'''
BC = '''
[[experiment]]
id = "lenet300.bc_ghs"
label = "BC-GHS"
table = "table1"
model = "lenet300"
dataset = "mnist"
method = "bc_ghs"
pretrain = "lenet300.dense"
epochs = 1
batch_size = 64
'''  # a BC experiment pretrained from TINY's dense one


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "e.toml"
    path.write_text(TINY)
    return path


def _run(spec_file: Path, results: Path, *extra: str) -> int:
    return main(["run", "lenet300.dense", "--profile", "quick", "--spec", str(spec_file),
                 "--results-dir", str(results), "--no-progress", *extra])


def test_run_records_everything_and_the_model_reloads_safely(spec_file, tmp_path, data_dir):
    results = tmp_path / "results"
    assert _run(spec_file, results, "--data-dir", str(data_dir)) == 0
    out = results / "lenet300.dense" / "quick" / "seed0"
    assert sorted(p.name for p in out.iterdir()) == ["details.json", "history.csv", "metrics.json", "model.bcw", "model.pt",
                                                    "spec.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("error_pct", "nonzero_pct", "architecture", "bits", "cr_fast", "cr_max", "artifact_bytes",
                "macs_dense", "macs_pruned"):
        assert key in metrics
    assert metrics["metrics_format"] == METRICS_FORMAT
    spec = json.loads((out / "spec.json").read_text())
    assert spec["torch"] == torch.__version__ and len(spec["spec_hash"]) == 16 and spec["wall_seconds"] > 0
    assert len((out / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs
    # anyone can re-check the error from model.pt alone
    data = load_dataset("mnist", data_dir).subset(test=500)  # the run's test_subset
    model = load_model(out / "model.pt")
    assert error_pct(model, data.test_x, data.test_y) == metrics["error_pct"]


def test_changed_spec_makes_results_stale_and_keeps_them_out_of_the_table(spec_file, tmp_path, data_dir, capsys):
    results, figures = tmp_path / "results", tmp_path / "figures"
    assert _run(spec_file, results, "--data-dir", str(data_dir)) == 0
    spec_file.write_text(TINY.replace("epochs = 2", "epochs = 3"))
    assert main(["list", "--spec", str(spec_file), "--results-dir", str(results), "--profile", "quick"]) == 0
    assert "seed0: stale" in capsys.readouterr().out
    assert main(["table1", "--profile", "quick", "--spec", str(spec_file), "--results-dir", str(results),
                 "--figures-dir", str(figures), "--no-train"]) == 0
    assert "stale results" in (figures / "table1_quick.md").read_text()


def test_unknown_experiment_is_a_clear_error(spec_file, tmp_path, capsys):
    assert main(["run", "lenet300.dnse", "--spec", str(spec_file), "--results-dir", str(tmp_path)]) == 2
    assert "unknown experiment 'lenet300.dnse'; valid: lenet300.dense" in capsys.readouterr().err


def test_wrong_data_dir_is_a_clear_error_and_writes_nothing(spec_file, tmp_path, capsys):
    assert _run(spec_file, tmp_path / "results", "--data-dir", str(tmp_path / "nope")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "results" / "lenet300.dense").exists()


def test_kill_9_mid_run_then_restart_resumes(tmp_path, data_dir):
    spec_file = tmp_path / "e.toml"
    spec_file.write_text(TINY.replace("epochs = 2", "epochs = 6").replace("train_subset = 512", "train_subset = 4000"))
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "reproduce", "run", "lenet300.dense", "--profile", "quick", "--spec", str(spec_file),
           "--results-dir", str(results), "--data-dir", str(data_dir), "--no-progress"]
    ckpt = results / ".work" / "lenet300.dense" / "quick" / "seed0" / "checkpoint.pt"
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run finished or failed before its first checkpoint"
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= done < 6
    assert not (results / "lenet300.dense" / "quick" / "seed0").exists()  # nothing half-written
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    hist = (results / "lenet300.dense" / "quick" / "seed0" / "history.csv").read_text().splitlines()
    assert len(hist) == 7 and not ckpt.exists()


def test_bc_run_with_pretraining_then_table_and_figures(tmp_path, data_dir, capsys):
    spec_file = tmp_path / "e.toml"
    spec_file.write_text(TINY + BC)
    results, figures = tmp_path / "results", tmp_path / "figures"
    common = ["--spec", str(spec_file), "--results-dir", str(results), "--figures-dir", str(figures)]
    assert main(["run", "lenet300.bc_ghs", "--profile", "quick", "--data-dir", str(data_dir), "--no-progress",
                 *common]) == 0
    assert (results / "lenet300.dense" / "quick" / "seed0" / "model.pt").exists()  # the pretraining ran first
    spec = json.loads((results / "lenet300.bc_ghs" / "quick" / "seed0" / "spec.json").read_text())
    assert spec["pretrain"].endswith("lenet300.dense/quick/seed0")
    posterior = torch.load(results / "lenet300.bc_ghs" / "quick" / "seed0" / "posterior.pt", weights_only=True)
    assert "fc1.alpha_mu" in posterior["state_dict"]  # kept for re-thresholding without retraining
    assert main(["table1", "--profile", "quick", *common]) == 0
    table = (figures / "table1_quick.md").read_text()
    assert "BC-GHS" in table and "not run" not in table
    import pandas as pd

    csv = pd.read_csv(figures / "table1_quick.csv").set_index("id")
    metrics = json.loads((results / "lenet300.bc_ghs" / "quick" / "seed0" / "metrics.json").read_text())
    assert csv.loc["lenet300.bc_ghs", "cr_fast"] == pytest.approx(metrics["cr_fast"])  # the recorded value
    assert csv.loc["lenet300.dense", "error_pct_paper"] == 1.6
    tex = (figures / "table1_quick.tex").read_text()
    assert "\\begin{tabular}" in tex and "BC-GHS" in tex and tex.count("\\\\") == 3  # header + 2 rows
    capsys.readouterr()
    assert main(["sweep", "lenet300.bc_ghs", "--profile", "quick", "--data-dir", str(data_dir), *common]) == 0
    sweep = (results / "lenet300.bc_ghs" / "quick" / "seed0" / "sweep.csv").read_text().splitlines()
    assert len(sweep) == 1 + 8 and sweep[0].startswith("setting,thresholds,error_pct")
    out = capsys.readouterr()
    assert "lenet300.bc_ghs [quick] seed 0 (setting = validation margin in percentage points" in out.out
    assert "8/8" in out.err  # its progress bar
    assert f"wrote {results / 'lenet300.bc_ghs' / 'quick' / 'seed0' / 'sweep.csv'}\n" in out.err
    assert main(["figures", "--profile", "quick", *common]) == 0
    for name in ("tradeoff_lenet300_quick", "stat_hist_lenet300_bc_ghs_quick", "bc_bits_units_quick",
                 "learning_curves_lenet300_quick"):
        assert (figures / f"{name}.png").stat().st_size > 0 and (figures / f"{name}.pdf").exists()


def test_readme_baseline_example_is_the_shipped_code_and_runs_as_printed(tmp_path, data_dir):
    import re

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Adding a baseline"):]
    python_block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    toml_block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    assert python_block == (REPO / "baselines" / "random_pruning.py").read_text()
    assert toml_block in (REPO / "reproduce" / "experiments.toml").read_text()
    cmd = re.search(r"`(python -m reproduce run lenet300.random[^`]*)`", section).group(1).split()[1:]
    assert main([*cmd[2:], "--results-dir", str(tmp_path), "--data-dir", str(data_dir), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "lenet300.random" / "quick" / "seed0" / "metrics.json").read_text())
    assert 0 < metrics["nonzero_pct"] < 100


NEW_METHOD = '''
[[experiment]]
id = "lenet300.{name}"
label = "{label}"
table = "table1"
model = "lenet300"
dataset = "mnist"
method = "{name}"
epochs = 1
batch_size = 64
val_size = 1000
'''


def test_a_newly_registered_method_shows_up_in_sweeps_figures_and_table2(tmp_path, data_dir, monkeypatch):
    """README, "Adding a baseline": after the registry line, sweeps, figures and Table 2 take a method in
    where it applies, read off its class (a posterior, BC's group statistic, how it trains), never a list of ids."""
    import dataclasses
    from typing import ClassVar

    from baselines.magnitude import MagnitudePruning
    from baselines.sparse_vd import SparseVD
    from bayescomp.bc import BCGroupNJ
    from reproduce import registry, sweep, table2
    from reproduce.spec import load_suite

    @dataclasses.dataclass
    class GroupPrior(BCGroupNJ):  # another group prior: Bayesian, prunes groups
        name: ClassVar[str] = "group_prior"

        def layers(self):
            return super().layers()

    @dataclasses.dataclass
    class PerWeight(SparseVD):  # Bayesian, a log α threshold per weight
        name: ClassVar[str] = "per_weight"

        def penalty(self, model):
            return super().penalty(model)

    @dataclasses.dataclass
    class Scheduled(MagnitudePruning):  # masks, with its own pruning schedule
        name: ClassVar[str] = "scheduled"

        def on_epoch_end(self, model, epoch):
            super().on_epoch_end(model, epoch)

    @dataclasses.dataclass
    class Recoded(MagnitudePruning):  # trains as magnitude, stores its weights otherwise
        name: ClassVar[str] = "recoded"

        def compress(self, model, data=None):
            return super().compress(model, data)

    new = {GroupPrior: "Group prior", PerWeight: "Per weight", Scheduled: "Scheduled", Recoded: "Recoded"}
    for cls in new:
        monkeypatch.setitem(registry.METHODS, cls.name, cls)
    spec = tmp_path / "e.toml"
    spec.write_text(TINY + "".join(NEW_METHOD.format(name=c.name, label=label) for c, label in new.items()))
    results, figures = tmp_path / "results", tmp_path / "fig"
    common = ["--profile", "quick", "--spec", str(spec), "--results-dir", str(results), "--figures-dir", str(figures)]
    assert main(["table1", *common, "--data-dir", str(data_dir), "--no-progress"]) == 0
    # sweeps: the Bayesian ones, each with its own kind of setting
    assert (sweep.swept_field("group_prior"), sweep.swept_field("per_weight")) == ("val_margin_pct", "threshold")
    assert sweep.swept_field("scheduled") is None and sweep.swept_field("recoded") is None
    for name in ("group_prior", "per_weight"):
        assert main(["sweep", f"lenet300.{name}", *common, "--data-dir", str(data_dir), "--no-progress"]) == 0
    assert main(["sweep", "lenet300.scheduled", *common, "--data-dir", str(data_dir), "--no-progress"]) == 2
    assert main(["table1", "--no-train", *common]) == 0
    swept = (figures / "sweeps_quick.md").read_text()
    assert "`lenet300.group_prior` seed 0" in swept and "`lenet300.per_weight` seed 0" in swept
    assert "log α < 3" in swept and "| scheduled" not in swept
    # figures: the group statistic of the group prior, every method in the trade-off
    assert main(["figures", *common]) == 0
    assert (figures / "stat_hist_lenet300_group_prior_quick.png").exists()
    assert not (figures / "stat_hist_lenet300_per_weight_quick.png").exists()  # no group statistic
    assert (figures / "bc_bits_units_quick.png").exists() and (figures / "tradeoff_lenet300_quick.png").exists()
    # Table 2: every recorded model is timed; training rows, one per way of training, posteriors first
    suite = load_suite(spec)
    models, _ = table2.recorded_models(suite, "quick", results)
    assert set(models["lenet300"]) == {"dense", *new.values()}
    trained = table2.train_methods()
    assert {"group_prior", "per_weight", "scheduled"} <= set(trained) and "recoded" not in trained
    assert trained[0] == "dense" and trained.index("per_weight") < trained.index("magnitude") < trained.index("scheduled")
    assert table2.structured_labels(suite, "quick") == {"Group prior"}


def test_readme_load_model_example_scores_the_recorded_model_as_printed(data_dir, monkeypatch, capsys):
    import re

    readme = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "load_dataset" in b)
    printed = re.search(r"\(prints `(test error [^`]*)`\)", readme).group(1)
    run = re.search(r'run = "([^"]+)"', block).group(1)
    if not (REPO / run / "model.pt").exists():
        pytest.skip(f"no recorded {run}/model.pt in this checkout")
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BAYESCOMP_DATA", str(data_dir))
    exec(compile(block, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == printed
