"""reproduce.inference_form: every rewrite computes what the model computes (up to float rounding)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bayescomp.metrics import multiply_adds
from bayescomp.models import InputSelect, lenet5_caffe, lenet300, vgg_cifar
from reproduce.inference_form import (CPU_CHUNK, Chunked, ConvPool, FastLinear, StridedMaxPool, _pad_hidden_widths,
                                      inference_form)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float rounding, at the scale of the output (sums of hundreds of terms round apart)."""
    return torch.allclose(a, b, rtol=0, atol=1e-5 * (1 + float(b.abs().max())))


def with_random_weights(model: nn.Module) -> nn.Module:
    """Biases and weights away from their initialisation (and a kept-input index that is not 0..k-1), so
    that a rewrite which drops a bias or misplaces a column shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.normal_(0, 2 / m.weight[0].numel() ** 0.5)
                m.bias.normal_(0, 0.3)
            elif isinstance(m, InputSelect):
                m.index.copy_(torch.randperm(m.n_in)[:len(m.index)].sort().values)
    return model.eval()


MODELS = {
    "lenet300 dense": lambda: lenet300(),
    "lenet300 structured": lambda: lenet300(widths=(300, 37, 9)),
    "lenet5 dense": lambda: lenet5_caffe(),
    "lenet5 structured": lambda: lenet5_caffe(widths=(9, 26, 222, 49)),
    "lenet5 structured, all fc1 inputs": lambda: lenet5_caffe(widths=(3, 5, 80, 7)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("batch", [1, 3, CPU_CHUNK + 5])
def test_the_cpu_form_computes_what_the_model_computes(name, batch):
    model = with_random_weights(MODELS[name]())
    x = torch.rand(batch, 1, 28, 28)
    x_before = x.clone()
    form = inference_form(model, "cpu")
    with torch.inference_mode():
        assert close(form(x), model(x))
    assert torch.equal(x, x_before)  # the in-place ReLUs never touch the caller's input
    assert not any(type(m) in (nn.Linear, nn.MaxPool2d) for m in form.modules())  # every rewrite applied


def test_the_lenet5_form_uses_every_conv_rewrite():
    form = inference_form(with_random_weights(lenet5_caffe(widths=(9, 26, 222, 49))), "cpu")
    assert isinstance(form, Chunked)
    kinds = [type(m) for m in form.net]
    assert kinds[:2] == [ConvPool, nn.ReLU] and StridedMaxPool in kinds
    assert next(m for m in form.net if isinstance(m, nn.Conv2d)).weight.is_contiguous(memory_format=torch.channels_last)
    # ReLU after the pool, in place
    assert all(m.inplace for m in form.net if isinstance(m, nn.ReLU))


def test_vgg_keeps_its_normalisation_and_batch_norm_and_computes_the_same():
    model = vgg_cifar(width=1 / 8).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    x = torch.rand(CPU_CHUNK + 2, 3, 32, 32)
    form = inference_form(model, "cpu")
    with torch.inference_mode():
        assert close(form(x), model(x))


def test_the_sparse_form_keeps_csr_linear_layers_and_computes_the_same():
    from reproduce.inference_form import SparseLinear

    model = with_random_weights(lenet5_caffe(widths=(4, 6, 50, 12)))
    with torch.no_grad():
        model.fc1.weight[:, ::3] = 0
    form = inference_form(model, "cpu", sparse=True)
    assert sum(isinstance(m, SparseLinear) for m in form.modules()) == 2
    x = torch.rand(5, 1, 28, 28)
    with torch.inference_mode():
        assert close(form(x), model(x))


def test_off_the_cpu_only_the_normalisation_is_folded():
    form = inference_form(with_random_weights(lenet300(widths=(300, 37, 9))), "cuda")  # built on the CPU, not moved
    assert isinstance(form, nn.Sequential) and sum(type(m) is nn.Linear for m in form.modules()) == 3


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 5, 9, 7), (70, 20, 24, 24)])
@pytest.mark.parametrize("k", [2, 3])
def test_strided_max_pool_is_max_pool(shape, k):
    x = torch.randn(shape)
    for t in (x, x.contiguous(memory_format=torch.channels_last)):
        assert torch.equal(StridedMaxPool(k)(t), nn.MaxPool2d(k)(t))


@pytest.mark.parametrize("c_in, c_out, size, padding, bias", [(1, 9, 28, 0, True), (1, 20, 28, 0, True),
                                                              (1, 5, 13, 2, False), (2, 4, 12, 1, True)])
def test_conv_pool_is_conv_then_max_pool(c_in, c_out, size, padding, bias):
    conv = nn.Conv2d(c_in, c_out, 5, padding=padding, bias=bias)
    x = torch.randn(3, c_in, size, size)
    with torch.no_grad():
        assert close(ConvPool(conv)(x), nn.MaxPool2d(2)(conv(x)))


@pytest.mark.parametrize("out_features", [10, 37])
@pytest.mark.parametrize("relu", [False, True])
def test_fast_linear_is_linear(out_features, relu):
    layer = nn.Linear(23, out_features)
    x = torch.randn(6, 23)
    with torch.no_grad():
        want = layer(x).relu() if relu else layer(x)
        assert close(FastLinear(layer, relu)(x), want)


def test_padding_hidden_widths_adds_zero_units_only_between_relu_separated_layers():
    layers = [("a", nn.Linear(7, 13)), ("r", nn.ReLU()), ("b", nn.Linear(13, 5)), ("n", nn.BatchNorm1d(5)),
              ("c", nn.Linear(5, 3))]
    before = nn.Sequential(*[m for _, m in layers]).eval()
    x = torch.randn(4, 7)
    with torch.no_grad():
        want = before(x)
        _pad_hidden_widths(layers, 16)
        after = nn.Sequential(*[m for _, m in layers]).eval()
        assert close(after(x), want)
    assert [m.out_features for _, m in layers if isinstance(m, nn.Linear)] == [16, 5, 3]  # b -> BN -> c: not padded


def test_the_bench_counts_multiply_adds_on_the_model_not_on_its_form(monkeypatch):
    import reproduce.bench_inference as bench

    monkeypatch.setattr(bench, "BATCH_SIZES", {"lenet5_caffe": (2,)})
    monkeypatch.setattr(bench, "time_forwards", lambda nets, x: [{"median_ms": 1.0, "q1_ms": 1.0, "q3_ms": 1.0,
                                                                 "reps": 1} for _ in nets])
    small = lenet5_caffe(widths=(5, 10, 76, 16)).eval()
    models = {"lenet5_caffe": {"dense": lenet5_caffe().eval(), "BC": small}}
    rows = bench.inference_bench(models, {"lenet5_caffe": (1, 28, 28)}, threads=(1,), progress=False)
    macs = {r["method"]: r["macs_per_image"] for r in rows}
    assert macs == {"dense": 2_293_000, "BC": multiply_adds(small, (1, 28, 28))}
    assert multiply_adds(inference_form(small), (1, 28, 28)) > macs["BC"]  # the form's conv1 has a 6x6 kernel
