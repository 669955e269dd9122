from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
import torch

from bayescomp.method import Dense
from bayescomp.models import lenet300
from bayescomp.train import EXPLODED_NLL_FACTOR, TrainConfig, TrainingDiverged, fit, kl_weight

REPO = Path(__file__).resolve().parent.parent


@dataclass
class _Exploding(Dense):
    name: ClassVar[str] = "exploding"

    def penalty(self, model):
        return torch.tensor(float("nan"))


def test_nan_loss_stops_with_epoch_and_step(mnist):
    with pytest.raises(TrainingDiverged, match="epoch 1, step 1;"):
        fit(lenet300(), _Exploding(), mnist, TrainConfig(epochs=1), seed=0, progress=False, train_subset=256)


@dataclass
class _KilledInEpoch3(Dense):
    name: ClassVar[str] = "killed"

    def on_epoch_end(self, model, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # stands in for kill -9: the third epoch's checkpoint is never written


def test_resumed_run_equals_uninterrupted_run(mnist, tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=64, lr_schedule="cosine")
    kw = dict(seed=1, progress=False, train_subset=512, test_subset=500)
    torch.manual_seed(0)
    full = lenet300()
    h_full = fit(full, Dense(), mnist, cfg, **kw)
    ckpt = tmp_path / "ckpt.pt"
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(lenet300(), _KilledInEpoch3(), mnist, cfg, checkpoint=ckpt, **kw)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    resumed = lenet300()  # a restart builds a fresh model; everything else comes from the checkpoint
    h_res = fit(resumed, Dense(), mnist, cfg, checkpoint=ckpt, **kw)
    assert [r["epoch"] for r in h_res] == [1, 2, 3, 4]
    assert [r["test_error_pct"] for r in h_res] == [r["test_error_pct"] for r in h_full]
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


def test_bad_optimizer_name_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: \\['adam', 'sgd'\\]"):
        TrainConfig(epochs=1, optimizer="adamw")


def test_a_finite_but_exploding_loss_is_divergence_and_leaves_no_checkpoint(mnist, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(TrainingDiverged, match="diverged at epoch 1: the mean training NLL is .* nats, above 23.0 "
                                               "\\(10 x ln 10, .*\\) although finite. Lower the learning rate"):
        fit(lenet300(), Dense(), mnist, TrainConfig(epochs=2, batch_size=32, lr=1e3), seed=0, progress=False,
            checkpoint=ckpt, train_subset=256, test_subset=100)
    assert not ckpt.exists()


def test_every_recorded_run_is_far_below_the_divergence_limit():
    """The divergence rule cannot fire on a normal run: in every recorded history (dense, pruning and the
    KL-dominated Bayesian ones alike) the mean training NLL stays below ln 10, a tenth of the limit."""
    histories = sorted((REPO / "results").glob("*/*/seed*/history.csv"))
    if not histories:
        pytest.skip("no recorded results")
    limit = EXPLODED_NLL_FACTOR * math.log(10)
    for path in histories:
        nll = pd.read_csv(path)["train_nll"]
        assert nll.max() < limit / EXPLODED_NLL_FACTOR, path


@pytest.mark.parametrize("content", ["empty", "truncated", "code", "not a checkpoint"])
def test_an_unreadable_checkpoint_is_deleted_and_the_run_starts_over(mnist, tmp_path, capsys, content):
    ckpt = tmp_path / "checkpoint.pt"
    if content == "code":
        torch.save({"model": _RunsCode()}, ckpt)
    elif content == "not a checkpoint":
        torch.save({"epoch": 1}, ckpt)
    else:
        torch.save({"model": lenet300().state_dict()}, ckpt)
        ckpt.write_bytes(b"" if content == "empty" else ckpt.read_bytes()[:5000])
    history = fit(lenet300(), Dense(), mnist, TrainConfig(epochs=1), seed=0, progress=False, checkpoint=ckpt,
                  train_subset=256, test_subset=100)
    assert [h["epoch"] for h in history] == [1]
    err = capsys.readouterr()
    assert f"warning: checkpoint {ckpt} " in err.err and "; deleted it; this run starts over from epoch 1" in err.err
    assert "weights_only" not in err.err and "this ran on load" not in err.out
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # the new run's own checkpoint


class _RunsCode:
    def __reduce__(self):
        return (print, ("this ran on load",))


@pytest.mark.parametrize("key, value, message", [("lr", True, "lr must be a finite number"),
                                                 ("batch_size", 1.0, "batch_size must be an integer"),
                                                 ("lr_milestones", "12", "lr_milestones must be a list of integers")])
def test_config_values_of_the_wrong_type_are_refused(key, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(epochs=1, **{key: value})


@pytest.mark.parametrize("warmup, start, weights", [
    (0, 0, [1, 1, 1]),
    (4, 0, [0.25, 0.5, 0.75, 1, 1]),
    (5, 2, [0, 0, 1 / 3, 2 / 3, 1, 1]),  # 0 for 2 epochs, 1 from the 5th epoch (index 4)
])
def test_kl_weight_by_epoch(warmup, start, weights):
    cfg = TrainConfig(epochs=len(weights), kl_warmup_epochs=warmup, kl_warmup_start=start)
    assert [kl_weight(cfg, e) for e in range(len(weights))] == pytest.approx(weights)


def test_a_warmup_start_at_or_after_its_end_is_refused():
    with pytest.raises(ValueError, match="kl_warmup_start must be >= 0 and below kl_warmup_epochs"):
        TrainConfig(epochs=9, kl_warmup_epochs=5, kl_warmup_start=5)


_FAULTS_PER_STEP = """
import resource, sys, torch, torch.nn.functional as F
from bayescomp.models import lenet300
from bayescomp.train import keep_freed_memory
from reproduce.registry import METHODS
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
method = METHODS["bc_gnj"]()
model = lenet300(layers=method.layers())
opt = torch.optim.Adam(model.parameters(), fused=True)
x, y = torch.rand(128, 784), torch.randint(0, 10, (128,))
def step():
    opt.zero_grad()
    (F.cross_entropy(model(x), y) + method.penalty(model) / 6e4).backward()
    opt.step()
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_keep_freed_memory_stops_the_page_faults_of_every_training_step():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    faults = {mode: float(subprocess.run([sys.executable, "-c", _FAULTS_PER_STEP, mode], capture_output=True,
                                         text=True, check=True, env=env, cwd=REPO).stdout)
              for mode in ("keep", "default")}
    assert faults["default"] > 100  # glibc's default: the step's large tensors are mmapped afresh each time
    assert faults["keep"] < faults["default"] / 10
