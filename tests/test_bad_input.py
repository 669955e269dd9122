"""Bad input at the command line: each is one line `error: ...` naming the problem and the fix, exit
code 2, and no result written (or, for a damaged checkpoint, the run starts over and says so)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bayescomp.metrics import METRICS_FORMAT
from reproduce.__main__ import main
from reproduce.results import result_dir
from reproduce.spec import load_suite
from tests.test_reproduce import BC, TINY


class _RunsCode:
    def __reduce__(self):
        return (print, ("this ran on load",))


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "e.toml"
    path.write_text(TINY + BC)
    return path


def _main(spec_file: Path, *argv: str) -> int:
    return main([*argv, "--spec", str(spec_file), "--results-dir", str(spec_file.parent / "results"),
                 "--figures-dir", str(spec_file.parent / "fig")])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def _recorded(spec_file: Path, exp_id: str, **files: bytes | str) -> Path:
    """A current results folder of `exp_id` [quick] seed 0, with `files` written into it."""
    spec = load_suite(spec_file).resolve(exp_id, "quick")
    folder = result_dir(spec_file.parent / "results", exp_id, "quick", 0)
    folder.mkdir(parents=True)
    defaults = {"spec.json": json.dumps({"spec_hash": spec.hash}), "history.csv": "epoch\n1\n",
                "metrics.json": json.dumps({"metrics_format": METRICS_FORMAT, "error_pct": 2.0, "nonzero_pct": 10.0,
                                            "cr_fast": 5.0})}
    for name, content in {**defaults, **files}.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


def test_a_spec_value_of_the_wrong_type_is_a_one_line_error(spec_file, capsys):
    spec_file.write_text(TINY.replace("batch_size = 64", 'batch_size = "128"'))
    assert _main(spec_file, "run", "lenet300.dense", "--profile", "quick") == 2
    assert _one_error_line(capsys) == ("error: experiment 'lenet300.dense', profile 'paper': batch_size must be an "
                                       "integer (e.g. batch_size = 128), got '128' (str)")
    assert not (spec_file.parent / "results").exists()


@pytest.mark.parametrize("argv, message", [
    (["run", "lenet300.dense", "--device", "tpu"],
     "--device tpu: not a device this suite runs on; use cpu, cuda, cuda:N or auto"),
    (["table2", "--device", "tpu", "--no-measure"],
     "--device tpu: not a device this suite runs on; use cpu, cuda, cuda:N"),
    (["run", "lenet300.dense", "--seed", "7"],
     "--seed 7: lenet300.dense has no such seed in profile 'quick' (its seeds: 0); pass one of those, "
     "or add it to the experiment's seeds"),
    (["run", "lenet300.dense", "--seed", "0", "--seed", "-1"], "--seed -1: lenet300.dense has no such seed"),
    (["sweep", "lenet300.bc_ghs", "--seed", str(10**30)], f"--seed {10**30}: lenet300.bc_ghs has no such seed"),
    (["table1", "--jobs", "0"], "--jobs 0: must be at least 1 (the number of runs side by side); e.g. --jobs 2"),
    (["check", "--jobs", "-2"], "--jobs -2: must be at least 1"),
])
def test_a_bad_option_value_is_a_one_line_error(spec_file, capsys, argv, message):
    assert _main(spec_file, *argv, "--profile", "quick") == 2
    assert _one_error_line(capsys).startswith(f"error: {message}")
    assert not (spec_file.parent / "results").exists() and not (spec_file.parent / "fig").exists()


def test_diverged_training_is_an_error_and_not_a_result(spec_file, data_dir, capsys):
    spec_file.write_text(TINY.replace("batch_size = 64", "batch_size = 64\nlr = 1000.0"))
    assert _main(spec_file, "run", "lenet300.dense", "--profile", "quick", "--data-dir", str(data_dir),
                 "--no-progress") == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "error: training diverged at epoch 1: the mean training NLL is ")
    assert not result_dir(spec_file.parent / "results", "lenet300.dense", "quick", 0).exists()


def test_an_empty_checkpoint_makes_the_run_start_over_saying_so(spec_file, data_dir, capsys):
    spec = load_suite(spec_file).resolve("lenet300.dense", "quick")
    work = spec_file.parent / "results" / ".work" / "lenet300.dense" / "quick" / "seed0"
    work.mkdir(parents=True)
    (work / "spec_hash").write_text(spec.hash)
    (work / "checkpoint.pt").write_bytes(b"")
    assert _main(spec_file, "run", "lenet300.dense", "--profile", "quick", "--data-dir", str(data_dir),
                 "--no-progress") == 0
    assert (f"warning: checkpoint {work / 'checkpoint.pt'} is empty, truncated or corrupt (EOFError); deleted it; "
            "this run starts over from epoch 1") in capsys.readouterr().err
    assert (result_dir(spec_file.parent / "results", "lenet300.dense", "quick", 0) / "metrics.json").exists()


def test_a_model_file_that_would_run_code_is_refused_with_our_message(spec_file, data_dir, capsys, tmp_path):
    folder = _recorded(spec_file, "lenet300.dense")
    torch.save({"format": "bayescomp-model/1", "x": _RunsCode()}, folder / "model.pt")
    assert _main(spec_file, "run", "lenet300.bc_ghs", "--profile", "quick", "--data-dir", str(data_dir),
                 "--no-progress") == 2  # pretrained from that model
    out = capsys.readouterr()
    line = out.err.splitlines()[-1]
    assert line.startswith(f"error: {folder / 'model.pt'} was refused and not loaded: loading it would run code")
    assert "weights_only" not in out.err and "this ran on load" not in out.out
    assert not result_dir(spec_file.parent / "results", "lenet300.bc_ghs", "quick", 0).exists()


def test_a_posterior_file_that_would_run_code_is_refused_with_our_message(spec_file, data_dir, capsys):
    folder = _recorded(spec_file, "lenet300.bc_ghs")
    torch.save({"state_dict": _RunsCode()}, folder / "posterior.pt")
    assert _main(spec_file, "sweep", "lenet300.bc_ghs", "--profile", "quick", "--data-dir", str(data_dir),
                 "--no-progress") == 2
    out = capsys.readouterr()
    line = out.err.splitlines()[-1]
    assert line.startswith(f"error: {folder / 'posterior.pt'} was refused and not loaded")
    assert line.endswith("python -m reproduce run lenet300.bc_ghs --profile quick --seed 0 --force")  # the fix
    assert "weights_only" not in out.err and "this ran on load" not in out.out
    assert not (folder / "sweep.csv").exists()


@pytest.mark.parametrize("name, content, problem", [
    ("spec.json", '{"spec_hash": "ab', "is unreadable (JSONDecodeError: "),
    ("metrics.json", '{"error_pct": 1.', "is unreadable (JSONDecodeError: "),
    ("metrics.json", f'{{"metrics_format": {METRICS_FORMAT}, "error_pct": NaN, "nonzero_pct": 10.0}}',
     "records error_pct = nan, which is not a valid result"),
])
def test_a_damaged_results_file_is_named_and_no_table_is_written(spec_file, capsys, name, content, problem):
    folder = _recorded(spec_file, "lenet300.dense", **{name: content})
    assert _main(spec_file, "table1", "--profile", "quick", "--no-train") == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {folder / name} {problem}")
    assert line.endswith(f"; restore the folder (git checkout -- {folder}) or delete it and rerun: "
                         "python -m reproduce run lenet300.dense --profile quick --seed 0")
    assert not (spec_file.parent / "fig").exists()
