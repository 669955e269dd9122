"""Metric definitions on hand-computed cases, and the structural export."""
from __future__ import annotations

import pytest
import torch

from bayescomp.metrics import cr_fast, multiply_adds, nonzero_pct
from bayescomp.models import lenet5_caffe, lenet300, prunable_layers, vgg_cifar
from bayescomp.prune import architecture, export, structure


def test_nonzero_pct_by_hand():
    assert nonzero_pct([torch.tensor([[0.0, 1.0], [2.0, 0.0]]), torch.tensor([3.0, 0.0, 0.0, 0.0])]) == 37.5


def _lenet5_pruned(c1=5, c2=10, f_in=76, f_out=16) -> dict[str, torch.Tensor]:
    """LeNet-5-Caffe weights keeping the first c1 / c2 filters, f_in fc1 inputs, f_out fc1 outputs."""
    g = torch.Generator().manual_seed(0)
    w = {"conv1": torch.zeros(20, 1, 5, 5), "conv2": torch.zeros(50, 20, 5, 5),
         "fc1": torch.zeros(500, 800), "fc2": torch.zeros(10, 500)}
    w["conv1"][:c1] = torch.randn(c1, 1, 5, 5, generator=g)
    w["conv2"][:c2, :c1] = torch.randn(c2, c1, 5, 5, generator=g)
    cols = torch.randperm(c2 * 16, generator=g)[:f_in]
    w["fc1"][:f_out, cols] = torch.randn(f_out, f_in, generator=g)
    w["fc2"][:, :f_out] = torch.randn(10, f_out, generator=g)
    return w


def test_paper_golden_cr_fast_lenet5_ghs():
    # [LUW17] Table 1: 5-10-76-16 kept units at 10-10-14-13 bits on LeNet-5-Caffe gives CR fast 419.
    struct = structure(_lenet5_pruned())
    assert architecture(struct) == [5, 10, 76, 16]
    assert cr_fast(struct, [10, 10, 14, 13], 430_500) == pytest.approx(13_776_000 / 32_854)  # 419.31
    assert round(cr_fast(struct, [10, 10, 14, 13], 430_500), 1) == 419.3


def test_dead_units_are_removed_with_their_rows():
    w = {"fc1": torch.ones(4, 3), "fc2": torch.ones(2, 4)}
    w["fc2"][:, 1] = 0  # hidden unit 1 is never read
    w["fc1"][:, 2] = 0  # input 2 is never used
    struct = structure(w)
    assert [s.kept_in.tolist() for s in struct] == [[0, 1], [0, 2, 3]]
    assert [s.kept_out.tolist() for s in struct] == [[0, 2, 3], [0, 1]]
    assert architecture(struct) == [2, 3] and [s.n_weights for s in struct] == [6, 6]


def _apply(model, weights):
    with torch.no_grad():
        for name, m in prunable_layers(model):
            m.weight.copy_(weights[name])
    return model.eval()


@pytest.mark.parametrize("name, build, shape", [("lenet300", lenet300, (1, 28, 28)),
                                                ("lenet5_caffe", lenet5_caffe, (1, 28, 28)),
                                                ("vgg_cifar", vgg_cifar, (3, 32, 32))])
def test_export_matches_the_masked_model(name, build, shape):
    model = build().eval()
    g = torch.Generator().manual_seed(1)
    layers = prunable_layers(model)
    weights = {n: m.weight.detach().clone() for n, m in layers}
    for (n, m), (n2, _) in zip(layers, layers[1:]):  # random group masks, cascaded: drop ~half the units
        drop = torch.rand(m.weight.shape[0], generator=g) < 0.5
        weights[n][drop] = 0
        nxt = weights[n2]
        nxt.view(nxt.shape[0], m.weight.shape[0], -1)[:, drop] = 0  # conv -> fc: a channel feeds H*W inputs
    first = weights[layers[0][0]]
    if first.dim() == 2:
        first[:, torch.rand(first.shape[1], generator=g) < 0.3] = 0
    if name == "vgg_cifar":  # non-trivial batch-norm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
    masked = _apply(model, weights)
    small, widths = export(masked, name)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in masked.parameters())
    assert widths == architecture(structure(weights))
    x = torch.rand(4, *shape)
    torch.testing.assert_close(small(x), masked(x), rtol=1e-4, atol=1e-5)


def test_multiply_adds_of_lenet300():
    assert multiply_adds(lenet300(), (1, 28, 28)) == 784 * 300 + 300 * 100 + 100 * 10
