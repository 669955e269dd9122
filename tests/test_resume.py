"""Runs that outlive their machine: stop at a deadline, carry the resume point, finish elsewhere."""
from __future__ import annotations

import json
import shutil
import time
from datetime import datetime

import pytest
import torch

from bayescomp.artifact import ArtifactError
from bayescomp.train import TrainingPaused
from reproduce.__main__ import main
from reproduce.results import result_dir, resume_epoch, resume_point
from reproduce.run import parse_deadline, run_one
from reproduce.spec import load_suite
from tests.test_reproduce import TINY


def _tiny_dense(tmp_path, data_dir):
    """The tiny spec's lenet300.dense in profile quick (2 epochs), and run_one's keywords for it."""
    path = tmp_path / "e.toml"
    path.write_text(TINY)
    suite = load_suite(path)
    return suite, suite.resolve("lenet300.dense", "quick"), dict(data_dir=str(data_dir), progress=False, device="cpu")


def test_a_run_paused_at_its_deadline_and_resumed_elsewhere_equals_an_uninterrupted_one(tmp_path, data_dir):
    suite, spec, kw = _tiny_dense(tmp_path, data_dir)

    whole = run_one(suite, spec, 0, tmp_path / "a", **kw)

    first = tmp_path / "b"
    with pytest.raises(TrainingPaused) as paused:
        run_one(suite, spec, 0, first, deadline=time.time(), **kw)  # any epoch would overrun: stop after the first
    assert paused.value.epochs_done == 1 and paused.value.checkpoint.exists()
    assert not result_dir(first, spec.id, "quick", 0).exists()  # a paused run is not a result
    other_machine = tmp_path / "c"
    shutil.copytree(first, other_machine)  # what a commit and a fresh clone carry
    resumed = run_one(suite, spec, 0, other_machine, **kw)

    assert resumed == whole
    assert not (other_machine / ".work" / spec.id / "quick" / "seed0").exists()  # resume point removed when done
    record = json.loads((result_dir(other_machine, spec.id, "quick", 0) / "spec.json").read_text())
    assert [s["epochs"] for s in record["segments"]] == [[1, 2]]  # same host: one segment over both sessions


def test_a_run_resumed_with_other_cpu_threads_records_both_segments(tmp_path, data_dir):
    suite, spec, kw = _tiny_dense(tmp_path, data_dir)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(TrainingPaused):
            run_one(suite, spec, 0, tmp_path, deadline=time.time(), **kw)
        torch.set_num_threads(2)
        run_one(suite, spec, 0, tmp_path, **kw)
    finally:
        torch.set_num_threads(saved)
    record = json.loads((result_dir(tmp_path, spec.id, "quick", 0) / "spec.json").read_text())
    assert [(s["epochs"], s["threads"]) for s in record["segments"]] == [([1, 1], 1), ([2, 2], 2)]


def test_run_stop_at_exits_3_and_says_how_to_continue(tmp_path, data_dir, capsys):
    path = tmp_path / "e.toml"
    path.write_text(TINY)
    args = ["run", "lenet300.dense", "--profile", "quick", "--spec", str(path), "--results-dir",
            str(tmp_path / "r"), "--data-dir", str(data_dir), "--no-progress", "--device", "cpu"]
    assert main([*args, "--stop-at", "+0s"]) == 3
    err = capsys.readouterr().err
    assert "paused after epoch 1/2" in err and "rerun the same command" in err
    assert "lenet300.dense [quick] seed 0: epoch 1/2, KL per example 0, val error" in err  # a log line per epoch
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "epoch 1/2" not in err  # resumed after epoch 1
    assert (tmp_path / "r" / "lenet300.dense" / "quick" / "seed0" / "metrics.json").exists()


def test_stop_at_forms():
    now = 1_000_000.0
    assert parse_deadline("+90m", now) == now + 5400
    assert parse_deadline("+2h", now) == now + 7200
    assert parse_deadline("+30s", now) == now + 30
    noon = datetime(2026, 11, 29, 12, 0).timestamp()
    assert parse_deadline("12:50", noon) == noon + 50 * 60  # later today
    assert parse_deadline("11:30", noon) == noon - 30 * 60  # passed half an hour ago: past, not tomorrow
    assert parse_deadline("01:00", datetime(2026, 11, 29, 23, 0).timestamp()) == datetime(2026, 11, 30, 1, 0).timestamp()
    with pytest.raises(ValueError, match="not a time"):
        parse_deadline("soon", now)


@pytest.mark.parametrize("damage", ["no spec_hash", "another spec_hash"])
def test_a_resume_point_not_vouched_for_by_its_spec_hash_is_not_resumed(tmp_path, data_dir, damage):
    suite, spec, kw = _tiny_dense(tmp_path, data_dir)
    with pytest.raises(TrainingPaused):
        run_one(suite, spec, 0, tmp_path, deadline=time.time(), **kw)
    hash_file = tmp_path / ".work" / spec.id / "quick" / "seed0" / "spec_hash"
    if damage == "no spec_hash":
        hash_file.unlink()
    else:
        hash_file.write_text("0123456789abcdef\n")
    with pytest.raises(TrainingPaused) as paused:  # started over: paused after epoch 1 again, not finished
        run_one(suite, spec, 0, tmp_path, deadline=time.time(), **kw)
    assert paused.value.epochs_done == 1 and hash_file.read_text().strip() == spec.hash


def test_a_resume_point_reads_back_its_epoch_and_a_corrupt_one_names_the_fix(tmp_path, data_dir):
    path = tmp_path / "e.toml"
    path.write_text(TINY)
    spec = load_suite(path).resolve("lenet300.dense", "quick")
    assert resume_point(tmp_path, spec, 0) is None and resume_epoch(tmp_path, spec, 0) is None  # none yet
    with pytest.raises(TrainingPaused):
        run_one(load_suite(path), spec, 0, tmp_path, deadline=time.time(), data_dir=str(data_dir), progress=False,
                device="cpu")
    state = resume_point(tmp_path, spec, 0)
    assert state["epoch"] == 1 and len(state["history"]) == 1 and resume_epoch(tmp_path, spec, 0) == 1
    checkpoint = tmp_path / ".work" / spec.id / "quick" / "seed0" / "checkpoint.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match=f"rm {checkpoint}"):
        resume_point(tmp_path, spec, 0)
    assert resume_epoch(tmp_path, spec, 0) is None  # a table shows no progress rather than failing
