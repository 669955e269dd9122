"""The group layers' sampled pre-activations (bayescomp.lrt) against the plain autograd expressions they replace."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from bayescomp.layers import Conv2dGroupNJ
from bayescomp.lrt import EPS, ConvLRT, LinearLRT
from tests.test_layers import _perturb


def test_fused_linear_sample_equals_the_plain_expression_and_its_gradients():
    g = torch.Generator().manual_seed(3)
    B, I, O = 6, 5, 4
    leaves = [torch.randn(B, I, generator=g, dtype=torch.float64),  # x
              torch.rand(B, I, generator=g, dtype=torch.float64) + 0.5,  # z
              torch.randn(O, I, generator=g, dtype=torch.float64),  # weight mean
              torch.randn(O, I, generator=g, dtype=torch.float64) - 2,  # weight log-variance
              torch.randn(O, generator=g, dtype=torch.float64),
              torch.randn(O, generator=g, dtype=torch.float64) - 2]
    eps = torch.randn(B, O, generator=g, dtype=torch.float64)

    def plain(x, z, wm, wl, bm, bl):
        xz = x * z
        return F.linear(xz, wm, bm) + (F.linear(xz * xz, wl.exp(), bl.exp()) + EPS).sqrt() * eps

    a = [t.clone().requires_grad_() for t in leaves]
    b = [t.clone().requires_grad_() for t in leaves]
    out_fused, out_plain = LinearLRT.apply(*a, eps), plain(*b)
    torch.testing.assert_close(out_fused, out_plain)
    w = torch.randn(B, O, generator=g, dtype=torch.float64)
    (out_fused * w).sum().backward()
    (out_plain * w).sum().backward()
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad)
    assert torch.autograd.gradcheck(lambda *t: LinearLRT.apply(*t, eps), [t.clone().requires_grad_() for t in leaves])


def _assert_same(a, b):
    """Equal to the last bit in float32 (the recorded runs' precision); close in float64."""
    if a.dtype == torch.float32:
        assert torch.equal(a, b), f"max difference {(a - b).abs().max().item():.3g}"
    else:
        torch.testing.assert_close(a, b)


def _conv_sample_reference(x, z, wm, wl, bm, bl, eps, stride=1, padding=0, dilation=1):
    """The conv group layers' sampled pre-activation as plain autograd: the code ConvLRT replaced."""
    mu = F.conv2d(x, wm, bm, stride, padding, dilation)
    var = F.conv2d(x * x, wl.exp(), bl.exp(), stride, padding, dilation)
    z = z[:, :, None, None]
    mu, var = mu * z, var * z * z
    return mu + (var + EPS).sqrt() * eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("x_grad", [False, True], ids=["input-no-grad", "input-grad"])
@pytest.mark.parametrize("geometry", [dict(), dict(stride=2, padding=1, dilation=2)], ids=["plain", "strided"])
def test_fused_conv_sample_equals_the_plain_expression_and_its_gradients(dtype, x_grad, geometry):
    """Bit for bit in float32 (same operations in the same order), so that seeded runs are unchanged."""
    g = torch.Generator().manual_seed(4)
    B, C, O = 6, 3, 5
    leaves = [torch.randn(B, C, 9, 9, generator=g, dtype=dtype).relu(),  # x
              torch.rand(B, O, generator=g, dtype=dtype) + 0.5,  # z
              torch.randn(O, C, 3, 3, generator=g, dtype=dtype),  # weight mean
              torch.randn(O, C, 3, 3, generator=g, dtype=dtype) - 2,  # weight log-variance
              torch.randn(O, generator=g, dtype=dtype),
              torch.randn(O, generator=g, dtype=dtype) - 2]
    geo = (_pair(geometry.get("stride", 1)), _pair(geometry.get("padding", 0)), _pair(geometry.get("dilation", 1)))
    a = [t.clone().requires_grad_(x_grad or i > 0) for i, t in enumerate(leaves)]
    b = [t.clone().requires_grad_(x_grad or i > 0) for i, t in enumerate(leaves)]
    torch.manual_seed(1)
    out_fused = ConvLRT.apply(*a, geo)  # draws ε like the plain code's randn_like, after the convs
    torch.manual_seed(1)
    shape = out_fused.shape
    out_plain = _conv_sample_reference(*b, torch.randn(shape, dtype=dtype), **geometry)
    w = torch.randn(shape, generator=g, dtype=dtype)
    (out_fused * w).sum().backward()
    (out_plain * w).sum().backward()
    _assert_same(out_fused, out_plain)
    for p, q in zip(a, b):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            _assert_same(p.grad, q.grad)
    if dtype == torch.float64:
        def fused(*t):
            torch.manual_seed(1)
            return ConvLRT.apply(*t, geo)
        assert torch.autograd.gradcheck(fused, [t.clone().requires_grad_() for t in leaves])


def test_conv_layer_draws_its_noise_in_the_recorded_order():
    """One z draw (sample_z) and then ε of the output's shape: a seeded run keeps its trajectory."""
    layer = _perturb(Conv2dGroupNJ(2, 3, 3)).train()
    x = torch.rand(4, 2, 6, 6)
    torch.manual_seed(5)
    out = layer(x)
    after = torch.rand(1)
    torch.manual_seed(5)
    z = layer.sample_z(4)
    eps = torch.randn(4, 3, 4, 4)
    with torch.no_grad():
        ref = _conv_sample_reference(x, z, layer.weight_mu, layer.weight_logvar, layer.bias_mu, layer.bias_logvar, eps)
    assert torch.equal(out.detach(), ref) and torch.equal(torch.rand(1), after)
