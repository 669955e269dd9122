"""The variational base shared by BC-GNJ, BC-GHS and Sparse VD: penalty, learning rates, layers."""
from __future__ import annotations

import pytest
import torch

from baselines.sparse_vd import SparseVD
from bayescomp.bc import BCGroupHS, BCGroupNJ
from bayescomp.layers import BayesLayer
from bayescomp.models import lenet5_caffe, prunable_layers
from bayescomp.variational import VariationalMethod, bayes_layers
from reproduce.registry import METHODS

VARIATIONAL = [BCGroupNJ, BCGroupHS, SparseVD]


def test_the_variational_methods_are_the_registered_subclasses_of_the_base():
    assert {m for m in METHODS.values() if issubclass(m, VariationalMethod)} == set(VARIATIONAL)


@pytest.mark.parametrize("method_cls", VARIATIONAL)
def test_penalty_is_the_sum_of_the_layers_kl(method_cls):
    method = method_cls()
    model = lenet5_caffe(layers=method.layers())
    layers = bayes_layers(model)
    assert [n for n, _ in layers] == [n for n, _ in prunable_layers(model)]  # every layer is Bayesian
    assert all(isinstance(m, BayesLayer) for _, m in layers)
    expected = sum(m.kl() for _, m in layers)
    torch.testing.assert_close(method.penalty(model), expected)


@pytest.mark.parametrize("method_cls", VARIATIONAL)
def test_scale_lr_mult_applies_to_exactly_the_layers_scale_parameters(method_cls):
    method = method_cls(scale_lr_mult=7.0)
    model = lenet5_caffe(layers=method.layers())
    plain, fast = method.param_groups(model)
    scales = {id(p) for _, m in bayes_layers(model) for p in m.scale_parameters()}
    assert fast["lr_mult"] == 7.0 and {id(p) for p in fast["params"]} == scales
    assert {id(p) for p in plain["params"]} == {id(p) for p in model.parameters()} - scales
    if method_cls is SparseVD:  # per weight: log σ² decides log α
        assert scales == {id(m.weight_logvar) for _, m in bayes_layers(model)}
