"""Contract over the registry: every method trains briefly and its `Compressed` is measurable.

A newly registered method is covered here without writing a test.
"""
from __future__ import annotations

import pytest
import torch

from bayescomp.method import Compressed
from bayescomp.metrics import summarize
from bayescomp.models import MODELS, prunable_layers
from bayescomp.train import TrainConfig, fit
from reproduce.registry import METHODS


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("model_name", ["lenet300", "lenet5_caffe"])
def test_every_method_trains_and_compresses(name, model_name, mnist):
    small = type(mnist)(mnist.name, mnist.train_x[:256], mnist.train_y[:256], mnist.val_x[:200], mnist.val_y[:200],
                        mnist.test_x[:200], mnist.test_y[:200], mnist.source)
    method = METHODS[name]()
    model = MODELS[model_name](layers=method.layers(), mean=small.mean, std=small.std)
    hist = fit(model, method, small, TrainConfig(epochs=2, batch_size=64), seed=0, progress=False)
    assert len(hist) == 2 and all(torch.isfinite(torch.tensor(r["train_loss"])) for r in hist)
    c = method.compress(model, small)
    assert isinstance(c, Compressed)
    assert list(c.layers) == [n for n, _ in prunable_layers(model)]
    metrics, exported = summarize(c, small, model_name)
    assert 0 <= metrics["error_pct"] <= 100 and 0 < metrics["nonzero_pct"] <= 100
    assert metrics["error_pct"] == metrics["error_masked_pct"]
    assert metrics["cr_fast"] >= 1.0 - 1e-9 and metrics["artifact_verified"] is True


def test_a_method_without_a_pretrained_start_says_so():
    """Method.init_from_pretrained: the variational and pruning methods implement it; Dense does not."""
    with pytest.raises(ValueError, match="'dense' cannot start from a pretrained model"):
        METHODS["dense"]().init_from_pretrained(MODELS["lenet300"](), MODELS["lenet300"]())
