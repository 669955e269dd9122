"""BC-GNJ / BC-GHS as methods: pretrained start, pruning rules, cascaded masks, quantised export."""
from __future__ import annotations

import pytest
import torch

from bayescomp.bc import BCGroupHS, BCGroupNJ, bayes_layers
from bayescomp.metrics import summarize
from bayescomp.models import lenet5_caffe, lenet300
from bayescomp.precision import unit_round_off
from bayescomp.prune import architecture, cascade_masks, structure


@pytest.mark.parametrize("method", [BCGroupNJ(), BCGroupHS()])
@pytest.mark.parametrize("build", [lenet300, lenet5_caffe])
def test_pretrained_start_computes_the_dense_function(method, build):
    dense = build().eval()
    model = build(layers=method.layers())
    method.init_from_pretrained(model, dense)
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(model.eval()(x), dense(x), rtol=1e-4, atol=1e-5)


def _push_groups_off(model, layer_name, groups):
    """Make `groups` of a layer clearly prunable (large statistic)."""
    layer = dict(bayes_layers(model))[layer_name]
    with torch.no_grad():
        if hasattr(layer, "z_logvar"):
            layer.z_logvar[groups] = 5.0
        else:
            layer.alpha_mu[groups] = -20.0
            layer.alpha_logvar[groups] = 1.0


@pytest.mark.parametrize("method_cls", [BCGroupNJ, BCGroupHS])
def test_fixed_thresholds_remove_whole_groups_and_cascade(method_cls):
    thr = [0.0, 0.0, 0.0] if method_cls is BCGroupNJ else [10.0, 10.0, 10.0]
    method = method_cls(threshold_rule="fixed", thresholds=thr, quantize=False)
    model = lenet300(layers=method.layers())
    _push_groups_off(model, "fc2", [0, 5, 7])  # fc2's inputs = fc1's outputs
    _push_groups_off(model, "fc1", list(range(100)))  # 100 input pixels
    c = method.compress(model.eval())
    w1, w2 = c.layers["fc1"].weight, c.layers["fc2"].weight
    assert (w1[:, :100] == 0).all() and (w1[:, 100:] != 0).any(dim=0).all()
    assert (w2[:, [0, 5, 7]] == 0).all() and (w1[[0, 5, 7]] == 0).all()  # cascaded to fc1's rows
    assert architecture(structure({n: l.weight for n, l in c.layers.items()})) == [684, 297, 100]


def test_conv_filter_pruning_cascades_into_the_flattened_fc_inputs():
    method = BCGroupNJ(threshold_rule="fixed", thresholds=[0.0] * 4, quantize=False)
    model = lenet5_caffe(layers=method.layers())
    _push_groups_off(model, "conv2", [3, 10])
    c = method.compress(model.eval())
    fc1 = c.layers["fc1"].weight.view(500, 50, 16)
    assert (fc1[:, [3, 10]] == 0).all() and (c.layers["conv2"].weight[[3, 10]] == 0).all()
    assert (c.layers["conv2"].weight[[0, 1]] != 0).any()


def test_masks_never_remove_the_network_outputs():
    layers = list(lenet300().named_children())
    layers = [(n, m) for n, m in layers if hasattr(m, "in_features")]
    masks = cascade_masks(layers, {"fc3": torch.ones(100, dtype=torch.bool) & (torch.arange(100) > 0)})
    assert masks["fc3"].any(1).all()  # every class keeps a weight (input 0 stays)


def test_quantised_weights_lie_on_the_grid_of_their_bits(mnist):
    method = BCGroupNJ(threshold_rule="fixed", thresholds=[0.0] * 3)
    model = lenet300(layers=method.layers())
    c = method.compress(model.eval())
    for layer in c.layers.values():
        w = layer.weight[layer.weight != 0]
        # some significand t gives a grid containing every weight: w / u(t) is an integer
        assert any(torch.allclose(w / float(unit_round_off(t)), torch.round(w / float(unit_round_off(t))), atol=1e-3)
                   for t in range(1, 24))
    metrics, small = summarize(c, mnist, "lenet300", test_subset=500)
    assert metrics["error_pct"] == metrics["error_masked_pct"]


def test_validation_rule_stays_within_its_margin(mnist):
    method = BCGroupHS(val_margin_pct=0.5)
    model = lenet300(layers=method.layers())
    method.init_from_pretrained(model, lenet300())
    _push_groups_off(model, "fc1", list(range(0, 784, 2)))
    small = type(mnist)(mnist.name, mnist.train_x[:10], mnist.train_y[:10], mnist.val_x[:1000], mnist.val_y[:1000],
                        mnist.test_x[:10], mnist.test_y[:10], mnist.source)
    c = method.compress(model.eval(), small)
    assert c.info["val_error_pruned_pct"] <= c.info["val_error_unpruned_pct"] + 0.5
    assert (c.layers["fc1"].weight[:, ::2] == 0).all()  # the clearly prunable half is gone
    # robust to rounding: each threshold lies midway between the last pruned and the first kept group's
    # statistic, so a last-bit change of the statistics (another CPU, float64) keeps the same architecture
    for thr, stat in zip(c.info["thresholds"], c.info["statistic"].values()):
        stat = torch.tensor(stat, dtype=torch.float64)
        above, below = stat[stat >= thr], stat[stat < thr]
        if len(above) and len(below):
            assert thr == pytest.approx((float(above.min()) + float(below.max())) / 2, rel=1e-12)
            assert float(above.min()) > thr > float(below.max())


@pytest.mark.parametrize("method_cls", [BCGroupNJ, BCGroupHS])
def test_scale_lr_mult_speeds_up_only_the_scale_parameters(mnist, method_cls):
    """Adam's first step moves every parameter by about its lr: the q(z) parameters by 10x."""
    from bayescomp.train import TrainConfig, fit

    method = method_cls(scale_lr_mult=10.0)
    model = lenet300(layers=method.layers())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, method, mnist, TrainConfig(epochs=1, batch_size=64, lr=1e-3), seed=0, progress=False,
        train_subset=64, test_subset=10)
    fc1 = dict(bayes_layers(model))["fc1"]
    scale_names = {n for n, p in model.named_parameters() if any(p is q for q in fc1.scale_parameters())}
    assert scale_names and all(".weight_" not in n and ".bias_" not in n for n in scale_names)
    for n, p in model.named_parameters():
        if n.startswith("fc1."):
            step = (p.detach() - before[n]).abs().max().item()
            expected = 1e-2 if n in scale_names else 1e-3
            assert step == pytest.approx(expected, rel=0.05), n
