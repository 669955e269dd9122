"""Bayesian layers: the stochastic forward has the analytic moments; eval mode is the posterior mean."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from baselines.sparse_vd import Conv2dSVD, LinearSVD, SparseVD
from bayescomp.layers import Conv2dGroupHS, Conv2dGroupNJ, LinearGroupHS, LinearGroupNJ
from bayescomp.models import lenet5_caffe

N = 40_000  # samples for moment checks
RESULTS = Path(__file__).resolve().parent.parent / "results"


def _perturb(layer):
    """Posterior far from its initialisation, so every term of the moments matters."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("logvar"):
                p.copy_(torch.empty_like(p).uniform_(-3, -1, generator=g))
            elif name in ("z_mu",):
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5, generator=g))
            elif name in ("weight_mu", "bias_mu"):
                p.copy_(torch.empty_like(p).normal_(0, 0.5, generator=g))
    return layer


def test_linear_nj_output_moments_match_the_analytic_ones():
    layer = _perturb(LinearGroupNJ(6, 3)).train()
    x = torch.randn(1, 6)
    out = layer(x.expand(N, 6))
    mean = F.linear(x, layer.weight, layer.bias)
    var = F.linear(x * x, layer.weight_var()) + layer.bias_logvar.exp()
    torch.testing.assert_close(out.mean(0, keepdim=True), mean, atol=4 * (var / N).sqrt().max().item(), rtol=0)
    torch.testing.assert_close(out.var(0, keepdim=True), var, rtol=0.05, atol=0)


def test_conv_nj_output_moments_match_the_analytic_ones():
    layer = _perturb(Conv2dGroupNJ(2, 3, 3, padding=1)).train()
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        out = torch.cat([layer(x.expand(2000, 2, 4, 4)) for _ in range(N // 2000)])
    mean = F.conv2d(x, layer.weight, layer.bias, padding=1)
    # z scales a whole filter: Var = Var(z) (conv(x, M) + b)² + E[z²] (conv(x², Σ) + σ_b²)
    a = F.conv2d(x, layer.weight_mu, layer.bias_mu, padding=1)
    s2 = F.conv2d(x * x, layer.weight_logvar.exp(), layer.bias_logvar.exp(), padding=1)
    ez, vz = layer.z_mean()[None, :, None, None], layer.z_var()[None, :, None, None]
    var = vz * a * a + (vz + ez * ez) * s2
    torch.testing.assert_close(out.mean(0, keepdim=True), mean.detach(), atol=4 * (var / N).sqrt().max().item(), rtol=0)
    torch.testing.assert_close(out.var(0, keepdim=True), var.detach(), rtol=0.06, atol=1e-6)


def test_horseshoe_scale_samples_have_the_lognormal_moments():
    layer = LinearGroupHS(5, 2, tau0=1e-3)
    with torch.no_grad():
        layer.alpha_logvar.fill_(-1.0)
        layer.beta_logvar.fill_(-2.0)
        layer.sa_logvar.fill_(-1.5)
        layer.alpha_mu.copy_(torch.linspace(-1, 1, 5))
    z = layer.sample_z(200_000)
    torch.testing.assert_close(z.mean(0), layer.z_mean().detach(), rtol=0.02, atol=0)
    torch.testing.assert_close(z.var(0), layer.z_var().detach(), rtol=0.06, atol=0)
    m, v = layer.log_z_params()
    torch.testing.assert_close(layer.log_mode(), m - v)


@pytest.mark.parametrize("cls", [LinearGroupNJ, LinearGroupHS])
def test_eval_mode_is_deterministic_posterior_mean(cls):
    layer = _perturb(cls(4, 3)).eval()
    x = torch.randn(5, 4)
    torch.testing.assert_close(layer(x), layer(x))
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("lin_cls, conv_cls", [(LinearGroupNJ, Conv2dGroupNJ), (LinearGroupHS, Conv2dGroupHS)])
def test_conv_with_1x1_spatial_size_agrees_with_linear(lin_cls, conv_cls):
    lin, conv = lin_cls(5, 3), conv_cls(5, 3, 1)
    with torch.no_grad():  # same weights, scales ~1 with (almost) no noise: the two groupings coincide
        conv.weight_mu.copy_(lin.weight_mu[:, :, None, None])
        conv.bias_mu.copy_(lin.bias_mu)
        for layer in (lin, conv):
            for name, p in layer.named_parameters():
                if name.endswith("logvar") and not name.startswith(("weight", "bias")):
                    p.fill_(-30.0)
        conv.weight_logvar.copy_(lin.weight_logvar[:, :, None, None])
        conv.bias_logvar.copy_(lin.bias_logvar)
        if hasattr(lin, "z_mu"):
            lin.z_mu.fill_(1.0)
            conv.z_mu.fill_(1.0)
        else:
            for layer in (lin, conv):
                layer.alpha_mu.zero_()
                layer.beta_mu.zero_()
    x = torch.randn(8, 5)
    lin.eval(), conv.eval()
    torch.testing.assert_close(conv(x[:, :, None, None]).flatten(1), lin(x))
    lin.train(), conv.train()
    big = x[:1].expand(N, 5)
    a, b = lin(big), conv(big[:, :, None, None]).flatten(1)
    torch.testing.assert_close(a.mean(0), b.mean(0), atol=0.02, rtol=0)
    torch.testing.assert_close(a.var(0), b.var(0), rtol=0.06, atol=1e-6)


@pytest.mark.parametrize("cls", [Conv2dGroupNJ, Conv2dGroupHS])
@pytest.mark.parametrize("kw", [dict(stride=2), dict(padding=2), dict(dilation=2), dict(stride=2, padding=1, dilation=2)])
def test_conv_respects_stride_padding_dilation_in_both_modes(cls, kw):
    layer = _perturb(cls(2, 4, 3, **kw))
    ref = torch.nn.Conv2d(2, 4, 3, **kw)
    x = torch.randn(3, 2, 11, 11)
    layer.eval()
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight, layer.bias, **kw))
    assert layer(x).shape == ref(x).shape
    layer.train()
    assert layer(x).shape == ref(x).shape


@pytest.mark.parametrize("cls", [LinearGroupNJ, LinearGroupHS])
def test_kl_is_finite_and_differentiable(cls):
    layer = cls(4, 3)
    kl = layer.kl()
    kl.backward()
    assert torch.isfinite(kl) and all(p.grad is not None for p in layer.parameters())


def test_prior_optimum_init_puts_the_shared_factors_at_their_kl_minimum():
    layer = LinearGroupHS(50, 3, tau0=1e-5, scale_init="prior_optimum")
    layer.kl_z().backward()
    for p in (layer.sa_mu, layer.sb_mu):  # at the minimum of their own KL term
        assert p.grad.abs().max() < 1e-3
    # α̃ too, up to its N(0, 0.01²) init jitter δ: the gradient is ½(e^δ − 1) ≈ δ/2, below 0.02 at 4σ
    assert layer.alpha_mu.grad.abs().max() < 0.02
    assert layer.beta_mu.grad.min() > 0.4  # β̃ carries the scale: its KL pulls every group down
    torch.testing.assert_close(layer.z_mean().detach(), torch.ones(50), rtol=0.05, atol=0)


def test_unknown_scale_init_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: \\['mean_one', 'prior_optimum'\\]"):
        LinearGroupHS(3, 2, scale_init="zeros")


@pytest.mark.parametrize("make", [lambda: LinearGroupNJ(64, 32), lambda: LinearGroupHS(64, 32),
                                  lambda: Conv2dGroupNJ(3, 8, 3, padding=1), lambda: Conv2dGroupHS(3, 8, 3, padding=1),
                                  lambda: LinearSVD(64, 32), lambda: Conv2dSVD(3, 8, 3, padding=1)],
                         ids=["linear-gnj", "linear-ghs", "conv-gnj", "conv-ghs", "linear-svd", "conv-svd"])
def test_every_bayesian_layer_trains_under_bf16_autocast(make):
    """The VGG paper profiles train under bf16 autocast: forward and backward work, the variances stay in
    float32 (the same as outside autocast up to the mean path's bf16 rounding) and every gradient is finite."""
    layer = _perturb(make()).train()
    x = torch.rand(8, 64) if isinstance(layer, (LinearGroupNJ, LinearGroupHS, LinearSVD)) else torch.rand(8, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        loss = out.float().pow(2).mean() + layer.kl().float() / 1000
    loss.backward()
    assert torch.isfinite(out).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    if hasattr(layer, "lrt_variance") and layer.is_conv:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            var = layer.lrt_variance(x, None)
        assert var.dtype == torch.float32
        torch.testing.assert_close(var, layer.lrt_variance(x, None))


def test_bayesian_layers_take_no_bias_argument():
    """They always have a bias; the argument used to be accepted and ignored."""
    for make in (lambda: LinearGroupNJ(4, 3, bias=False), lambda: Conv2dGroupHS(2, 3, 3, bias=False),
                 lambda: LinearSVD(4, 3, bias=False)):
        with pytest.raises(TypeError, match="bias"):
            make()


@pytest.mark.parametrize("make, keys", [
    (lambda: LinearSVD(4, 3), ["weight_mu", "weight_logvar", "bias_mu"]),
    (lambda: Conv2dSVD(2, 3, 3), ["weight_mu", "weight_logvar", "bias_mu"]),
    (lambda: LinearGroupNJ(4, 3), ["weight_mu", "weight_logvar", "bias_mu", "bias_logvar", "z_mu", "z_logvar"]),
    (lambda: Conv2dGroupNJ(2, 3, 3), ["weight_mu", "weight_logvar", "bias_mu", "bias_logvar", "z_mu", "z_logvar"]),
    (lambda: LinearGroupHS(4, 3), ["weight_mu", "weight_logvar", "bias_mu", "bias_logvar", "sa_mu", "sb_mu",
                                   "sa_logvar", "sb_logvar", "alpha_mu", "beta_mu", "alpha_logvar", "beta_logvar"]),
], ids=["linear-svd", "conv-svd", "linear-gnj", "conv-gnj", "linear-ghs"])
def test_state_dict_keys_are_those_of_the_recorded_posteriors(make, keys):
    """posterior.pt and checkpoints hold state dicts by these names, in this (creation) order."""
    assert list(make().state_dict()) == keys


def test_sparse_vd_layers_draw_their_initial_values_in_the_recorded_order():
    """μ, log σ², then a bias log σ² that is not kept (the bias is a point estimate): the random stream
    stays as the recorded runs drew it, so their numbers are reproduced to the last bit."""
    torch.manual_seed(1)
    layer = LinearSVD(4, 3, init_logvar=-10.0)
    after = torch.rand(3)
    torch.manual_seed(1)
    mu = torch.empty(3, 4).normal_(0, 1 / 2)  # 1/√fan_in
    logvar = torch.empty(3, 4).normal_(-10.0, 1e-2)
    torch.empty(3).normal_(-10.0, 1e-2)
    assert torch.equal(layer.weight_mu, mu) and torch.equal(layer.weight_logvar, logvar)
    assert torch.equal(torch.rand(3), after)


def test_a_recorded_sparse_vd_posterior_loads_into_the_layers():
    """Re-thresholding (reproduce sweep) loads posterior.pt into a model built with today's layers."""
    path = RESULTS / "lenet5_caffe.sparse_vd" / "paper" / "seed0" / "posterior.pt"
    if not path.exists():
        pytest.skip(f"no recorded {path} in this checkout")
    post = torch.load(path, weights_only=True)
    model = lenet5_caffe(layers=SparseVD().layers())
    model.load_state_dict(post["state_dict"])  # strict: same keys and shapes
