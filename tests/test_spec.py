from __future__ import annotations

import pytest

from reproduce.spec import DEFAULT_TOML, SpecError, load_suite

TINY = '''
[profiles.paper]
[profiles.quick]
epochs = 1
[[experiment]]
id = "lenet300.dense"
model = "lenet300"
dataset = "mnist"
method = "dense"
epochs = 3
'''


def _suite(tmp_path, text):
    path = tmp_path / "e.toml"
    path.write_text(text)
    return load_suite(path)


def test_packaged_experiments_are_valid():
    suite = load_suite(DEFAULT_TOML)
    for exp_id in suite.ids():
        assert exp_id == f"{suite.experiments[exp_id]['model']}.{suite.experiments[exp_id]['method']}"
        for p in suite.profiles:
            suite.resolve(exp_id, p)


def test_every_table_row_names_its_source():
    suite = load_suite(DEFAULT_TOML)
    for exp_id in suite.ids("table1"):
        for metric, target in suite.experiments[exp_id].get("targets", {}).items():
            assert target.get("source") and target.get("tag") in {"V", "D", "M", "X"}, (exp_id, metric)


def test_profile_overrides_apply_in_order(tmp_path):
    suite = _suite(tmp_path, TINY + "[experiment.quick]\nbatch_size = 7\n")
    assert suite.resolve("lenet300.dense", "paper").train.epochs == 3
    quick = suite.resolve("lenet300.dense", "quick")
    assert quick.train.epochs == 1 and quick.train.batch_size == 7


def test_typo_in_an_experiment_key_lists_valid_keys(tmp_path):
    with pytest.raises(SpecError, match="unknown key\\(s\\) 'epocs'.*valid keys: .*epochs"):
        _suite(tmp_path, TINY + "epocs = 4\n")


def test_unknown_method_lists_registered_ones(tmp_path):
    with pytest.raises(SpecError, match="unknown method 'bc_xyz'; valid: dense"):
        _suite(tmp_path, TINY.replace('method = "dense"', 'method = "bc_xyz"').replace("lenet300.dense", "lenet300.bc_xyz"))


def test_unknown_experiment_id_lists_valid_ids(tmp_path):
    with pytest.raises(SpecError, match="unknown experiment 'lenet300.dnse'; valid: lenet300.dense"):
        _suite(tmp_path, TINY).resolve("lenet300.dnse", "paper")


def test_bad_method_args_are_rejected(tmp_path):
    with pytest.raises(SpecError, match="bad method_args for 'dense'"):
        _suite(tmp_path, TINY + "method_args = { threshold = 3 }\n")


def test_hash_ignores_seeds_but_not_training(tmp_path):
    base = _suite(tmp_path, TINY).resolve("lenet300.dense", "paper").hash
    assert _suite(tmp_path, TINY + "seeds = [5, 6]\n").resolve("lenet300.dense", "paper").hash == base
    assert _suite(tmp_path, TINY + "lr = 0.5\n").resolve("lenet300.dense", "paper").hash != base


def test_hash_is_pinned(tmp_path):
    # A change here orphans every recorded result: bump RESULTS_FORMAT on purpose, never by accident.
    assert _suite(tmp_path, TINY).resolve("lenet300.dense", "paper").hash == PINNED


PINNED = "f880acd3c0cda176"
