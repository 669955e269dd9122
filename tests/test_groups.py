"""reproduce/groups.py: what a recorded BC posterior pays per kept and pruned group."""
from __future__ import annotations

import json

import torch

from bayescomp.artifact import load_plain
from reproduce.__main__ import main
from reproduce.groups import group_table, render_groups
from reproduce.results import artifact, result_dir
from reproduce.spec import load_suite
from tests.test_reproduce import BC, TINY

TRIAL = '''
[[trial]]
name = "wider"
experiment = "lenet300.bc_ghs"
set = { epochs = 1, method_args = { clip_var = inf } }
'''


def test_group_table_splits_every_group_at_the_runs_thresholds_and_sums_its_kl_parts(tmp_path, data_dir):
    spec_file = tmp_path / "e.toml"
    spec_file.write_text(TINY + BC + TRIAL)
    root = tmp_path / "results"
    assert main(["run", "lenet300.bc_ghs", "--profile", "quick", "--spec", str(spec_file), "--results-dir", str(root),
                 "--data-dir", str(data_dir), "--no-progress"]) == 0
    suite = load_suite(spec_file)
    spec = suite.resolve("lenet300.bc_ghs", "quick")
    table = group_table(spec, 0, root).set_index(["layer", "groups"])
    folder = result_dir(root, spec.id, "quick", 0)
    thresholds = json.loads((folder / "details.json").read_text())["thresholds"]
    for (layer, groups), thr in zip(((("fc1", 784), ("fc2", 300), ("fc3", 100))), thresholds):
        assert table.loc[(layer, "kept"), "n"] + table.loc[(layer, "pruned"), "n"] == groups
        if table.loc[(layer, "kept"), "n"]:
            assert table.loc[(layer, "kept"), "statistic"] < thr
    # fc3's variance part of the weight KL, by hand from the posterior: ½ Σ (σ² − log σ² − 1) per input unit
    state = load_plain(artifact(folder, "posterior"), "rerun")["state_dict"]
    logvar = state["fc3.weight_logvar"].double()
    per_group = 0.5 * (logvar.exp() - logvar - 1).sum(0)
    stat = torch.tensor(json.loads((folder / "details.json").read_text())["statistic"]["fc3"], dtype=torch.float64)
    kept = per_group[stat < thresholds[2]]
    assert table.loc[("fc3", "kept"), "kl_var_part"] == float(kept.median())


def test_render_groups_writes_the_rows_and_each_finished_trial_of_the_paper_profile(tmp_path, data_dir):
    spec_file = tmp_path / "e.toml"
    spec_file.write_text(TINY.replace("[profiles.paper]", "[profiles.paper]\ntrain_subset = 512\ntest_subset = 500")
                         + BC + TRIAL)
    root = tmp_path / "results"
    args = ["--spec", str(spec_file), "--results-dir", str(root), "--figures-dir", str(tmp_path / "fig"),
            "--data-dir", str(data_dir), "--no-progress"]
    assert main(["run", "lenet300.bc_ghs", *args]) == 0
    suite = load_suite(spec_file)
    written = render_groups(suite, "paper", root, tmp_path / "fig")
    assert sorted(p.name for p in written) == ["groups_lenet300_bc_ghs.csv", "groups_lenet300_bc_ghs.md"]
    assert main(["trial", "wider", *args]) == 0
    written = render_groups(suite, "paper", root, tmp_path / "fig")
    assert "groups_lenet300_bc_ghs_trial.wider.csv" in {p.name for p in written}
    assert "[trial.wider] seed 0" in (tmp_path / "fig" / "groups_lenet300_bc_ghs_trial.wider.md").read_text()
