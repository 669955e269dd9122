from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from bayescomp.method import Dense
from bayescomp.models import lenet300
from bayescomp.train import TrainConfig, TrainingDiverged, fit


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
