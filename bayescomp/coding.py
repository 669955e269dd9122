"""A real storage format for compressed weights, with a decoder that returns them bit for bit.

Per layer, in the style of Deep Compression [HMD16] Sec. 3-4:
- positions of the nonzero weights (row-major) as relative indices (gaps); a gap larger than
  2^index_bits - 2 is split with filler symbols (the largest symbol = "skip that many, no weight");
- values: as indices into a codebook of the distinct nonzero float32 values ("codebook"), or, when
  that is not smaller, as raw float32 ("raw", e.g. for an uncompressed dense layer);
- gaps and codebook indices Huffman-coded (canonical codes, transmitted as code lengths).
The artifact is the concatenation of the layers; `encode` returns its bytes, `decode` inverts it.
Biases are not stored (the paper's compression rates exclude them).

[HMD16] Han, Mao, Dally. Deep Compression. ICLR 2016.
"""
from __future__ import annotations

import heapq
import struct
from collections import Counter

import numpy as np
import torch
from torch import Tensor

MAGIC = b"BCW1"
MAX_CODEBOOK = 1 << 16  # more distinct values than this are stored raw
_MODES = {0: "codebook", 1: "raw"}


def huffman_lengths(counts: dict[int, int]) -> dict[int, int]:
    """Code length per symbol of an optimal prefix code (Huffman 1952); a lone symbol gets length 1."""
    if len(counts) == 1:
        return {next(iter(counts)): 1}
    heap = [(c, i, [s]) for i, (s, c) in enumerate(sorted(counts.items()))]
    heapq.heapify(heap)
    lengths = dict.fromkeys(counts, 0)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def canonical_codes(lengths: dict[int, int]) -> dict[int, tuple[int, int]]:
    """symbol -> (code, length), canonical order: by length, then symbol."""
    codes, code, prev = {}, 0, 0
    for sym, ln in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= ln - prev
        codes[sym] = (code, ln)
        code, prev = code + 1, ln
    return codes


def _pack(symbols: np.ndarray, codes: dict[int, tuple[int, int]]) -> tuple[bytes, int]:
    if len(symbols) == 0:
        return b"", 0
    table_code = np.zeros(max(codes) + 1, dtype=np.int64)
    table_len = np.zeros(max(codes) + 1, dtype=np.int64)
    for s, (c, ln) in codes.items():
        table_code[s], table_len[s] = c, ln
    code, ln = table_code[symbols], table_len[symbols]
    rep_code, rep_len = np.repeat(code, ln), np.repeat(ln, ln)
    starts = np.repeat(np.cumsum(ln) - ln, ln)
    k = np.arange(len(rep_len)) - starts
    bits = ((rep_code >> (rep_len - 1 - k)) & 1).astype(np.uint8)
    return np.packbits(bits).tobytes(), int(len(bits))


def _unpack(blob: bytes, n_bits: int, n_symbols: int, lengths: dict[int, int]) -> np.ndarray:
    lookup = {(ln, c): s for s, (c, ln) in canonical_codes(lengths).items()}
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8))[:n_bits].tolist()
    out, code, ln = [], 0, 0
    for b in bits:
        code, ln = (code << 1) | b, ln + 1
        sym = lookup.get((ln, code))
        if sym is not None:
            out.append(sym)
            code, ln = 0, 0
    if len(out) != n_symbols or ln != 0:
        raise ValueError("corrupt bit stream")
    return np.asarray(out, dtype=np.int64)


def _huffman_block(symbols: np.ndarray, alphabet: int) -> bytes:
    counts = Counter(symbols.tolist())
    lengths = huffman_lengths(counts) if counts else {}
    blob, n_bits = _pack(symbols, canonical_codes(lengths)) if counts else (b"", 0)
    table = bytes(lengths.get(s, 0) for s in range(alphabet))
    return struct.pack("<III", alphabet, len(symbols), n_bits) + table + struct.pack("<I", len(blob)) + blob


def _read_huffman_block(buf: memoryview, pos: int) -> tuple[np.ndarray, int]:
    alphabet, n_sym, n_bits = struct.unpack_from("<III", buf, pos)
    pos += 12
    lengths = {s: ln for s, ln in enumerate(bytes(buf[pos:pos + alphabet])) if ln}
    pos += alphabet
    (n_blob,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    syms = _unpack(bytes(buf[pos:pos + n_blob]), n_bits, n_sym, lengths) if n_sym else np.zeros(0, np.int64)
    return syms, pos + n_blob


def encode_layer(w: Tensor, index_bits: int = 8) -> bytes:
    """One layer (any shape) -> bytes. −0.0 is stored as +0.0 (a pruned weight either way)."""
    flat = (w.detach().cpu().to(torch.float32).flatten() + 0.0).numpy()
    nz = np.flatnonzero(flat)
    filler = (1 << index_bits) - 1
    gaps = np.diff(nz, prepend=-1)  # >= 1; store gap - 1 in 0..filler-1, filler = skip `filler` positions
    reps = (gaps - 1) // filler  # fillers before each gap's own symbol
    sym = np.full(int((reps + 1).sum()), filler, dtype=np.int64)
    sym[np.cumsum(reps + 1) - 1] = gaps - 1 - reps * filler
    values = flat[nz]
    book, idx = np.unique(values, return_inverse=True)
    head = MAGIC + struct.pack("<B", w.dim()) + struct.pack(f"<{w.dim()}I", *w.shape) + struct.pack("<B", index_bits)
    body_pos = _huffman_block(sym, filler + 1)
    raw = values.astype("<f4").tobytes()
    if len(book) <= MAX_CODEBOOK and len(book) < len(values) // 2:  # else the codebook alone costs as much as raw
        cb = struct.pack("<I", len(book)) + book.astype("<f4").tobytes() + _huffman_block(idx.astype(np.int64), len(book))
        if len(cb) < len(raw) + 4:
            return head + struct.pack("<B", 0) + body_pos + cb
    return head + struct.pack("<B", 1) + body_pos + struct.pack("<I", len(values)) + raw


def decode_layer(blob: bytes, pos: int = 0) -> tuple[Tensor, int]:
    """Inverse of `encode_layer`; returns the tensor and the position after it."""
    buf = memoryview(blob)
    if bytes(buf[pos:pos + 4]) != MAGIC:
        raise ValueError("not an encoded layer")
    (ndim,) = struct.unpack_from("<B", buf, pos + 4)
    shape = struct.unpack_from(f"<{ndim}I", buf, pos + 5)
    pos += 5 + 4 * ndim
    (index_bits,), (mode,) = struct.unpack_from("<B", buf, pos), struct.unpack_from("<B", buf, pos + 1)
    pos += 2
    filler = (1 << index_bits) - 1
    sym, pos = _read_huffman_block(buf, pos)
    if _MODES[mode] == "codebook":
        (n_book,) = struct.unpack_from("<I", buf, pos)
        book = np.frombuffer(bytes(buf[pos + 4:pos + 4 + 4 * n_book]), dtype="<f4")
        idx, pos = _read_huffman_block(buf, pos + 4 + 4 * n_book)
        values = book[idx]
    else:
        (n,) = struct.unpack_from("<I", buf, pos)
        values = np.frombuffer(bytes(buf[pos + 4:pos + 4 + 4 * n]), dtype="<f4")
        pos += 4 + 4 * n
    positions, cur = [], -1
    skip = 0
    for s in sym.tolist():
        if s == filler:
            skip += filler
            continue
        cur += skip + s + 1
        skip = 0
        positions.append(cur)
    flat = np.zeros(int(np.prod(shape)), dtype=np.float32)
    flat[np.asarray(positions, dtype=np.int64)] = values
    return torch.from_numpy(flat).view(*shape), pos


def encode(weights: dict[str, Tensor], index_bits: dict[str, int] | None = None) -> bytes:
    """All layers -> one artifact. index_bits per layer (default 8 for conv, 5 for Linear, as [HMD16])."""
    out = []
    for name, w in weights.items():
        bits = (index_bits or {}).get(name, 8 if w.dim() == 4 else 5)
        out.append(struct.pack("<H", len(name)) + name.encode() + encode_layer(w, bits))
    return b"".join(out)


def decode(blob: bytes) -> dict[str, Tensor]:
    """Inverse of `encode`."""
    out, pos = {}, 0
    while pos < len(blob):
        (n,) = struct.unpack_from("<H", blob, pos)
        name = blob[pos + 2:pos + 2 + n].decode()
        out[name], pos = decode_layer(blob, pos + 2 + n)
    return out
