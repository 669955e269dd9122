"""table1's plan (what it trains, in which order, what it leaves to a GPU), the regression check,
published rows and large artifacts, driven through the command line."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

import reproduce.run
from reproduce.__main__ import main
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


def test_check_update_records_then_a_changed_expected_value_fails_with_a_deviation_table(tmp_path, data_dir, capsys):
    spec = tmp_path / "e.toml"
    spec.write_text("# a comment that must survive\n" + TINY)
    args = ["--profile", "quick", "--spec", str(spec), "--data-dir", str(data_dir), "--no-progress"]
    assert main(["check", *args]) == 1  # no expected values yet
    assert "no expected value" in capsys.readouterr().out
    assert main(["check", "--update", "--results-dir", str(tmp_path / "r"), "--reuse", *args]) == 0
    metrics = json.loads((tmp_path / "r" / "lenet300.dense" / "quick" / "seed0" / "metrics.json").read_text())
    expected = tomllib.loads(spec.read_text())["experiment"][0]["expected"]["quick"]
    assert expected["error_pct"]["value"] == round(metrics["error_pct"], 4)
    assert "spec " in expected["error_pct"]["source"] and spec.read_text().startswith("# a comment")
    assert main(["check", *args]) == 0  # retrained from scratch: the same numbers
    assert "4/4 metrics within tolerance" in capsys.readouterr().out
    assert main(["check", "--update", "--results-dir", str(tmp_path / "r"), "--reuse", *args]) == 0
    assert spec.read_text().count("[experiment.expected.quick]") == 1  # replaced, not appended
    changed = expected["error_pct"]["value"] + 5
    spec.write_text(spec.read_text().replace(f"error_pct = {{ value = {expected['error_pct']['value']!r},",
                                             f"error_pct = {{ value = {changed!r},"))
    assert main(["check", "--results-dir", str(tmp_path / "r"), "--reuse", *args]) == 1
    out = capsys.readouterr()
    assert "lenet300.dense" in out.err and "error_pct" in out.err and "MISS" in out.err and "outside the tolerance" in out.err


def test_large_model_stays_out_of_git_and_is_regenerated_when_needed(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setattr(reproduce.run, "LARGE_BYTES", 1000)  # every artifact counts as large
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
