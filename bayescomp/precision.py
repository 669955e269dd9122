"""Bit precision of a layer from its posterior variance, and rounding weights to it.

[LUW17] Sec. 4 / official compression.py: the unit round-off of t significand bits is
u(t) = ½·2^(1−t) = 2^−t [Heath 1996, ch. 1]; a weight with marginal variance Var needs the t in
1..23 with u(t) > 2·Var, counted; a layer uses the ceiling of the mean over its kept weights.
Exponent bits: ceil(log2(log2(max|w|) + 1) + 1) officially, which is NaN or −inf for
max|w| ≤ 0.5; we apply it to E = max(|log2 max|w||, 1), identical to the official value whenever
max|w| ≥ 2, and finite for every layer. Total bits = 1 (sign) + exponent + significand.
Test-time weights are the posterior means rounded to the grid of step u(t), as the official code.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_SIGNIFICAND = 23


def unit_round_off(t: int | Tensor) -> Tensor:
    """u(t) = ½ · 2^(1−t). [Heath 1996] ch. 1"""
    return 0.5 * torch.pow(2.0, 1.0 - torch.as_tensor(t, dtype=torch.float64))


def significand_bits(var: Tensor) -> int:
    """ceil(mean over weights of #{t in 1..23 : u(t) > 2·Var}). [LUW17] Sec. 4"""
    t = torch.arange(1, MAX_SIGNIFICAND + 1, dtype=torch.float64)
    per_weight = (unit_round_off(t)[None, :] > 2 * var.double().flatten()[:, None]).sum(1)
    return int(math.ceil(per_weight.double().mean().item() - 1e-12))


def exponent_bits(max_abs: float) -> int:
    """Exponent bits to cover magnitudes up to max_abs (and down to 1/max_abs), guarded for max_abs ≤ 0.5."""
    if not max_abs > 0 or not math.isfinite(max_abs):
        return 1
    e = max(abs(math.log2(max_abs)), 1.0)
    return int(math.ceil(math.log2(e + 1.0) + 1.0))


def layer_bits(mean: Tensor, var: Tensor) -> tuple[int, int, int]:
    """(total, exponent, significand) bits for a layer's kept weights: posterior means and variances."""
    sig = significand_bits(var)
    exp = exponent_bits(float(mean.abs().max()))
    return 1 + exp + sig, exp, sig


def round_to_precision(w: Tensor, significand: int) -> Tensor:
    """Round to the nearest multiple of u(significand) (floor(w/δ + ½)·δ, as the official code)."""
    delta = float(unit_round_off(significand))
    return torch.floor(w / delta + 0.5) * delta


def quantize_kept(mean: Tensor, var: Tensor, keep: Tensor) -> tuple[Tensor, int]:
    """(weights, total bits) of a layer: posterior means where `keep`, rounded to the layer's
    precision, exactly +0.0 elsewhere (no −0.0 from rounding); 32 bits when nothing is kept."""
    if not keep.any():
        return mean * keep + 0.0, 32
    bits, _, sig = layer_bits(mean[keep], var[keep])
    return round_to_precision(mean * keep, sig) * keep + 0.0, bits
