"""Baselines' behaviour: pruning schedules reach their targets, weight sharing, Sparse VD's threshold."""
from __future__ import annotations

import pytest
import torch

from baselines.deep_compression import DeepCompression, linear_kmeans
from baselines.magnitude import MagnitudePruning
from baselines.sparse_vd import SparseVD
from bayescomp.models import lenet300, prunable_layers
from bayescomp.variational import bayes_layers


def _run_schedule(method, model):
    method.prepare(model)
    for epoch in range(max(method.prune_epochs) + 1):
        method.on_epoch_end(model, epoch)
    return method.compress(model)


def test_per_layer_magnitude_targets_are_met_and_keep_the_largest_weights():
    model = lenet300()
    before = {n: m.weight.detach().clone() for n, m in prunable_layers(model)}
    method = MagnitudePruning(sparsity={"fc1": 0.9, "fc2": 0.5, "fc3": 0.2}, prune_epochs=[0, 1, 2])
    c = _run_schedule(method, model)
    for name, target in {"fc1": 0.9, "fc2": 0.5, "fc3": 0.2}.items():
        w = c.layers[name].weight
        assert int(w.ne(0).sum()) == round(w.numel() * (1 - target))
        kept, dropped = before[name][w.ne(0)].abs(), before[name][w.eq(0)].abs()
        assert kept.min() >= dropped.max()  # no retraining in between: exactly the largest |w|
        torch.testing.assert_close(w[w.ne(0)], before[name][w.ne(0)])


def test_intermediate_rounds_fall_geometrically():
    model = lenet300()
    method = MagnitudePruning(sparsity=0.96, prune_epochs=[0, 5])
    method.prepare(model)
    method.on_epoch_end(model, 0)
    fc1 = dict(prunable_layers(model))["fc1"]
    assert int(fc1.weight.ne(0).sum()) == round(fc1.weight.numel() * 0.2)  # 0.04 ** (1/2)


def test_global_scope_meets_the_total_and_ranks_across_layers():
    model = lenet300()
    with torch.no_grad():
        dict(prunable_layers(model))["fc3"].weight.fill_(10.0)  # the largest weights anywhere
    c = _run_schedule(MagnitudePruning(sparsity=0.99, scope="global"), model)
    total = sum(layer.weight.numel() for layer in c.layers.values())
    kept = sum(int(layer.weight.ne(0).sum()) for layer in c.layers.values())
    assert kept == round(total * 0.01)
    assert bool(c.layers["fc3"].weight.ne(0).all())


@pytest.mark.parametrize("bad", [dict(sparsity=1.0), dict(scope="nope"), dict(prune_epochs=[3, 1]),
                                 dict(sparsity={"fc1": 0.5}, scope="global")])
def test_bad_pruning_settings_are_clear_errors(bad):
    with pytest.raises(ValueError):
        MagnitudePruning(**bad)


def test_linear_kmeans_finds_separated_clusters():
    v = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.5), torch.full((20,), 2.0)])
    centroids, index = linear_kmeans(v, 8)
    torch.testing.assert_close(centroids, torch.tensor([-1.0, 0.5, 2.0]))
    torch.testing.assert_close(centroids[index], v)


def test_deep_compression_shares_weights_and_keeps_the_zeros():
    model = lenet300()
    with torch.no_grad():
        for _, layer in prunable_layers(model):
            layer.weight.normal_()  # a broad distribution of kept weights, as after training
    c = _run_schedule(DeepCompression(sparsity={"fc1": 0.9, "fc2": 0.9, "fc3": 0.5}, bits_fc=3), model)
    for name, layer in c.layers.items():
        nz = layer.weight[layer.weight.ne(0)]
        assert layer.bits == 3 and len(nz.unique()) <= 2 ** 3
        assert set(nz.unique().tolist()) <= set(layer.codebook.tolist())
        assert int(layer.weight.ne(0).sum()) == round(layer.weight.numel() * (0.5 if name == "fc3" else 0.1))
    torch.testing.assert_close(dict(prunable_layers(c.model))["fc1"].weight, c.layers["fc1"].weight)


def test_sparse_vd_removes_exactly_the_weights_above_the_threshold():
    method = SparseVD(quantize=False)
    model = lenet300(layers=method.layers())
    fc2 = dict(bayes_layers(model))["fc2"]
    with torch.no_grad():
        fc2.weight_mu.fill_(0.1)
        fc2.weight_logvar.fill_(-20.0)
        fc2.weight_logvar[:, :7] = 0.0  # log α = 0 − log 0.01 ≈ 4.6 > 3
    c = method.compress(model)
    w = c.layers["fc2"].weight
    assert bool(w[:, :7].eq(0).all()) and bool(w[:, 7:].ne(0).all())


def test_sparse_vd_kl_pushes_log_alpha_up():
    method = SparseVD()
    model = lenet300(layers=method.layers())
    layer = dict(bayes_layers(model))["fc1"]
    method.penalty(model).backward()
    assert bool((layer.weight_logvar.grad < 0).all())  # descending the KL raises the variances


def test_compress_right_after_resuming_from_a_checkpoint():
    """A resumed run whose last epoch is done goes straight to compress: prepare() left masked
    weights with autograd history on the model, and compress must still copy it."""
    model = lenet300()
    method = MagnitudePruning(sparsity=0.5)
    method.prepare(model)
    method.on_epoch_end(model, 0)
    fresh = lenet300()
    method.prepare(fresh)
    fresh.load_state_dict(model.state_dict())
    c = method.compress(fresh)
    torch.testing.assert_close(c.layers["fc1"].weight, dict(prunable_layers(model))["fc1"].weight.detach())


def test_sparse_vd_scale_lr_mult_speeds_up_only_the_log_variances(mnist):
    """Adam's first step moves every parameter by about its lr: the log σ² by 10x (as BC's q(z))."""
    from bayescomp.train import TrainConfig, fit

    method = SparseVD(scale_lr_mult=10.0)
    model = lenet300(layers=method.layers())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, method, mnist, TrainConfig(epochs=1, batch_size=64, lr=1e-3), seed=0, progress=False,
        train_subset=64, test_subset=10)
    for n, p in model.named_parameters():
        if n.startswith("fc1."):
            step = (p.detach() - before[n]).abs().max().item()
            assert step == pytest.approx(1e-2 if n == "fc1.weight_logvar" else 1e-3, rel=0.05), n


def test_sparse_vd_refuses_the_former_name_of_scale_lr_mult():
    with pytest.raises(TypeError, match="logvar_lr_mult is now called scale_lr_mult"):
        SparseVD(logvar_lr_mult=10)
