"""Recipe trials: a variant of an experiment, recorded beside it, compared epoch by epoch."""
from __future__ import annotations

import csv
import json
import re

import pytest

from reproduce.__main__ import main
from reproduce.spec import SpecError, load_suite
from tests.test_reproduce import BC, TINY

TRIALS = '''
[[trial]]
name = "ghs_warm"
experiment = "lenet300.bc_ghs"
base = "quick"
description = "KL warm-up"
set = { epochs = 2, kl_warmup_epochs = 2 }

[[trial]]
name = "ghs_scratch"
experiment = "lenet300.bc_ghs"
base = "quick"
set = { pretrain = "", method_args = { scale_lr_mult = 2.0 } }
'''


def test_a_trial_changes_only_its_keys_and_starts_from_its_base_profiles_pretrain(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text(TINY + BC + TRIALS)
    suite = load_suite(path)
    base, warm, scratch = (suite.resolve("lenet300.bc_ghs", "quick"), suite.resolve_trial("ghs_warm"),
                           suite.resolve_trial("ghs_scratch"))
    assert warm.profile == "trial.ghs_warm" and warm.pretrain_profile == "quick"
    assert (warm.train.epochs, warm.train.kl_warmup_epochs, warm.train.batch_size) == (2, 2, base.train.batch_size)
    assert warm.pretrain_hash == base.pretrain_hash and warm.hash != base.hash
    assert scratch.pretrain is None and scratch.method_args["scale_lr_mult"] == 2.0


@pytest.mark.parametrize("bad, message", [('set = { epochz = 3 }', "unknown key"),
                                          ('set = { epochs = "3" }', "epochs must be an integer"),
                                          ('experiment = "lenet300.nope"\nset = {}', "experiment 'lenet300.nope' unknown")])
def test_a_bad_trial_is_refused_at_load(tmp_path, bad, message):
    path = tmp_path / "e.toml"
    text = '[[trial]]\nname = "t"\n' + (bad if "experiment" in bad else f'experiment = "lenet300.bc_ghs"\n{bad}')
    path.write_text(TINY + BC + text + "\n")
    with pytest.raises(SpecError, match=message):
        load_suite(path)


def test_trial_runs_records_beside_its_experiment_and_compares(tmp_path, data_dir, capsys):
    path = tmp_path / "e.toml"
    path.write_text(TINY + BC + TRIALS)
    args = ["--spec", str(path), "--results-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f")]
    assert main(["trial", "ghs_warm", "--data-dir", str(data_dir), "--no-progress", "--device", "cpu", *args]) == 0
    folder = tmp_path / "r" / "lenet300.bc_ghs" / "trial.ghs_warm" / "seed0"
    assert json.loads((folder / "spec.json").read_text())["pretrain"].endswith("lenet300.dense/quick/seed0")
    out = capsys.readouterr().out
    assert "| ghs_warm " in out and "finished" in out and "| ghs_scratch " in out and "not started" in out
    assert "pretrain=(none)" in out  # ghs_scratch's pretrain = "": from scratch
    assert (tmp_path / "f" / "trials_lenet300.bc_ghs.png").exists()
    assert not (tmp_path / "f" / "trials_lenet300.bc_ghs_sweeps.csv").exists()  # nothing swept yet
    assert not (tmp_path / "r" / "lenet300.bc_ghs" / "quick").exists()  # the experiment's own rows untouched
    assert "[quick]" not in out  # the reference run, not begun, is no row
    assert main(["sweep", "lenet300.bc_ghs", "--profile", "trial.ghs_warm", "--data-dir", str(data_dir), "--no-progress",
                 *args]) == 0
    sweep = (folder / "sweep.csv").read_text().splitlines()
    assert len(sweep) == 1 + 8 and sweep[1].startswith("0,")  # one row per margin, written beside the trial's run
    assert main(["trials", "lenet300.bc_ghs", *args]) == 0
    swept = (tmp_path / "f" / "trials_lenet300.bc_ghs.md").read_text().split("## Threshold sweeps")[1]
    row = [r for r in swept.splitlines() if r.startswith("| ghs_warm, 1 of 1 seeds")]
    margin0 = next(csv.DictReader(sweep))  # one seed: the mean is its value
    cell = f"{float(margin0['error_pct']):.2f} / {float(margin0['cr_fast']):.1f}"
    assert len(row) == 1 and row[0].split("|")[2].strip() == cell and "ghs_scratch" not in swept  # not swept: no row
    means = list(csv.DictReader((tmp_path / "f" / "trials_lenet300.bc_ghs_sweeps.csv").open()))
    assert [(m["run"], m["setting"], m["seeds"]) for m in means][:2] == [("ghs_warm", "0", "1 of 1"),
                                                                        ("ghs_warm", "0.05", "1 of 1")]
    assert len(means) == 8 and float(means[0]["error_pct"]) == pytest.approx(float(margin0["error_pct"]))
    capsys.readouterr()
    assert main(["sweep", "lenet300.bc_gnj", "--profile", "trial.ghs_warm", *args]) == 2
    assert "trial.ghs_warm is a trial of lenet300.bc_ghs, not of lenet300.bc_gnj" in capsys.readouterr().err
    assert main(["sweep", "lenet300.bc_ghs", "--profile", "trial.ghs_wram", *args]) == 2
    assert "unknown trial 'ghs_wram'; valid: ghs_warm, ghs_scratch" in capsys.readouterr().err
    assert main(["sweep", "lenet300.bc_ghs", "--profile", "trial.ghs_warm", "--seed", "7", *args]) == 2
    assert "--seed 7: lenet300.bc_ghs has no such seed in profile 'trial.ghs_warm'" in capsys.readouterr().err


def test_trials_compare_against_the_run_of_the_profile_they_start_from(tmp_path, data_dir, capsys):
    path = tmp_path / "e.toml"
    path.write_text(TINY + BC + TRIALS)
    args = ["--spec", str(path), "--results-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f")]
    assert main(["run", "lenet300.bc_ghs", "--profile", "quick", "--data-dir", str(data_dir), "--no-progress",
                 "--device", "cpu", *args]) == 0
    capsys.readouterr()
    assert main(["trials", "lenet300.bc_ghs", *args]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")]
    reference = [r for r in rows if r.startswith("| [quick]")]
    assert len(reference) == 1 and "finished" in reference[0] and "(none: the reference)" in reference[0]
    assert rows.index(reference[0]) == 1  # first under the header, above the trials


def test_adopt_records_a_finished_run_under_a_profile_of_the_same_spec_and_refuses_another(tmp_path, data_dir, capsys):
    path = tmp_path / "e.toml"
    path.write_text(TINY + BC + TRIALS + '[[trial]]\nname = "ghs_same"\nexperiment = "lenet300.bc_ghs"\nbase = "quick"\n')
    args = ["--spec", str(path), "--results-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f")]
    assert main(["trial", "ghs_same", "ghs_warm", "--data-dir", str(data_dir), "--no-progress", "--device", "cpu", *args]) == 0
    capsys.readouterr()
    quick = tmp_path / "r" / "lenet300.bc_ghs" / "quick" / "seed0"

    assert main(["adopt", "lenet300.bc_ghs", "trial.ghs_warm", "quick", *args]) == 2  # another spec: refused
    err = capsys.readouterr().err
    assert "different specs" in err and "kl_warmup_epochs: 2 vs 0" in err and not quick.exists()
    assert "train: {" not in err  # the training keys one by one, not as a whole dict

    assert main(["adopt", "lenet300.bc_ghs", "trial.ghs_same", "quick", *args]) == 0
    assert "adopted from trial.ghs_same" in capsys.readouterr().out
    trial = tmp_path / "r" / "lenet300.bc_ghs" / "trial.ghs_same" / "seed0"
    record = json.loads((quick / "spec.json").read_text())
    assert record["profile"] == "quick" and record["adopted_from"]["profile"] == "trial.ghs_same"
    assert (quick / "metrics.json").read_bytes() == (trial / "metrics.json").read_bytes()
    assert main(["list", "--profile", "quick", *args]) == 0
    assert "seed0: current" in [line for line in capsys.readouterr().out.splitlines() if "lenet300.bc_ghs" in line][0]

    assert main(["table1", "--profile", "quick", "--no-train", *args]) == 0
    assert "trained as trial.ghs_same (same spec; `adopt`)" in (tmp_path / "f" / "table1_quick.md").read_text()
    assert main(["adopt", "lenet300.bc_ghs", "trial.ghs_same", "quick", *args]) == 0
    assert "already current" in capsys.readouterr().out


def test_a_trial_of_several_seeds_shows_their_mean_beside_seed_0(tmp_path, data_dir, capsys):
    path = tmp_path / "e.toml"
    path.write_text(TINY + BC + '[[trial]]\nname = "two"\nexperiment = "lenet300.bc_ghs"\nbase = "quick"\n'
                    'set = { seeds = [0, 1], epochs = 1 }\n')
    args = ["--spec", str(path), "--results-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f")]
    assert main(["trial", "two", "--data-dir", str(data_dir), "--no-progress", "--device", "cpu", *args]) == 0
    folder = tmp_path / "r" / "lenet300.bc_ghs" / "trial.two"
    errors = [json.loads((folder / f"seed{s}" / "metrics.json").read_text())["error_pct"] for s in (0, 1)]
    text = (tmp_path / "f" / "trials_lenet300.bc_ghs.md").read_text()
    header, _, row = [line for line in text.splitlines() if line.startswith("|")]
    split = re.compile(r"(?<!\\)\|")  # a markdown cell boundary: a pipe not escaped
    cells = dict(zip([c.strip() for c in split.split(header)], [c.strip() for c in split.split(row)]))
    assert len(split.split(header)) == len(split.split(row))  # the header's own pipes are escaped
    assert cells["seeds done"] == "2/2"
    assert float(cells["mean error %"]) == pytest.approx(sum(errors) / 2, abs=0.005)
    assert float(cells["error %"]) == pytest.approx(errors[0], abs=0.005)


def test_a_trial_run_under_an_earlier_definition_is_shown_stale_not_as_this_trials(tmp_path, data_dir, capsys):
    path = tmp_path / "e.toml"
    trials = TRIALS + '[[trial]]\nname = "ghs_long"\nexperiment = "lenet300.bc_ghs"\nbase = "quick"\nset = { epochs = 2 }\n'
    path.write_text(TINY + BC + trials)
    args = ["--spec", str(path), "--results-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f")]
    run = ["--data-dir", str(data_dir), "--no-progress", "--device", "cpu", *args]
    assert main(["trial", "ghs_warm", *run]) == 0
    assert main(["trial", "ghs_long", "--stop-at", "+0s", *run]) == 3  # a resume point after one epoch of two
    capsys.readouterr()
    assert main(["trials", "lenet300.bc_ghs", *args]) == 0
    rows = {r.split("|")[1].strip(): r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")}
    assert "finished" in rows["ghs_warm"] and "in progress (1/2 epochs)" in rows["ghs_long"]
    # both definitions change: what was recorded is no longer these trials' run
    path.write_text(TINY + BC + trials.replace("kl_warmup_epochs = 2", "kl_warmup_epochs = 1")
                    .replace("epochs = 2 }", "epochs = 2, lr = 0.002 }"))
    assert main(["trials", "lenet300.bc_ghs", *args]) == 0
    rows = {r.split("|")[1].strip(): r for r in capsys.readouterr().out.splitlines() if r.startswith("| ")}
    assert "stale (recorded under another spec)" in rows["ghs_warm"]
    assert "stale (recorded under another spec)" in rows["ghs_long"]


def test_adopt_names_each_seed_it_could_not_adopt_and_how_to_train_it(tmp_path, data_dir, capsys):
    path = tmp_path / "e.toml"
    path.write_text(TINY + BC + '[[trial]]\nname = "one"\nexperiment = "lenet300.bc_ghs"\nbase = "quick"\n'
                    'set = { seeds = [0] }\n[[trial]]\nname = "pair"\nexperiment = "lenet300.bc_ghs"\nbase = "quick"\n'
                    'set = { seeds = [0, 1] }\n')
    args = ["--spec", str(path), "--results-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f")]
    assert main(["trial", "one", "--data-dir", str(data_dir), "--no-progress", "--device", "cpu", *args]) == 0
    capsys.readouterr()
    assert main(["adopt", "lenet300.bc_ghs", "trial.one", "trial.pair", *args]) == 0
    out = capsys.readouterr().out
    assert "seed 0: adopted from trial.one" in out
    assert "trial.pair seed 1: not adopted, trial.one seed 1 is not among its seeds" in out
    assert not (tmp_path / "r" / "lenet300.bc_ghs" / "trial.pair" / "seed1").exists()
    assert main(["adopt", "lenet300.bc_ghs", "trial.pair", "quick", *args]) == 0  # quick: seed 0 only
    assert "seed 0: adopted from trial.pair" in capsys.readouterr().out
