from __future__ import annotations

import pytest
import torch

from bayescomp.coding import canonical_codes, decode, decode_layer, encode, encode_layer, huffman_lengths


def test_huffman_lengths_by_hand():
    # classic example: a:45 b:13 c:12 d:16 e:9 f:5 -> lengths 1,3,3,3,4,4
    lengths = huffman_lengths({0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5})
    assert lengths == {0: 1, 1: 3, 2: 3, 3: 3, 4: 4, 5: 4}
    codes = canonical_codes(lengths)
    assert codes[0] == (0b0, 1) and codes[1] == (0b100, 3) and codes[5] == (0b1111, 4)


@pytest.mark.parametrize("shape, density, levels", [((300, 784), 0.1, 64), ((50, 20, 5, 5), 0.05, 300),
                                                     ((10, 100), 1.0, None), ((7,), 0.0, 4), ((1000,), 0.002, 2)])
def test_layer_round_trips_bit_for_bit(shape, density, levels):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g)
    if levels:
        w = torch.round(w * levels) / levels
    w[torch.rand(shape, generator=g) >= density] = 0
    w = w + 0.0  # −0.0 (from rounding) is a zero: the format stores it as +0.0
    blob = encode_layer(w, index_bits=4)  # small index width: exercises the filler symbols
    back, end = decode_layer(blob)
    assert end == len(blob)
    assert back.shape == w.shape and torch.equal(back.view(torch.int32), w.view(torch.int32))


def test_sparse_quantised_layer_is_much_smaller_than_float32():
    g = torch.Generator().manual_seed(0)
    w = torch.round(torch.randn(300, 784, generator=g) * 8) / 8
    w[torch.rand(300, 784, generator=g) >= 0.05] = 0
    assert len(encode_layer(w, 5)) * 8 < 0.25 * 32 * w.numel() * 0.05 * 2


def test_artifact_of_several_layers_round_trips():
    ws = {"fc1": torch.randn(20, 30), "conv": torch.zeros(4, 2, 3, 3)}
    ws["conv"][1, 0, 1, 1] = 0.5
    back = decode(encode(ws))
    assert list(back) == ["fc1", "conv"] and all(torch.equal(back[k], ws[k]) for k in ws)
