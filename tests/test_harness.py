"""table1's plan (what it trains, in which order, what it leaves to a GPU), the regression check,
published rows and large artifacts, driven through the command line."""
from __future__ import annotations

import json
import os
import signal
import tempfile
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest

import reproduce.executors
import reproduce.results
from reproduce.__main__ import main
from reproduce.executors import LocalExecutor
from tests.test_reproduce import BC, TINY

PUBLISHED = '''
[[published]]
model = "lenet300"
label = "DNS (published)"
nonzero_pct = 1.8
cr_max = 56
error_pct = 2.0
source = "test"
'''


def _args(spec: Path, tmp_path: Path) -> list[str]:
    return ["--spec", str(spec), "--results-dir", str(tmp_path / "results"), "--figures-dir", str(tmp_path / "fig")]


def test_table1_dry_run_plans_pretraining_first_and_trains_nothing(tmp_path, capsys):
    spec = tmp_path / "e.toml"
    spec.write_text(TINY + BC)
    assert main(["table1", "--profile", "quick", "--dry-run", *_args(spec, tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.index("stage 1") < err.index("lenet300.dense [quick] seed 0") < err.index("stage 2") \
        < err.index("lenet300.bc_ghs [quick] seed 0")
    assert "2 runs, ~" in err and "on this CPU" in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "fig").exists()


def test_table1_trains_the_missing_rows_side_by_side_then_renders(tmp_path, data_dir, capsys):
    spec = tmp_path / "e.toml"
    spec.write_text(TINY + BC + PUBLISHED)
    args = _args(spec, tmp_path) + ["--data-dir", str(data_dir), "--no-progress"]
    assert main(["table1", "--profile", "quick", "--jobs", "2", *args]) == 0
    for exp_id in ("lenet300.dense", "lenet300.bc_ghs"):
        assert (tmp_path / "results" / exp_id / "quick" / "seed0" / "metrics.json").exists()
    err = capsys.readouterr().err  # a line per finished run, although no progress bar is shown
    assert "[1/2] lenet300.dense seed 0: " in err and "[2/2] lenet300.bc_ghs seed 0: " in err
    assert err.count(" s, error ") == 2 and err.count(", CR fast ") == 2
    table = (tmp_path / "fig" / "table1_quick.md").read_text()
    assert "not run" not in table and "| BC-GHS | 1/1 |" in table
    assert "| DNS (published) | — | — [1.8] |" in table  # the published row, beside ours
    capsys.readouterr()
    assert main(["table1", "--profile", "quick", *args]) == 0  # everything current: renders only
    assert "nothing to train" not in capsys.readouterr().err


def test_gpu_rows_are_left_untrained_on_a_cpu_with_an_estimate(tmp_path):
    spec = tmp_path / "e.toml"
    spec.write_text(TINY.replace("[experiment.targets]", "cpu_epoch_seconds = 3600\n[experiment.paper]\n"
                                 "needs_gpu = true\n[experiment.targets]").replace("epochs = 2", "epochs = 3"))
    assert main(["table1", "--profile", "paper", "--device", "cpu", *_args(spec, tmp_path)]) == 0
    assert "needs GPU (~3 h on this CPU)" in (tmp_path / "fig" / "table1.md").read_text()
    assert not (tmp_path / "results").exists()


def test_calibrate_records_then_a_changed_expected_value_fails_with_a_deviation_table(tmp_path, data_dir, capsys,
                                                                                     monkeypatch):
    spec = tmp_path / "e.toml"
    spec.write_text("# a comment that must survive\n" + TINY)
    args = ["--profile", "quick", "--spec", str(spec), "--data-dir", str(data_dir)]
    made = _temp_folders(tmp_path, monkeypatch)
    assert main(["check", *args, "--no-progress"]) == 1  # no expected values yet
    assert "no expected value" in capsys.readouterr().out
    cal = ["calibrate", "--seeds", "0,1", "--kernels", "native,avx2", "--jobs", "1", "--results-dir",
           str(tmp_path / "r"), *args]
    assert main(cal) == 0
    grid = pd.read_csv(tmp_path / "r" / "check" / "quick_calibration.csv")
    assert len(grid) == 4 and set(grid["kernels"]) == {"native", "avx2"}  # 2 kernel settings x 2 seeds
    expected = tomllib.loads(spec.read_text())["experiment"][0]["expected"]["quick"]
    own = grid[grid["seed"] == 0]["error_pct"]
    assert expected["error_pct"]["value"] == round((own.max() + own.min()) / 2, 4)
    assert expected["error_pct"]["kind"] == "regression" and "kernel spread" in expected["error_pct"]["basis"]
    assert "calibrated" in expected["error_pct"]["source"] and spec.read_text().startswith("# a comment")
    assert main(["check", *args, "--no-progress"]) == 0  # retrained from scratch: within the tolerances
    assert "4/4 metrics within tolerance" in capsys.readouterr().out
    checks = [p for p in made if p.name.startswith("reproduce-check-")]
    assert len(checks) == 2 and not any(p.exists() for p in made)  # the folders removed, failed or passed
    assert main(cal) == 0
    assert spec.read_text().count("[experiment.expected.quick]") == 1  # replaced, not appended
    changed = expected["error_pct"]["value"] + 5
    spec.write_text(spec.read_text().replace(f"error_pct = {{ value = {expected['error_pct']['value']!r},",
                                             f"error_pct = {{ value = {changed!r},"))
    assert main(["check", *args, "--no-progress"]) == 1
    out = capsys.readouterr()
    assert "lenet300.dense" in out.err and "error_pct" in out.err and "MISS" in out.err and "outside the tolerance" in out.err


def test_large_model_stays_out_of_git_and_is_regenerated_when_needed(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setattr(reproduce.results, "LARGE_BYTES", 1000)  # every artifact counts as large
    spec = tmp_path / "e.toml"
    spec.write_text(TINY + BC)
    args = _args(spec, tmp_path) + ["--profile", "quick", "--data-dir", str(data_dir), "--no-progress"]
    assert main(["run", "lenet300.dense", *args]) == 0
    out = tmp_path / "results" / "lenet300.dense" / "quick" / "seed0"
    rec = json.loads((out / "spec.json").read_text())
    assert rec["artifacts"]["model"]["file"] == "model.large.pt" and len(rec["artifacts"]["model"]["sha256"]) == 64
    assert not (out / "model.pt").exists()
    (out / "model.large.pt").unlink()  # a fresh clone: metrics recorded, model not in git
    assert main(["list", "--profile", "quick", *_args(spec, tmp_path)]) == 0
    assert "lenet300.dense               quick  seed0: current" in capsys.readouterr().out  # the table keeps its row
    assert main(["run", "lenet300.bc_ghs", *args]) == 0  # needs the dense model: trains it again
    assert (out / "model.large.pt").exists()
    assert (tmp_path / "results" / "lenet300.bc_ghs" / "quick" / "seed0" / "posterior.large.pt").exists()


@pytest.mark.parametrize("bad, message", [
    ('[[published]]\nmodel = "lenet300"\nlabel = "X"\ncr_maks = 3\n', "unknown key(s) 'cr_maks'"),
    ('[[published]]\nmodel = "lenet3000"\nlabel = "X"\n', "model 'lenet3000' unknown"),
])
def test_bad_published_row_is_a_clear_error(tmp_path, capsys, bad, message):
    spec = tmp_path / "e.toml"
    spec.write_text(TINY + bad)
    assert main(["list", "--spec", str(spec)]) == 2
    assert message in capsys.readouterr().err


def test_ray_executor_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    spec = tmp_path / "e.toml"
    spec.write_text(TINY)
    assert main(["table1", "--profile", "quick", "--executor", "ray", *_args(spec, tmp_path)]) == 2
    assert "pip install '.[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def _temp_folders(tmp_path: Path, monkeypatch) -> list[Path]:
    """The fresh folders `check` makes, listed as it makes them (under tmp_path)."""
    made: list[Path] = []

    def mkdtemp(suffix: str | None = None, prefix: str | None = None, dir: str | None = None) -> str:
        made.append(tmp_path / f"{prefix or ''}{len(made)}")
        made[-1].mkdir()
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    return made


def _record(results: Path, exp_id: str, seed: int, wall: float, epochs: int, n_train: int, device: str = "cpu"):
    """A recorded run's spec.json, as far as time estimates read it (its spec hash is stale)."""
    path = results / exp_id / "quick" / f"seed{seed}" / "spec.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"spec_hash": "0" * 16, "wall_seconds": wall, "spec": {"train": {"epochs": epochs}},
                                "n_train": n_train, "device": device}))


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_check_removes_its_folder_and_says_it_starts_from_scratch(tmp_path, monkeypatch, capsys, how):
    spec = tmp_path / "e.toml"
    spec.write_text(TINY)
    made = _temp_folders(tmp_path, monkeypatch)

    def interrupted(self, plan, spec_path, root, **kwargs):
        (Path(root) / ".work").mkdir()
        (Path(root) / ".work" / "checkpoint.pt").write_bytes(b"half an epoch")
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalExecutor, "run", interrupted)
    args = ["check", "--profile", "quick", "--spec", str(spec), "--device", "cpu", "--no-progress",
            "--results-dir", str(tmp_path / "results")]
    assert main(args) == 130
    assert len(made) == 1 and not made[0].exists()
    err = capsys.readouterr().err
    assert "a check does not resume; rerun it to start from scratch" in err and "--reuse" in err
    assert f"removed the check's results folder {made[0]}" in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    assert main([*args, "--keep"]) == 130  # opt-in: kept, and where it is and how to complete it are printed
    assert made[1].exists()
    assert f"kept the check's results in {made[1]} (--keep); to complete them: `python -m reproduce check " \
           f"--profile quick --reuse --results-dir {made[1]}`" in capsys.readouterr().err


def test_check_prints_a_line_per_finished_run_and_removes_its_folder_when_a_run_fails(tmp_path, monkeypatch,
                                                                                      capsys):
    spec = tmp_path / "e.toml"
    spec.write_text(TINY + BC)
    made = _temp_folders(tmp_path, monkeypatch)
    _record(tmp_path / "results", "lenet300.dense", 3, wall=65.0, epochs=1, n_train=256)  # in --results-dir

    def fake_run(task, spec_path, root, *args):
        (Path(root) / f"{task.exp_id}.log").write_text("ran")
        if task.exp_id == "lenet300.bc_ghs":
            raise ValueError("boom")
        return {"error_pct": 1.5, "cr_fast": 1.0}

    monkeypatch.setattr(reproduce.executors, "_run_task", fake_run)
    assert main(["check", "--profile", "quick", "--spec", str(spec), "--device", "cpu", "--no-progress",
                 "--results-dir", str(tmp_path / "results")]) == 1
    err = capsys.readouterr().err
    plan = [line for line in err.splitlines() if line.startswith("  lenet300.dense [quick] seed 0")]
    assert plan and plan[0].endswith("~4 min (recorded run)")  # (65 - 5) x 2 x 2 + 5: from --results-dir
    assert "[1/2] lenet300.dense seed 0: 0.0 s, error 1.50 %, CR fast 1.00\n" in err
    assert "[2/2] lenet300.bc_ghs seed 0: 0.0 s, FAILED (ValueError: boom)\n" in err
    assert len(made) == 1 and not made[0].exists() and "removed the check's results folder" in err


def test_dry_run_estimates_from_the_recorded_wall_time_of_any_seed_on_this_kind_of_device(tmp_path, capsys):
    spec = tmp_path / "e.toml"
    spec.write_text(TINY + BC)
    _record(tmp_path / "results", "lenet300.dense", 7, wall=65.0, epochs=1, n_train=256)  # 4x fewer epochs x images
    _record(tmp_path / "results", "lenet300.dense", 8, wall=65.0, epochs=1, n_train=256)
    _record(tmp_path / "results", "lenet300.bc_ghs", 0, wall=9999.0, epochs=1, n_train=512, device="cuda:0")
    assert main(["table1", "--profile", "quick", "--dry-run", "--device", "cpu", *_args(spec, tmp_path)]) == 0
    lines = capsys.readouterr().err.splitlines()
    dense = next(line for line in lines if "lenet300.dense [quick] seed 0" in line)
    bc = next(line for line in lines if "lenet300.bc_ghs [quick] seed 0" in line)
    assert dense.endswith("~4 min (recorded run)")  # (65 - 5) x 4 + 5 = 245 s
    assert bc.endswith("~6 s")  # the GPU run is not used on a CPU: from cpu_epoch_seconds
    assert "estimates: 1 from the wall time of a recorded run (results/<id>/<profile>/seed*/spec.json), " \
           "1 from the spec's cpu_epoch_seconds" in lines


def test_profile_help_lists_the_profiles_of_the_spec_file_and_an_unknown_one_is_a_clear_error(tmp_path, capsys):
    spec = tmp_path / "e.toml"
    spec.write_text(TINY.replace("[profiles.quick]\n", '[profiles.quick]\ndescription = "tiny, for tests"\n'))
    for verb in ("run", "table1", "check", "table2", "sweep", "figures", "list"):
        with pytest.raises(SystemExit):
            main([verb, "--help", "--spec", str(spec)])
        out = " ".join(capsys.readouterr().out.split())  # unwrapped
        assert "a profile of e.toml: paper = no description; quick = tiny, for tests" in out, verb
    assert main(["run", "lenet300.dense", "--profile", "fast", "--spec", str(spec)]) == 2
    assert "--profile fast: no such profile in " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["check", "--help"])  # the packaged experiments file
    out = " ".join(capsys.readouterr().out.split())
    assert "a profile of experiments.toml: paper = " in out and "; quick = " in out
