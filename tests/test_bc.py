"""BC-GNJ / BC-GHS as methods: pretrained start, pruning rules, cascaded masks, quantised export."""
from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from bayescomp.bc import BCGroupHS, BCGroupNJ
from bayescomp.metrics import summarize
from bayescomp.models import has_batch_norm, lenet5_caffe, lenet300, load_model, model_record, vgg_cifar
from bayescomp.precision import unit_round_off
from bayescomp.prune import architecture, cascade_masks, export, structure
from bayescomp.variational import bayes_layers

vgg_small = partial(vgg_cifar, width=0.125)  # 1/8 wide: 8 to 64 filters per conv


def _trained_looking_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Batch norm as after training: affine parameters away from 1 / 0 (β > 0: most units active) and
    running statistics of the activations of random images (cumulative average), in eval mode."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(0.0, 0.5, generator=g)
                m.momentum = None
        model.train()(torch.rand(64, *model.normalize.image_shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("method", [BCGroupNJ(), BCGroupHS()])
@pytest.mark.parametrize("build, shape", [(lenet300, (1, 28, 28)), (lenet5_caffe, (1, 28, 28)),
                                          (vgg_small, (3, 32, 32))])
def test_pretrained_start_computes_the_dense_function(method, build, shape):
    """VGG: the BC model has no batch norm; the dense model's (eval mode) is folded into its layers."""
    dense = _trained_looking_batch_norm(build())
    model = build(layers=method.layers())
    method.init_from_pretrained(model, dense)
    assert not has_batch_norm(model)
    x = torch.rand(4, *shape)
    torch.testing.assert_close(model.eval()(x), dense(x), rtol=1e-4, atol=1e-5)


def _z_mean_param(layer):
    """The parameter that moves E[z] of each group: μ_z (GNJ), or the group factor α̃'s mean (GHS)."""
    return layer.z_mu if hasattr(layer, "z_mu") else layer.alpha_mu


@pytest.mark.parametrize("method", [BCGroupNJ(), BCGroupHS()])
def test_vgg_data_term_depends_on_every_filter_scale_unlike_with_batch_norm_after_it(method):
    """The NLL's gradient with respect to each conv filter's scale z: nonzero for every filter of the
    BC VGG (batch norm folded away), and a step along it changes the output as the gradient says;
    with a train-mode batch norm after z the gradient vanishes (the scale cancels)."""
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    dense = _trained_looking_batch_norm(vgg_small())

    def nll_and_grads(batch_norm: bool, step: tuple[str, int, float] | None = None):
        torch.manual_seed(0)  # the same initial log-variances in every call
        model = vgg_small(layers=dataclasses.replace(method.layers(), batch_norm=batch_norm))
        method.init_from_pretrained(model, dense)  # with batch norm: copied, and trains on batch statistics
        model.train()
        with torch.no_grad():  # q(z) nearly a point mass: only E[z] matters
            for _, m in bayes_layers(model):
                for n, p in m.named_parameters(recurse=False):
                    if n.endswith("logvar") and not n.startswith(("weight", "bias")):
                        p.fill_(-30.0)
            if step is not None:
                _z_mean_param(dict(bayes_layers(model))[step[0]])[step[1]] += step[2]
        torch.manual_seed(1)  # the same weight noise in every call
        nll = F.cross_entropy(model(x), y)
        nll.backward()
        convs = [m for _, m in bayes_layers(model) if m.is_conv]
        return nll.item(), [_z_mean_param(m).grad.abs() for m in convs], [_z_mean_param(m).grad for m in convs]

    nll0, without_bn, signed = nll_and_grads(batch_norm=False)
    assert all((g > 0).all() for g in without_bn)  # every filter of every conv
    g = signed[6][3].item()  # conv7, filter 3: a step of δ along the gradient changes the NLL by about g·δ
    delta = 1e-3 if g > 0 else -1e-3
    nll1 = nll_and_grads(batch_norm=False, step=("conv7", 3, delta))[0]
    assert nll1 - nll0 == pytest.approx(g * delta, rel=0.1)
    _, with_bn, _ = nll_and_grads(batch_norm=True)
    scale = torch.cat(without_bn).median()
    assert max(float(g.max()) for g in with_bn) < 1e-2 * scale  # measured: 1e-4 of the median and less


def test_vgg_pruned_filter_is_removed_exactly_with_its_whole_channel(tmp_path):
    """A filter with z = 0 (GNJ: μ_z = 0) computes a zero channel; compress removes it, and the exported
    model (no batch norm, narrower convs), saved and reloaded, computes what the Bayesian model does."""
    dense = _trained_looking_batch_norm(vgg_small())
    method = BCGroupNJ(threshold_rule="fixed", thresholds=[0.0] * 15, quantize=False)
    model = vgg_small(layers=method.layers())
    method.init_from_pretrained(model, dense)
    pruned = {"conv1": [0, 3], "conv5": [1, 2, 7], "conv10": [5], "conv13": [0, 63]}
    layers = dict(bayes_layers(model))
    with torch.no_grad():
        for name, filters in pruned.items():
            layers[name].z_mu[filters] = 0.0  # log α = log σ_z² − log(0 + ε) ≈ 9 ≥ 0: pruned
    x = torch.rand(4, 3, 32, 32)
    before = model.eval()(x)
    c = method.compress(model)
    small, widths = export(c.model, "vgg_cifar")
    full = [round(w * 0.125) for w in (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)]
    assert widths[:13] == [w - len(pruned.get(f"conv{k + 1}", [])) for k, w in enumerate(full)]
    assert not has_batch_norm(c.model) and not has_batch_norm(small)
    path = tmp_path / "model.pt"
    torch.save(model_record(small, "vgg_cifar", widths), path)
    reloaded = load_model(path)
    assert not has_batch_norm(reloaded)
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in dense.parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), before, rtol=1e-4, atol=1e-5)


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
