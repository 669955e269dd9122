from __future__ import annotations

import pytest

from reproduce.spec import DEFAULT_TOML, SpecError, load_suite, train_command

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


def test_a_renamed_method_arg_is_rejected_naming_its_new_name(tmp_path):
    svd = TINY.replace('method = "dense"', 'method = "sparse_vd"').replace("lenet300.dense", "lenet300.sparse_vd")
    with pytest.raises(SpecError, match="logvar_lr_mult is now called scale_lr_mult"):
        _suite(tmp_path, svd + "method_args = { logvar_lr_mult = 10 }\n")
    assert _suite(tmp_path, svd + "method_args = { scale_lr_mult = 10 }\n")  # the name now


@pytest.mark.parametrize("line, message", [
    ('lr = "fast"', "lr must be a finite number \\(e.g. lr = 0.001\\), got 'fast' \\(str\\)"),
    ("epochs = 2.5", "epochs must be an integer \\(e.g. epochs = 10\\), got 2.5 \\(float\\)"),
    ('batch_size = "128"', "batch_size must be an integer \\(e.g. batch_size = 128\\), got '128' \\(str\\)"),
    ('lr_milestones = "1"',  # was read as ('1',): the lr never decayed
     "lr_milestones must be a list of integers \\(e.g. lr_milestones = \\[80, 120\\]\\), got '1'"),
    ("lr_milestones = [0]", "lr_milestones must be a list of epochs >= 1"),
    ("augment = 1", "augment must be true or false"),
    ("lr = true", "lr must be a finite number .*got True \\(bool\\)"),  # True is an int in Python, not here
    ("lr = -0.1", "lr must be > 0"),
    ("seeds = 0", "seeds must be a non-empty list of distinct integers from 0 to 2147483647 "
                  "\\(e.g. seeds = \\[0, 1, 2\\]\\), got 0 \\(int\\)"),
    ("seeds = [-1]", "seeds must be a non-empty list of distinct integers"),
    ("seeds = [0, 0]", "seeds must be a non-empty list of distinct integers"),
    ("seeds = [99999999999]", "seeds must be a non-empty list of distinct integers from 0 to 2147483647"),
    ("seeds = [true]", "seeds must be"),
    ("train_subset = 0", "train_subset must be a positive integer"),
    ('test_subset = "500"', "test_subset must be a positive integer"),
    ("val_size = 0", "val_size must be a positive integer"),
    ("method_args = 3", "method_args must be a table"),
    ("needs_gpu = 1", "needs_gpu must be true or false"),
    ("cpu_epoch_seconds = -2", "cpu_epoch_seconds must be a positive number"),
])
def test_a_value_of_the_wrong_type_or_range_names_experiment_key_and_type(tmp_path, line, message):
    with pytest.raises(SpecError, match=f"^experiment 'lenet300.dense', profile 'paper': {message}"):
        _suite(tmp_path, TINY.replace("epochs = 3", line) if line.startswith("epochs") else TINY + line + "\n")


def test_a_bad_value_in_a_profile_names_that_profile(tmp_path):
    with pytest.raises(SpecError, match="experiment 'lenet300.dense', profile 'quick': lr must be a finite number"):
        _suite(tmp_path, TINY + '[experiment.quick]\nlr = "fast"\n')


def test_well_typed_values_are_kept_as_written(tmp_path):
    spec = _suite(tmp_path, TINY + "lr = 1\nlr_milestones = [2, 3]\nseeds = [4, 0]\nval_size = 50\n").resolve(
        "lenet300.dense", "paper")
    assert spec.train.lr == 1 and spec.train.lr_milestones == (2, 3) and spec.seeds == (4, 0) and spec.val_size == 50


def test_hash_ignores_seeds_but_not_training(tmp_path):
    base = _suite(tmp_path, TINY).resolve("lenet300.dense", "paper").hash
    assert _suite(tmp_path, TINY + "seeds = [5, 6]\n").resolve("lenet300.dense", "paper").hash == base
    assert _suite(tmp_path, TINY + "lr = 0.5\n").resolve("lenet300.dense", "paper").hash != base


def test_a_training_key_added_later_changes_the_hash_only_when_set(tmp_path):
    base = _suite(tmp_path, TINY + "kl_warmup_epochs = 4\n").resolve("lenet300.dense", "paper").hash
    assert _suite(tmp_path, TINY + "kl_warmup_epochs = 4\nkl_warmup_start = 0\n").resolve(
        "lenet300.dense", "paper").hash == base
    assert _suite(tmp_path, TINY + "kl_warmup_epochs = 4\nkl_warmup_start = 2\n").resolve(
        "lenet300.dense", "paper").hash != base


def test_hash_is_pinned(tmp_path):
    # A change here orphans every recorded result: bump RESULTS_FORMAT on purpose, never by accident.
    assert _suite(tmp_path, TINY).resolve("lenet300.dense", "paper").hash == PINNED


PINNED = "f880acd3c0cda176"


def test_train_command_names_the_profile_or_the_trial():
    assert train_command("lenet300.bc_gnj", "paper") == "python -m reproduce run lenet300.bc_gnj --profile paper"
    assert (train_command("lenet300.bc_gnj", "paper", seed=2, force=True)
            == "python -m reproduce run lenet300.bc_gnj --profile paper --seed 2 --force")
    # a trial's command trains each of its seeds that is not current: no seed or force to pass
    assert train_command("lenet300.bc_gnj", "trial.l300_gnj_linear", seed=2, force=True) == (
        "python -m reproduce trial l300_gnj_linear")
