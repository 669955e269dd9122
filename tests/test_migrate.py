"""A result is current only if what it was built from is current; recorded results migrate, not retrain."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from bayescomp.metrics import METRICS_FORMAT
from reproduce.__main__ import main
from reproduce.migrate import migrate, migrate_metrics
from reproduce.results import load_result, result_dir, run_lock, status
from reproduce.spec import content_hash, load_suite
from tests.test_reproduce import BC, TINY


def _record(root: Path, spec, seed: int, spec_hash: str, finished: str, wall: float) -> None:
    """A results folder as run_one leaves it (only what status and migrate read)."""
    d = result_dir(root, spec.id, spec.profile, seed)
    d.mkdir(parents=True)
    content = {k: v for k, v in spec.hashed_content().items() if k != "pretrain_hash"}
    (d / "spec.json").write_text(json.dumps({"spec_hash": spec_hash, "spec": content, "finished": finished,
                                             "wall_seconds": wall}))
    (d / "history.csv").write_text("epoch\n1\n")
    (d / "metrics.json").write_text("{}")


def test_a_changed_pretrain_spec_makes_its_dependents_stale(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text(TINY + BC)
    before = load_suite(path).resolve("lenet300.bc_ghs", "quick")
    path.write_text((TINY + BC).replace("epochs = 2", "epochs = 3", 1))  # only the dense experiment changes
    after = load_suite(path).resolve("lenet300.bc_ghs", "quick")
    assert before.hashed_content()["pretrain"] == after.hashed_content()["pretrain"]
    assert before.hash != after.hash
    root = tmp_path / "results"
    _record(root, before, 0, before.hash, "2026-01-01T10:00:00+0000", 60)
    assert status(root, before, 0) == "current" and status(root, after, 0) == "stale"


def test_migrate_records_the_pretrain_hash_only_where_the_pretrain_is_unchanged(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text(TINY + BC)
    suite = load_suite(path)
    dense, bc = suite.resolve("lenet300.dense", "quick"), suite.resolve("lenet300.bc_ghs", "quick")
    old_bc_hash = content_hash({k: v for k, v in bc.hashed_content().items() if k != "pretrain_hash"})
    root = tmp_path / "results"
    # seed 0: dense recorded before the BC run started -> migrated
    _record(root, dense, 0, dense.hash, "2026-01-01T10:00:00+0000", 30)
    _record(root, bc, 0, old_bc_hash, "2026-01-01T11:00:00+0000", 600)
    # seed 1: dense re-recorded after the BC run started -> the BC run used another model: stays stale
    _record(root, dense, 1, dense.hash, "2026-01-01T12:00:00+0000", 30)
    _record(root, bc, 1, old_bc_hash, "2026-01-01T11:00:00+0000", 600)
    # seed 2: dense recorded under another spec -> stays stale
    _record(root, dense, 2, "0123456789abcdef", "2026-01-01T10:00:00+0000", 30)
    _record(root, bc, 2, old_bc_hash, "2026-01-01T11:00:00+0000", 600)
    assert [status(root, bc, s) for s in (0, 1, 2)] == ["stale"] * 3

    outcomes = {(i, s): o for i, _, s, o in migrate(suite, root)}
    assert outcomes[("lenet300.bc_ghs", 0)] == "migrated"
    assert "recorded after this run started" in outcomes[("lenet300.bc_ghs", 1)]
    assert "not current" in outcomes[("lenet300.bc_ghs", 2)]
    assert [status(root, bc, s) for s in (0, 1, 2)] == ["current", "stale", "stale"]
    record = json.loads((result_dir(root, bc.id, "quick", 0) / "spec.json").read_text())
    assert record["spec"]["pretrain_hash"] == dense.hash
    assert record["migrations"][0]["from"] == old_bc_hash
    again = {(i, s): o for i, _, s, o in migrate(suite, root)}  # idempotent
    assert again[("lenet300.bc_ghs", 0)] == "current" and again[("lenet300.bc_ghs", 1)] == outcomes[("lenet300.bc_ghs", 1)]


def test_migrate_verb_prints_one_line_per_folder(tmp_path, capsys):
    path = tmp_path / "e.toml"
    path.write_text(TINY + BC)
    suite = load_suite(path)
    dense = suite.resolve("lenet300.dense", "quick")
    _record(tmp_path / "results", dense, 0, dense.hash, "2026-01-01T10:00:00+0000", 30)
    assert main(["migrate", "--spec", str(path), "--results-dir", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "lenet300.dense" in out and "seed0: current" in out


SVD = '''
[[experiment]]
id = "lenet300.sparse_vd"
table = "table1"
model = "lenet300"
dataset = "mnist"
method = "sparse_vd"
method_args = { scale_lr_mult = 10 }
pretrain = "lenet300.dense"
epochs = 1
'''


def _former(spec, **method_args) -> dict:
    """spec's hashed content as recorded before `scale_lr_mult` was Sparse VD's name."""
    return {**spec.hashed_content(), "method_args": method_args}


def test_migrate_relabels_results_and_resume_points_recorded_under_a_renamed_method_arg(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text(TINY + BC + SVD)
    suite = load_suite(path)
    svd, bc = suite.resolve("lenet300.sparse_vd", "quick"), suite.resolve("lenet300.bc_ghs", "quick")
    root = tmp_path / "results"
    old = _former(svd, logvar_lr_mult=10)
    for seed, content in ((0, old), (1, _former(svd, logvar_lr_mult=5))):  # seed 1: another value, stays stale
        d = result_dir(root, svd.id, "quick", seed)
        d.mkdir(parents=True)
        (d / "spec.json").write_text(json.dumps({"spec_hash": content_hash(content), "spec": content}))
        (d / "history.csv").write_text("epoch\n1\n")
        (d / "metrics.json").write_text("{}")
    state = {"fc1.weight_mu": torch.randn(3, 2)}
    torch.save({"format": "bayescomp-posterior/1", "method_args": {"logvar_lr_mult": 10}, "state_dict": state},
               result_dir(root, svd.id, "quick", 0) / "posterior.pt")
    work = root / ".work"
    for exp_id, h in ((svd.id, content_hash(old)), (bc.id, bc.hash)):
        (work / exp_id / "quick" / "seed0").mkdir(parents=True)
        (work / exp_id / "quick" / "seed0" / "spec_hash").write_text(h)
    assert [status(root, svd, s) for s in (0, 1)] == ["stale", "stale"]

    outcomes = {(i, p, s): o for i, p, s, o in migrate(suite, root)}
    assert outcomes[(svd.id, "quick", 0)] == "migrated (method_args renamed: logvar_lr_mult -> scale_lr_mult)"
    assert outcomes[(svd.id, "quick", 1)].startswith("stale")
    assert outcomes[(svd.id, ".work/quick", 0)].startswith("migrated")
    assert outcomes[(bc.id, ".work/quick", 0)] == "current"
    assert [status(root, svd, s) for s in (0, 1)] == ["current", "stale"]
    record = json.loads((result_dir(root, svd.id, "quick", 0) / "spec.json").read_text())
    assert record["spec"]["method_args"] == {"scale_lr_mult": 10} and content_hash(record["spec"]) == svd.hash
    assert record["migrations"][-1]["from"] == content_hash(old)
    post = torch.load(result_dir(root, svd.id, "quick", 0) / "posterior.pt", weights_only=True)
    assert post["method_args"] == {"scale_lr_mult": 10} and torch.equal(post["state_dict"]["fc1.weight_mu"],
                                                                         state["fc1.weight_mu"])
    assert (work / svd.id / "quick" / "seed0" / "spec_hash").read_text() == svd.hash
    assert (work / bc.id / "quick" / "seed0" / "spec_hash").read_text() == bc.hash
    again = {(i, p, s): o for i, p, s, o in migrate(suite, root)}  # idempotent
    assert again[(svd.id, "quick", 0)] == "current" and again[(svd.id, ".work/quick", 0)] == "current"


FORMAT_1 = {"error_pct": 1.7, "nonzero_pct": 8.25, "architecture": "784-300-100", "cr_fast": 12.5,
            "flops_dense": 266200, "flops_pruned": 34691, "test_images": 10000, "coding": [{"dense": 235200}]}


def test_migrate_renames_format_1_metrics_in_place_and_is_idempotent_also_for_files_written_later(tmp_path):
    """Format 1 (no metrics_format) named the multiply-adds flops_*: renamed in place, nothing else changes;
    a rerun changes nothing, and migrates a format-1 file that older code wrote after the first run."""
    root = tmp_path / "results"
    folders = [root / "lenet300.dense" / "paper" / "seed0", root / "lenet300.bc_gnj" / "trial.x" / "seed1"]
    for d in folders:
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(FORMAT_1, indent=2) + "\n")
    (root / ".work" / "x" / "paper" / "seed0").mkdir(parents=True)  # hidden: never a results folder
    (root / ".work" / "x" / "paper" / "seed0" / "metrics.json").write_text("{}")

    outcomes = dict(migrate_metrics(root))
    assert outcomes == {"lenet300.bc_gnj/trial.x/seed1": "migrated (metrics format 1 -> 2: flops_dense -> macs_dense, "
                                                         "flops_pruned -> macs_pruned)",
                        "lenet300.dense/paper/seed0": outcomes["lenet300.bc_gnj/trial.x/seed1"]}
    text = (folders[0] / "metrics.json").read_text()
    renamed = {"macs_dense" if k == "flops_dense" else "macs_pruned" if k == "flops_pruned" else k: v
               for k, v in FORMAT_1.items()}
    assert text == json.dumps({"metrics_format": METRICS_FORMAT, **renamed}, indent=2) + "\n"  # same order and values
    assert dict(migrate_metrics(root)) == {str(d.relative_to(root)): "current" for d in folders}
    assert (folders[0] / "metrics.json").read_text() == text

    (folders[0] / "metrics.json").write_text(json.dumps(FORMAT_1, indent=2) + "\n")  # older code ran it again
    with run_lock(folders[1], wait=False):  # a run holds this one: left for the next rerun
        again = dict(migrate_metrics(root))
    assert again["lenet300.dense/paper/seed0"].startswith("migrated")
    assert again["lenet300.bc_gnj/trial.x/seed1"].startswith("left for now (its run holds the lock)")
    assert (folders[0] / "metrics.json").read_text() == text


def test_tables_refuse_format_1_metrics_naming_migrate_which_fixes_them(tmp_path, capsys):
    path = tmp_path / "e.toml"
    path.write_text(TINY + BC)
    suite = load_suite(path)
    dense = suite.resolve("lenet300.dense", "quick")
    root = tmp_path / "results"
    _record(root, dense, 0, dense.hash, "2026-01-01T10:00:00+0000", 30)
    metrics = result_dir(root, dense.id, "quick", 0) / "metrics.json"
    metrics.write_text(json.dumps({**FORMAT_1, "bits": "32-32-32", "cr_max": 1.0}))
    common = ["--spec", str(path), "--results-dir", str(root), "--figures-dir", str(tmp_path / "fig")]
    assert main(["table1", "--profile", "quick", "--no-train", *common]) == 2
    err = capsys.readouterr().err
    assert f"error: {metrics} is in metrics format 1, this code reads format {METRICS_FORMAT}" in err
    assert f"python -m reproduce migrate --results-dir {root}" in err
    assert main(["migrate", *common]) == 0
    assert "lenet300.dense/quick/seed0/metrics.json: migrated" in capsys.readouterr().out
    assert load_result(root, dense, 0)["macs_dense"] == 266200



TRIAL = '''
[[trial]]
name = "t"
experiment = "lenet300.bc_ghs"
base = "quick"
set = { epochs = 2, method_args = { scale_lr_mult = 1 } }
'''


def test_migrate_relabels_results_and_resume_points_whose_method_args_now_state_their_defaults(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text(TINY + BC + TRIAL)
    before = load_suite(path)
    root = tmp_path / "results"
    # a trial result and a quick resume point, recorded before the defaults were written out
    trial = before.resolve_trial("t")
    _record(root, trial, 0, trial.hash, "2026-01-01T10:00:00+0000", 60)
    quick = before.resolve("lenet300.bc_ghs", "quick")
    (root / ".work" / quick.id / "quick" / "seed0").mkdir(parents=True)
    (root / ".work" / quick.id / "quick" / "seed0" / "spec_hash").write_text(quick.hash)
    # now BC's default clip_var = 0.04 is spelt out, in the experiment and in the trial
    path.write_text((TINY + BC + TRIAL).replace('method = "bc_ghs"\n', 'method = "bc_ghs"\nmethod_args = { clip_var = 0.04 }\n')
                    .replace("scale_lr_mult = 1 }", "scale_lr_mult = 1, clip_var = 0.04 }"))
    after = load_suite(path)
    assert after.resolve_trial("t").hash != trial.hash
    lines = {(p, o) for _, p, _, o in migrate(after, root)}
    assert ("trial.t", "migrated (method_args now state their defaults: clip_var = 0.04)") in lines
    assert (".work/quick", "migrated (method_args now state their defaults: clip_var = 0.04)") in lines
    assert status(root, after.resolve_trial("t"), 0) == "current"
    assert (root / ".work" / quick.id / "quick" / "seed0" / "spec_hash").read_text() == after.resolve(quick.id, "quick").hash
    assert {o for _, _, _, o in migrate(after, root)} == {"current"}  # idempotent
    # a real change is never relabelled
    path.write_text((TINY + BC + TRIAL).replace("scale_lr_mult = 1 }", "scale_lr_mult = 2 }"))
    assert any(o.startswith("stale") for _, p, _, o in migrate(load_suite(path), root) if p == "trial.t")
