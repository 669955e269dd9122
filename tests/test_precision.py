"""Bit precision from posterior variance: golden values computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from bayescomp.precision import exponent_bits, layer_bits, round_to_precision, significand_bits, unit_round_off


def test_unit_round_off():
    assert float(unit_round_off(1)) == 0.5 and float(unit_round_off(23)) == 2.0 ** -23


@pytest.mark.parametrize("var, bits", [(1e-4, 12), (0.1, 2), (0.0, 23), (1.0, 0), (2.0 ** -30, 23)])
def test_significand_bits_of_one_weight(var, bits):
    # 2^-t > 2 Var: Var = 1e-4 -> 2^-12 = 2.4e-4 > 2e-4 but 2^-13 = 1.2e-4 is not -> 12 bits
    assert significand_bits(torch.tensor([var])) == bits


def test_layer_uses_the_ceiling_of_the_mean():
    assert significand_bits(torch.tensor([1e-4, 0.1])) == 7  # (12 + 2) / 2
    assert significand_bits(torch.tensor([1e-4, 1e-4, 0.1])) == 9  # ceil(26 / 3)


@pytest.mark.parametrize("max_abs, bits", [(2.0, 2), (3.0, 3), (1e38, 8), (0.5, 2), (0.3, 3), (0.7, 2), (1e-3, 5)])
def test_exponent_bits_guarded_below_one_half(max_abs, bits):
    assert exponent_bits(max_abs) == bits
    if max_abs >= 2:  # the official formula where it is defined
        assert bits == math.ceil(math.log2(math.log2(max_abs) + 1) + 1)


def test_total_bits_is_sign_plus_exponent_plus_significand():
    assert layer_bits(torch.tensor([0.3, -0.1]), torch.tensor([1e-4, 1e-4])) == (1 + 3 + 12, 3, 12)


def test_rounding_to_precision_by_hand():
    w = torch.tensor([0.3, -0.3, 0.375, 0.0, 0.124])
    torch.testing.assert_close(round_to_precision(w, 2), torch.tensor([0.25, -0.25, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(round_to_precision(w, 3), torch.tensor([0.25, -0.25, 0.375, 0.0, 0.125]))


def test_quantize_kept_rounds_kept_weights_and_stores_plus_zero_elsewhere():
    from bayescomp.precision import quantize_kept

    mean = torch.tensor([0.30, -0.001, -0.70, 0.2])
    var = torch.full((4,), 1e-4)  # u(t) > 2e-4 for t = 1..12: 12 significand bits
    keep = torch.tensor([True, True, True, False])
    w, bits = quantize_kept(mean, var, keep)
    assert bits == 1 + exponent_bits(0.7) + 12
    torch.testing.assert_close(w, torch.tensor([1229 / 4096, -4 / 4096, -2867 / 4096, 0.0]))
    assert not torch.signbit(w[3])
    w, bits = quantize_kept(-mean, var, torch.zeros(4, dtype=torch.bool))
    assert bits == 32 and not torch.signbit(w).any() and not w.any()
