"""The weight file behind CR max (bayescomp.coding, bayescomp.entropy): streams and layers round-trip
bit for bit, each layout / value mode / coder is chosen where it is smallest, and every recorded
model.pt decodes exactly from its file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bayescomp.artifact import load_plain
from bayescomp.coding import StoredLayer, decode, decode_bytes, encode, encode_model, read_layers
from bayescomp.entropy import (canonical_codes, decode_stream, encode_stream, huffman_lengths, read_varint,
                               unzigzag, varint, zigzag)
from bayescomp.metrics import artifact_metrics
from bayescomp.models import load_model

RESULTS = Path(__file__).resolve().parent.parent / "results"
RECORDED = sorted(p.parent for p in RESULTS.glob("*/*/seed*/model.pt") if not any(s.startswith(".") for s in p.parts[-4:]))
METHODS = {"dense", "bc_gnj", "bc_ghs", "magnitude", "deep_compression", "sparse_vd", "random"}
BAYESIAN = {"bc_gnj", "bc_ghs", "sparse_vd"}


def _bits(w: torch.Tensor) -> torch.Tensor:
    return (w.float() + 0.0).view(torch.int32)  # the format has one zero: −0.0 reads back as +0.0


def test_huffman_lengths_by_hand():
    # classic example: a:45 b:13 c:12 d:16 e:9 f:5 -> lengths 1,3,3,3,4,4
    lengths = huffman_lengths({0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5})
    assert lengths == {0: 1, 1: 3, 2: 3, 3: 3, 4: 4, 5: 4}
    codes = canonical_codes(lengths)
    assert codes[0] == (0b0, 1) and codes[1] == (0b100, 3) and codes[5] == (0b1111, 4)


def test_varint_and_zigzag_round_trip():
    for n in (0, 1, 127, 128, 300, 2**40):
        assert read_varint(varint(n) + b"x", 0) == (n, len(varint(n)))
    assert [zigzag(n) for n in (0, -1, 1, -2, 2)] == [0, 1, 2, 3, 4]
    assert all(unzigzag(zigzag(n)) == n for n in range(-1000, 1000))


@pytest.mark.parametrize("case, coder", [
    ("skewed", "ans"),        # p(0) = 0.95: Huffman cannot go below 1 bit a symbol
    ("dyadic", "huffman"),    # probabilities 1/2, 1/4, 1/8, 1/8: Huffman is exact, ANS pays its table and state
    ("spread", "golomb"),     # 50 symbols over an alphabet of 5,000: a table costs more than it saves
    ("constant", "constant"),
    ("empty", "constant"),
])
def test_stream_round_trips_and_picks_the_smallest_coder(case, coder):
    rng = np.random.default_rng(0)
    symbols, alphabet = {
        "skewed": (np.where(rng.random(20_000) < 0.95, 0, rng.integers(1, 16, 20_000)), 16),
        "dyadic": (rng.permutation(np.repeat([0, 1, 2, 3], [4000, 2000, 1000, 1000])), 4),
        "spread": (np.clip(np.round(rng.normal(2500, 600, 50)), 0, 4999).astype(np.int64), 5000),
        "constant": (np.full(1000, 7), 9),
        "empty": (np.zeros(0, dtype=np.int64), 1),
    }[case]
    s = encode_stream(symbols, alphabet)
    back, end = decode_stream(s.blob + b"tail", 0)
    assert s.coder == coder and end == len(s.blob) and np.array_equal(back, symbols)
    assert s.header_bytes + s.table_bytes + s.payload_bytes == len(s.blob)
    if case == "skewed":  # within 1 % of n·H, table included
        assert len(s.blob) * 8 < 1.01 * s.entropy_bits + 8 * s.table_bytes + 64


def _layer(name, shape, rows, cols, block) -> StoredLayer:
    return StoredLayer(name, tuple(shape), torch.as_tensor(rows), torch.as_tensor(cols), block.float())


def test_group_pruned_quantised_layer_is_a_dense_block_of_grid_integers():
    g = torch.Generator().manual_seed(0)
    block = torch.round(torch.randn(60, 200, generator=g) * 40) / 2**6  # t = 6, every entry kept
    cols = torch.sort(torch.randperm(784, generator=g)[:200]).values
    blob, report = encode([_layer("fc1", (300, 784), torch.arange(60), cols, block)])
    (r,) = report
    assert (r["layout"], r["values"], r["t"]) == ("block", "grid", 6)
    assert r["positions_bytes"] == 1 + 98  # prefix k = 60, bitmap of the 784 inputs
    assert r["bytes"] == len(blob) and r["entropy_bits"] <= 8 * r["values_bytes"] <= 1.02 * r["entropy_bits"] + 64
    (back,) = read_layers(blob)
    assert torch.equal(back.rows, torch.arange(60)) and torch.equal(back.cols, cols)
    assert torch.equal(_bits(back.block), _bits(block))


def test_unstructured_layer_uses_relative_indices_and_a_k_means_codebook_stays_a_codebook():
    g = torch.Generator().manual_seed(0)
    centroids = torch.randn(32, generator=g)  # arbitrary floats: no grid
    block = centroids[torch.randint(0, 32, (100, 300), generator=g)] * (torch.rand(100, 300, generator=g) < 0.05)
    blob, (r,) = encode([_layer("fc", (100, 300), torch.arange(100), torch.arange(300), block)])
    assert (r["layout"], r["values"]) == ("sparse", "codebook") and r["positions_coder"] is not None
    assert torch.equal(_bits(decode_bytes(blob)["fc"]), _bits(block))


@pytest.mark.parametrize("shape, density, levels", [((300, 784), 0.1, 64), ((50, 20, 5, 5), 0.05, 300),
                                                     ((10, 100), 1.0, None), ((7, 3), 0.0, 4), ((1000, 1), 0.002, 2),
                                                     ((0, 5), 1.0, 4)])
def test_layer_round_trips_bit_for_bit(shape, density, levels):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g)
    if levels:
        w = torch.round(w * levels) / levels
    w[torch.rand(shape, generator=g) >= density] = 0
    w = -w  # rounding and negation leave −0.0 entries: stored as +0.0
    dense = (shape[0] + 3, shape[1] + 2, *shape[2:])
    cols = torch.arange(1, shape[1] + 1)  # a bitmap (not the first k)
    blob, report = encode([_layer("w", dense, torch.arange(shape[0]), cols, w)])
    assert sum(r["bytes"] for r in report) == len(blob)
    back = decode_bytes(blob)["w"]
    assert back.shape == w.shape and torch.equal(_bits(back), _bits(w))
    full = decode_bytes(blob, dense=True)["w"]
    assert full.shape == dense and torch.equal(full[:shape[0], 1:shape[1] + 1], back)
    assert full.count_nonzero() == back.count_nonzero()  # zeros outside the block


def test_decode_rejects_what_is_not_a_weight_file():
    with pytest.raises(ValueError, match="not a BCW2 file"):
        decode_bytes(b"PK\x03\x04....")
    blob, _ = encode([_layer("w", (2, 2), [0, 1], [0, 1], torch.ones(2, 2))])
    with pytest.raises(ValueError, match="bytes after the last layer"):
        decode_bytes(blob + b"\x00")


def test_recorded_results_cover_every_method():
    if not RECORDED:
        pytest.skip("no recorded results")
    assert {f.parts[-3].split(".", 1)[1] for f in RECORDED} >= METHODS


@pytest.mark.parametrize("folder", RECORDED, ids=lambda f: "/".join(f.parts[-3:]))
def test_every_recorded_model_decodes_exactly_from_its_file(folder, tmp_path):
    """decode(model.bcw) is model.pt's weights bit for bit; CR max = 32|W| / file bits never falls below
    the recorded one, and for every Bayesian row (BC-GNJ, BC-GHS, Sparse VD) the file is smaller than CR fast's
    count of `bits` per kept weight: its values are grid integers of t <= bits - 2 bits, entropy coded, which
    leaves room for the positions and headers (not a law: a row whose positions cost more would fail here). (This test used to ask for 1.4 x CR fast, a margin observed on the
    rows of the time, not derived; the 200-epoch LeNet-5-Caffe BC-GNJ model, 2.7 KB of which 6 % are headers,
    has 1.397 x.)"""
    metrics = json.loads((folder / "metrics.json").read_text())
    record = load_plain(folder / "model.pt", "")
    path = tmp_path / "model.bcw"
    model_args = json.loads((folder / "spec.json").read_text())["spec"].get("model_args", {})
    measured = artifact_metrics(load_model(folder / "model.pt"), record["model"], path, model_args)
    back = decode(path)
    weights = {k[:-len(".weight")]: v for k, v in record["state_dict"].items() if k.endswith(".weight") and v.dim() > 1}
    assert list(back) == list(weights)
    assert all(torch.equal(_bits(back[n]), _bits(w)) for n, w in weights.items())
    assert measured["cr_max"] == pytest.approx(32 * metrics["n_weights_dense"] / (8 * path.stat().st_size))
    if metrics.get("cr_max") is not None:
        assert measured["cr_max"] >= metrics["cr_max"] * (1 - 1e-12)
    if folder.parts[-3].split(".", 1)[1] in BAYESIAN:  # rounded to 2^-t, t <= bits - 1 sign - 1 exponent
        assert measured["cr_max"] > metrics["cr_fast"]
        bits = [int(b) for b in metrics["bits"].split("-")]
        assert all(c["values"] == "grid" and c["t"] <= b - 2 for c, b in zip(measured["coding"], bits))
    recorded_file = folder / "model.bcw"
    if recorded_file.exists():  # written by a run or by `recode`: the same bytes
        assert recorded_file.read_bytes() == path.read_bytes() and metrics["artifact_bytes"] == path.stat().st_size


def test_encode_model_places_hidden_units_first_and_keeps_the_selected_inputs(tmp_path):
    from bayescomp.models import lenet300
    small = lenet300(widths=(5, 4, 3))
    small.flatten.index.copy_(torch.tensor([3, 10, 11, 500, 783]))
    blob, report = encode_model(small, "lenet300")
    layers = read_layers(blob)
    assert [layer.shape for layer in layers] == [(300, 784), (100, 300), (10, 100)]
    assert layers[0].cols.tolist() == [3, 10, 11, 500, 783] and layers[0].rows.tolist() == [0, 1, 2, 3]
    assert layers[1].cols.tolist() == [0, 1, 2, 3] and layers[2].rows.tolist() == list(range(10))
    assert [r["dense"] for r in report] == [235200, 30000, 1000]


def test_cr_max_counts_against_the_dense_model_of_the_specs_own_width():
    """The quick profile's 1/8-wide VGG: a dense model of that width is CR max ≈ 1, not 64."""
    from bayescomp.models import vgg_cifar
    measured = artifact_metrics(vgg_cifar(width=0.125), "vgg_cifar", model_args={"width": 0.125})
    assert 0.95 < measured["cr_max"] < 1.05
    assert sum(c["dense"] for c in measured["coding"]) == sum(
        m.weight.numel() for n, m in vgg_cifar(width=0.125).named_modules() if hasattr(m, "in_channels")
        or hasattr(m, "in_features"))
