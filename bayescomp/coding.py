"""The compressed weight file behind CR max (`model.bcw`), and its decoder.

The file holds the weights of every prunable layer of a structurally pruned model (`model.pt`,
bayescomp.prune.export), biases excluded as in the paper's compression rates [LUW17] Sec. 5.
Format "BCW2" (integers are LEB128 varints, signed ones zigzag; streams as bayescomp.entropy):

    file   := "BCW2" n_layers layer*
    layer  := len(name) name ndim dim*  rows cols  layout values
    rows, cols := which outputs (dim 0) and inputs (dim 1) of the dense layer are kept, as
        u8 kind: 0 all | 1 the first k (varint k) | 2 bitmap (ceil(dim/8) bytes, MSB first).
        The kept block W[rows][:, cols] (conv: whole kernels) is model.pt's weight tensor.
    layout := u8 0 "block": every entry of the block is a value (zeros included), row-major
            | u8 1 "sparse": u8 b, then a stream of the relative indices of the block's nonzero
              entries, row-major (gap - 1 in 0..2^b-2; 2^b-1 = skip 2^b-1 entries) [HMD16] Sec. 3
    values := u8 0 "grid": zigzag t, zigzag lo, stream of q - lo; value = q·2^-t
            | u8 1 "codebook": varint K, K float32 (little endian), stream of indices
            | u8 2 "raw": one float32 per value (little endian)

Per layer the encoder writes the smallest combination of layout, b, value mode and coder. "grid"
applies when every value is q·2^-t with integer q: a layer rounded to t significand bits
(bayescomp.precision, BC and Sparse VD) is exactly that, found from the values themselves (the
smallest such t). A codebook of k-means centroids (Deep Compression) stays a codebook.
Hidden units are stored as the first k of their layer: a network's function does not depend on
their order, and model.pt does not keep their original positions; the network's inputs (kept
pixels, kept features of the flattened conv output) are stored as they are. −0.0 is stored as
+0.0 (the format has one zero). Not here: CR max itself (bayescomp.metrics), the coders of the
symbol streams (bayescomp.entropy).

[LUW17] Louizos, Ullrich, Welling. Bayesian Compression for Deep Learning. NIPS 2017.
[HMD16] Han, Mao, Dally. Deep Compression. ICLR 2016.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bayescomp.entropy import Stream, decode_stream, encode_stream, read_varint, unzigzag, varint, zigzag
from bayescomp.models import MODELS, InputSelect, prunable_layers

MAGIC = b"BCW2"
MAX_ALPHABET = 1 << 16  # grid ranges and codebooks larger than this are stored raw
MAX_T = 64  # finest grid step tried, 2^-64
MAX_GAP_BITS = 16  # widest relative index tried (alphabet 2^16)
MASKS = ("all", "prefix", "bitmap")
LAYOUTS = ("block", "sparse")
VALUES = ("grid", "codebook", "raw")


@dataclass(frozen=True)
class StoredLayer:
    """One prunable layer as the file holds it.

    shape: the dense layer's weight shape, (out, in) or (out, in, kh, kw).
    rows, cols: kept output and input indices (sorted, int64).
    block: the kept weights, (len(rows), len(cols), *shape[2:]) float32: model.pt's weight.
    """

    name: str
    shape: tuple[int, ...]
    rows: Tensor
    cols: Tensor
    block: Tensor


@dataclass
class _Part:
    """Bytes of a piece of a layer, and what they are spent on."""

    blob: bytes = b""
    positions: int = 0
    values: int = 0
    tables: int = 0
    header: int = 0
    entropy_bits: float = 0.0

    def __add__(self, o: _Part) -> _Part:
        return _Part(self.blob + o.blob, self.positions + o.positions, self.values + o.values,
                     self.tables + o.tables, self.header + o.header, self.entropy_bits + o.entropy_bits)


def stored_layers(model: nn.Module, model_name: str, model_args: dict[str, Any] | None = None) -> list[StoredLayer]:
    """The prunable layers of a structurally pruned model (as `bayescomp.prune.export` builds it) in
    the frame of the dense model `MODELS[model_name](**model_args)` (the spec's model_args, e.g. the
    quick profile's 1/8-wide VGG): kept inputs from its InputSelect, hidden units as the first k."""
    with torch.device("meta"):
        dense = dict(prunable_layers(MODELS[model_name](**(model_args or {}))))
    out, select = [], None
    for name, m in model.named_modules():
        if isinstance(m, InputSelect):
            select = m.index.detach().cpu().long()
        elif name in dense:
            w = m.weight.detach().cpu().float()
            shape = tuple(dense[name].weight.shape)
            cols = select if select is not None else torch.arange(w.shape[1])
            out.append(StoredLayer(name, shape, torch.arange(w.shape[0]), cols, w))
            select = None
    if [layer.name for layer in out] != list(dense):
        raise ValueError(f"{model_name}: the model's prunable layers {[layer.name for layer in out]} are not "
                         f"those of the dense model {list(dense)}")
    return out


def encode_model(model: nn.Module, model_name: str,
                 model_args: dict[str, Any] | None = None) -> tuple[bytes, list[dict[str, Any]]]:
    """The file of a structurally pruned model, and a coding report per layer (see `encode`)."""
    return encode(stored_layers(model, model_name, model_args))


def encode(layers: list[StoredLayer]) -> tuple[bytes, list[dict[str, Any]]]:
    """All layers -> the file's bytes, and a report per layer: dense (weights of the dense layer),
    the layout, value mode, t and coders chosen, entropy_bits (n·H of its coded symbols, raw float32
    at 32 bits) and positions / values / tables / header bytes, which sum to its share of the file
    (the file's own header counts as the first layer's)."""
    blob, report = MAGIC + varint(len(layers)), []
    file_header = len(blob)
    for layer in layers:
        part, info = _encode_layer(layer)
        part.header += file_header
        file_header = 0
        blob += part.blob
        report.append({"layer": layer.name, "dense": int(np.prod(layer.shape)), **info,
                       "entropy_bits": part.entropy_bits,
                       "positions_bytes": part.positions, "values_bytes": part.values,
                       "table_bytes": part.tables, "header_bytes": part.header,
                       "bytes": part.positions + part.values + part.tables + part.header})
    return blob, report


def decode(path: str | Path, dense: bool = False) -> dict[str, Tensor]:
    """The weights of a `model.bcw` file, by layer name: model.pt's weight tensors (dense=False), or
    the dense layers' shapes with zeros outside the kept block (dense=True)."""
    return decode_bytes(Path(path).read_bytes(), dense)


def decode_bytes(blob: bytes, dense: bool = False) -> dict[str, Tensor]:
    """`decode` of the file's bytes."""
    out = {}
    for layer in read_layers(blob):
        if dense:
            w = torch.zeros(layer.shape)
            w[layer.rows[:, None], layer.cols[None, :]] = layer.block
            out[layer.name] = w
        else:
            out[layer.name] = layer.block
    return out


def read_layers(blob: bytes) -> list[StoredLayer]:
    """Parse a file into its layers (inverse of `encode`)."""
    if blob[:4] != MAGIC:
        raise ValueError(f"not a {MAGIC.decode()} file (starts with {blob[:4]!r})")
    n_layers, pos = read_varint(blob, 4)
    layers = []
    for _ in range(n_layers):
        layer, pos = _read_layer(blob, pos)
        layers.append(layer)
    if pos != len(blob):
        raise ValueError(f"{len(blob) - pos} bytes after the last layer")
    return layers


def _encode_layer(layer: StoredLayer) -> tuple[_Part, dict[str, Any]]:
    name = layer.name.encode()
    head = varint(len(name)) + name + bytes([len(layer.shape)]) + b"".join(varint(d) for d in layer.shape)
    frame = _Part(head, header=len(head)) + _mask(layer.rows, layer.shape[0]) + _mask(layer.cols, layer.shape[1])
    flat = (layer.block.detach().cpu().to(torch.float32).flatten() + 0.0).numpy()  # −0.0 -> +0.0
    nz = np.flatnonzero(flat)
    block_vals, block_info = _values(flat)
    sparse_pos, b, pos_coder = _positions(nz)
    sparse_vals, sparse_info = _values(flat[nz])
    block = _Part(bytes([0]), header=1) + block_vals
    sparse = _Part(bytes([1, b]), header=2) + sparse_pos + sparse_vals
    if len(block.blob) <= len(sparse.blob):
        return frame + block, {"layout": "block", **block_info, "gap_bits": None, "positions_coder": None,
                               "block": int(flat.size), "nonzero": int(nz.size)}
    return frame + sparse, {"layout": "sparse", **sparse_info, "gap_bits": b, "positions_coder": pos_coder,
                            "block": int(flat.size), "nonzero": int(nz.size)}


def _mask(kept: Tensor, n: int) -> _Part:
    k = kept.numpy()
    if len(k) == n:
        return _Part(bytes([0]), header=1)
    if np.array_equal(k, np.arange(len(k))):
        return _Part(bytes([1]) + varint(len(k)), header=1, positions=len(varint(len(k))))
    bits = np.zeros(n, dtype=np.uint8)
    bits[k] = 1
    body = np.packbits(bits).tobytes()
    return _Part(bytes([2]) + body, header=1, positions=len(body))


def _read_mask(blob: bytes, pos: int, n: int) -> tuple[Tensor, int]:
    kind = MASKS[blob[pos]]
    pos += 1
    if kind == "all":
        return torch.arange(n), pos
    if kind == "prefix":
        k, pos = read_varint(blob, pos)
        return torch.arange(k), pos
    size = (n + 7) // 8
    bits = np.unpackbits(np.frombuffer(blob[pos:pos + size], dtype=np.uint8))[:n]
    return torch.from_numpy(np.flatnonzero(bits).astype(np.int64)), pos + size


def _stream_part(s: Stream, kind: str) -> _Part:
    return _Part(s.blob, header=s.header_bytes, tables=s.table_bytes, entropy_bits=s.entropy_bits,
                 **{kind: s.payload_bytes})


def _positions(nz: np.ndarray) -> tuple[_Part, int, str]:
    """Relative indices of the nonzero entries, as the smallest stream over the filler width b."""
    gaps = np.diff(nz, prepend=-1)  # >= 1
    best: tuple[_Part, int, str] | None = None
    top = min(int(gaps.max()).bit_length() + 1, MAX_GAP_BITS) if len(gaps) else 1
    for b in range(1, top + 1):
        filler = (1 << b) - 1
        reps = (gaps - 1) // filler  # fillers before each gap's own symbol
        sym = np.full(int((reps + 1).sum()), filler, dtype=np.int64)
        sym[np.cumsum(reps + 1) - 1] = gaps - 1 - reps * filler
        s = encode_stream(sym, filler + 1)
        if best is None or len(s.blob) < len(best[0].blob):
            best = (_stream_part(s, "positions"), b, s.coder)
    assert best is not None
    return best


def _read_positions(blob: bytes, pos: int, b: int) -> tuple[np.ndarray, int]:
    sym, pos = decode_stream(blob, pos)
    filler = (1 << b) - 1
    step = np.where(sym == filler, filler, sym + 1)
    return (np.cumsum(step) - 1)[sym != filler], pos


def _grid(values: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(t, q) with values = q·2^-t exactly, q integers in a range of at most MAX_ALPHABET, t smallest."""
    v = values.astype(np.float64)
    top = float(np.abs(v).max()) if len(v) else 0.0
    for t in range(MAX_T + 1):
        q = v * 2.0 ** t  # exact: a power-of-two scaling of a float32
        if len(q) and q.max() - q.min() >= MAX_ALPHABET:
            return None
        if np.array_equal(q, np.round(q)):
            return t, q.astype(np.int64)
        if top * 2.0 ** t >= MAX_ALPHABET:
            return None
    return None


def _values(values: np.ndarray) -> tuple[_Part, dict[str, Any]]:
    """The smallest of grid / codebook / raw for these float32 values (+0.0 for zeros)."""
    raw = values.astype("<f4").tobytes()
    options: list[tuple[_Part, dict[str, Any]]] = [
        (_Part(bytes([2]) + raw, header=1, values=len(raw), entropy_bits=32.0 * len(values)),
                {"values": "raw", "t": None, "values_coder": None})]
    grid = _grid(values)
    if grid is not None:
        t, q = grid
        lo = int(q.min()) if len(q) else 0
        head = bytes([0]) + varint(zigzag(t)) + varint(zigzag(lo))
        s = encode_stream(q - lo, int(q.max()) - lo + 1 if len(q) else 1)
        options.append((_Part(head, header=len(head)) + _stream_part(s, "values"),
                        {"values": "grid", "t": t, "values_coder": s.coder}))
    book, idx = np.unique(values, return_inverse=True)
    if len(book) <= MAX_ALPHABET and 4 * len(book) < len(raw):
        head = bytes([1]) + varint(len(book))
        entries = book.astype("<f4").tobytes()
        s = encode_stream(idx.ravel(), len(book))
        options.append((_Part(head + entries, header=len(head), values=len(entries)) + _stream_part(s, "values"),
                        {"values": "codebook", "t": None, "values_coder": s.coder}))
    return min(options, key=lambda o: len(o[0].blob))


def _read_values(blob: bytes, pos: int, n: int) -> tuple[np.ndarray, int]:
    mode = VALUES[blob[pos]]
    pos += 1
    if mode == "raw":
        return np.frombuffer(blob[pos:pos + 4 * n], dtype="<f4").astype(np.float32), pos + 4 * n
    if mode == "grid":
        zt, pos = read_varint(blob, pos)
        zlo, pos = read_varint(blob, pos)
        sym, pos = decode_stream(blob, pos)
        return ((sym + unzigzag(zlo)).astype(np.float64) * 2.0 ** -unzigzag(zt)).astype(np.float32), pos
    k, pos = read_varint(blob, pos)
    book = np.frombuffer(blob[pos:pos + 4 * k], dtype="<f4").astype(np.float32)
    idx, pos = decode_stream(blob, pos + 4 * k)
    return book[idx], pos


def _read_layer(blob: bytes, pos: int) -> tuple[StoredLayer, int]:
    n, pos = read_varint(blob, pos)
    name = blob[pos:pos + n].decode()
    ndim = blob[pos + n]
    pos += n + 1
    shape = []
    for _ in range(ndim):
        d, pos = read_varint(blob, pos)
        shape.append(d)
    rows, pos = _read_mask(blob, pos, shape[0])
    cols, pos = _read_mask(blob, pos, shape[1])
    block_shape = (len(rows), len(cols), *shape[2:])
    size = int(np.prod(block_shape))
    layout = LAYOUTS[blob[pos]]
    if layout == "block":
        values, pos = _read_values(blob, pos + 1, size)
        flat = values
    else:
        nz, pos = _read_positions(blob, pos + 2, blob[pos + 1])
        values, pos = _read_values(blob, pos, len(nz))
        flat = np.zeros(size, dtype=np.float32)
        flat[nz] = values
    if flat.size != size:
        raise ValueError(f"layer {name}: {flat.size} values for a block of {size}")
    return StoredLayer(name, tuple(shape), rows, cols, torch.from_numpy(flat.copy()).view(block_shape)), pos
