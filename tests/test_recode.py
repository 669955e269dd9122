"""A run writes model.bcw beside model.pt; `python -m reproduce recode` rewrites it and CR max from
model.pt alone, changes no other number, skips what it cannot or must not touch, and is idempotent."""
from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pytest
import torch

from bayescomp.coding import decode
from reproduce.__main__ import main
from tests.test_reproduce import BC, TINY

RECODED = ("cr_max", "cr_max_entropy", "artifact_bytes", "artifact_positions_bytes", "artifact_values_bytes",
           "artifact_header_bytes", "artifact_verified", "coding")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir) -> Path:
    """A dense and a BC-GHS run of the tiny quick profile (seconds)."""
    tmp = tmp_path_factory.mktemp("recode")
    spec = tmp / "e.toml"
    spec.write_text(TINY + BC)
    args = ["--profile", "quick", "--spec", str(spec), "--results-dir", str(tmp / "results"),
            "--data-dir", str(data_dir), "--no-progress"]
    assert main(["run", "lenet300.bc_ghs", *args]) == 0  # trains its dense model first
    return tmp / "results"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(folder / "model.pt", weights_only=True)["state_dict"]
    return {k[:-len(".weight")]: v for k, v in sd.items() if k.endswith(".weight") and v.dim() > 1}


def test_a_run_writes_the_weight_file_that_cr_max_measures(runs):
    for exp_id in ("lenet300.dense", "lenet300.bc_ghs"):
        folder = runs / exp_id / "quick" / "seed0"
        metrics = json.loads((folder / "metrics.json").read_text())
        size = (folder / "model.bcw").stat().st_size
        assert metrics["artifact_bytes"] == size and metrics["artifact_verified"] is True
        assert metrics["cr_max"] == pytest.approx(32 * metrics["n_weights_dense"] / (8 * size))
        back, weights = decode(folder / "model.bcw"), _weights(folder)
        assert list(back) == list(weights) and all(torch.equal(back[n], w) for n, w in weights.items())
        assert sum(c["bytes"] for c in metrics["coding"]) == size
    coding = json.loads((runs / "lenet300.bc_ghs" / "quick" / "seed0" / "metrics.json").read_text())["coding"]
    assert {c["values"] for c in coding} == {"grid"} and all(c["t"] is not None for c in coding)


def test_recode_rewrites_only_the_cr_max_fields_and_is_idempotent(runs, tmp_path, capsys):
    root = tmp_path / "results"
    shutil.copytree(runs, root, ignore=shutil.ignore_patterns(".work"))
    folder = root / "lenet300.bc_ghs" / "quick" / "seed0"
    before = json.loads((folder / "metrics.json").read_text())
    written = (folder / "model.bcw").read_bytes()
    (folder / "model.bcw").unlink()
    doctored = {**before, "cr_max": 1.0}
    for k in RECODED[1:]:
        doctored.pop(k)  # as recorded by the previous encoder
    (folder / "metrics.json").write_text(json.dumps(doctored))
    assert main(["recode", "--results-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "CR max old" in out and "lenet300.bc_ghs/quick/seed0" in out and "lenet300.dense/quick/seed0" in out
    after = json.loads((folder / "metrics.json").read_text())
    assert (folder / "model.bcw").read_bytes() == written  # the run's bytes, from model.pt alone
    assert {k: v for k, v in after.items() if k not in RECODED} == {k: v for k, v in before.items() if k not in RECODED}
    assert all(after[k] == before[k] for k in RECODED)
    assert not [p for p in folder.parent.iterdir() if p.name != "seed0"]  # no temporary folder left
    assert main(["recode", "--results-dir", str(root), "--profile", "quick"]) == 0
    assert (folder / "model.bcw").read_bytes() == written and json.loads((folder / "metrics.json").read_text()) == after


def test_recode_skips_a_folder_without_its_model_and_one_being_trained(runs, tmp_path, capsys):
    root = tmp_path / "results"
    shutil.copytree(runs, root, ignore=shutil.ignore_patterns(".work"))
    large = root / "lenet300.dense" / "quick" / "seed0"
    (large / "model.pt").unlink()  # a model over 5 MB, not in git
    busy = root / "lenet300.bc_ghs" / "quick" / "seed0"
    metrics = (busy / "metrics.json").read_text()
    (root / ".work").mkdir(exist_ok=True)
    with open(root / ".work" / "lenet300.bc_ghs-quick-seed0.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as run_one holds it while training
        assert main(["recode", "--results-dir", str(root)]) == 0
    err = capsys.readouterr().err
    assert "lenet300.dense/quick/seed0: skipped, no model.pt here" in err
    assert "lenet300.bc_ghs/quick/seed0: skipped, being trained" in err
    assert (busy / "metrics.json").read_text() == metrics
