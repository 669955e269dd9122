"""Entropy coding of integer symbol streams: Huffman, ANS, a constant or exp-Golomb, whichever is smallest.

A stream codes n symbols from the alphabet 0..K-1 and describes itself (bayescomp.coding's format):

    stream := u8 coder | varint n | body
    coder 0 "huffman":  varint K | varint T | table | varint P | payload
        table: per symbol, Elias-gamma(code length + 1) [Eli75], bit-packed MSB first, byte-padded;
        payload: the canonical code words [SK64] of the symbols of an optimal prefix code [Huf52],
        MSB first, padded to a byte.
    coder 1 "ans":      varint K | varint T | table | varint P | payload
        table: per symbol, Elias-gamma(count + 1); the decoder rebuilds the same categorical model,
        constriction.stream.model.Categorical(counts, perfect=False) [BM22];
        payload: the 32-bit words of a constriction AnsCoder [Dud13] (little endian).
    coder 2 "constant": varint s (all n symbols are s; no payload)
    coder 3 "golomb":   zigzag c | u8 k | varint P | payload
        payload: exponential-Golomb codes of order k [Teu78] of zigzag(symbol - c), MSB first,
        padded to a byte: no table, for few symbols spread over a wide alphabet.

Integers are LEB128 varints (unsigned; `zigzag` maps signed ones). The encoder tries each coder that
applies and keeps the smallest stream, so a stream never costs more than its Huffman code.
`entropy_bits` is n·H of the empirical distribution, the bound of any coder of these symbols one
at a time with a free model.

[Huf52] D. A. Huffman. A method for the construction of minimum-redundancy codes. Proc. IRE 1952.
[SK64] E. S. Schwartz, B. Kallick. Generating a canonical prefix encoding. CACM 1964.
[Eli75] P. Elias. Universal codeword sets and representations of the integers. IEEE T-IT 1975.
[Teu78] J. Teuhola. A compression method for clustered bit-vectors. IPL 1978 (exp-Golomb codes).
[Dud13] J. Duda. Asymmetric numeral systems. arXiv:1311.2540, 2013.
[BM22] R. Bamler. Understanding entropy coding with asymmetric numeral systems (ANS): a statistician's
       perspective. arXiv:2201.01741, 2022 (the `constriction` library).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

try:
    import constriction
except ImportError:  # e.g. a GPU image without it: Huffman and exp-Golomb only; `reproduce recode` adds ANS later
    constriction = None
import numpy as np

CODERS = ("huffman", "ans", "constant", "golomb")
LOOKUP_MAX_BITS = 20  # Huffman decoding by table lookup up to this code length, bit by bit beyond


@dataclass(frozen=True)
class Stream:
    """An encoded stream and what its bytes are spent on (header + table + payload = len(blob))."""

    blob: bytes
    coder: str
    header_bytes: int
    table_bytes: int
    payload_bytes: int
    entropy_bits: float


def varint(n: int) -> bytes:
    """LEB128: 7 bits per byte, low first; the high bit says another byte follows."""
    if n < 0:
        raise ValueError(f"varint of a negative number {n}; use zigzag")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Inverse of `varint`: (value, position after it)."""
    n, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, pos


def zigzag(n: int) -> int:
    """Signed -> unsigned: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    return 2 * n if n >= 0 else -2 * n - 1


def unzigzag(z: int) -> int:
    return z // 2 if z % 2 == 0 else -(z + 1) // 2


def entropy_bits(counts: np.ndarray) -> float:
    """n·H(p) with p the empirical distribution of the counts, in bits. [Shannon 1948]"""
    c = counts[counts > 0].astype(np.float64)
    return float(-(c * np.log2(c / c.sum())).sum()) if len(c) else 0.0


def huffman_lengths(counts: dict[int, int]) -> dict[int, int]:
    """Code length per symbol of an optimal prefix code [Huf52]; a lone symbol gets length 1."""
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
    """symbol -> (code, length), canonical order: by length, then symbol [SK64]."""
    codes, code, prev = {}, 0, 0
    for sym, ln in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= ln - prev
        codes[sym] = (code, ln)
        code, prev = code + 1, ln
    return codes


def encode_stream(symbols: np.ndarray, alphabet: int) -> Stream:
    """The smallest of the applicable coders for `symbols` (ints in 0..alphabet-1)."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if len(symbols) and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise ValueError(f"symbols outside the alphabet 0..{alphabet - 1}")
    counts = np.bincount(symbols, minlength=alphabet)
    h = entropy_bits(counts)
    if len(symbols) == 0 or np.count_nonzero(counts) == 1:
        s = int(symbols[0]) if len(symbols) else 0
        head = bytes([2]) + varint(len(symbols)) + varint(s)
        return Stream(head, "constant", len(head), 0, 0, h)
    options = (_huffman(symbols, counts, h), _golomb(symbols, h)) + (
        (_ans(symbols, counts, h),) if constriction is not None else ())
    return min(options, key=lambda s: len(s.blob))


def decode_stream(buf: bytes, pos: int) -> tuple[np.ndarray, int]:
    """Inverse of `encode_stream`: (symbols as int64, position after the stream)."""
    coder = buf[pos]
    n, pos = read_varint(buf, pos + 1)
    if CODERS[coder] == "constant":
        s, pos = read_varint(buf, pos)
        return np.full(n, s, dtype=np.int64), pos
    if CODERS[coder] == "golomb":
        c, pos = read_varint(buf, pos)
        k = buf[pos]
        p_len, pos = read_varint(buf, pos + 1)
        u = _golomb_decode(buf[pos:pos + p_len], n, k)
        return np.where(u % 2 == 0, u // 2, -(u + 1) // 2) + unzigzag(c), pos + p_len
    alphabet, pos = read_varint(buf, pos)
    t_len, pos = read_varint(buf, pos)
    table = _read_gamma(buf[pos:pos + t_len], alphabet) - 1
    pos += t_len
    p_len, pos = read_varint(buf, pos)
    payload = buf[pos:pos + p_len]
    if CODERS[coder] == "huffman":
        out = _huffman_decode(payload, n, table)
    else:
        if constriction is None:
            raise ImportError("this weight file holds ANS-coded streams; decoding them needs the `constriction` "
                              "package: pip install constriction")
        model = constriction.stream.model.Categorical(table.astype(np.float64), perfect=False)
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        out = constriction.stream.stack.AnsCoder(words).decode(model, n).astype(np.int64)
    return out, pos + p_len


def _framed(coder: int, n: int, alphabet: int, table: bytes, payload: bytes, name: str, h: float) -> Stream:
    head = bytes([coder]) + varint(n) + varint(alphabet) + varint(len(table))
    mid = varint(len(payload))
    return Stream(head + table + mid + payload, name, len(head) + len(mid), len(table), len(payload), h)


def _huffman(symbols: np.ndarray, counts: np.ndarray, h: float) -> Stream:
    lengths = huffman_lengths({s: int(c) for s, c in enumerate(counts) if c})
    table_len = np.zeros(len(counts), dtype=np.int64)
    table_code = np.zeros(len(counts), dtype=np.int64)
    for s, (c, ln) in canonical_codes(lengths).items():
        table_code[s], table_len[s] = c, ln
    payload = _pack_codes(table_code[symbols], table_len[symbols])
    return _framed(0, len(symbols), len(counts), _gamma(table_len + 1), payload, "huffman", h)


def _ans(symbols: np.ndarray, counts: np.ndarray, h: float) -> Stream:
    model = constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), model)  # a stack: pushed in reverse, decoded in order
    payload = coder.get_compressed().astype("<u4").tobytes()
    return _framed(1, len(symbols), len(counts), _gamma(counts + 1), payload, "ans", h)


def _golomb(symbols: np.ndarray, h: float) -> Stream:
    c = int(np.median(symbols))
    d = symbols - c
    u = np.where(d >= 0, 2 * d, -2 * d - 1)  # zigzag
    best = None
    for k in range(int(u.max()).bit_length() + 1):
        v = u + (1 << k)
        length = 2 * _bit_length(v) - 1 - k  # [Teu78]: (bitlen(v) - 1 - k) zeros, then v
        if best is None or length.sum() < best[1].sum():
            best = (k, length, v)
    assert best is not None
    k, length, v = best
    table = varint(zigzag(c)) + bytes([k])
    payload = _pack_codes(v, length)
    head, mid = bytes([3]) + varint(len(symbols)), varint(len(payload))
    return Stream(head + table + mid + payload, "golomb", len(head) + len(mid), len(table), len(payload), h)


def _golomb_decode(payload: bytes, n: int, k: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8)).tolist()
    out, pos = [], 0
    for _ in range(n):
        zeros = 0
        while bits[pos + zeros] == 0:
            zeros += 1
        v = 0
        for b in bits[pos + zeros:pos + 2 * zeros + k + 1]:
            v = (v << 1) | b
        out.append(v - (1 << k))
        pos += 2 * zeros + k + 1
    return np.asarray(out, dtype=np.int64)


def _bit_length(values: np.ndarray) -> np.ndarray:
    return np.frexp(values.astype(np.float64))[1].astype(np.int64)  # exact below 2^53


def _pack_codes(code: np.ndarray, length: np.ndarray) -> bytes:
    """Concatenate code words (value, bit length), MSB first, zero-padded to a byte."""
    rep_code, rep_len = np.repeat(code, length), np.repeat(length, length)
    k = np.arange(len(rep_len)) - np.repeat(np.cumsum(length) - length, length)
    return np.packbits(((rep_code >> (rep_len - 1 - k)) & 1).astype(np.uint8)).tobytes()


def _gamma(values: np.ndarray) -> bytes:
    """Elias-gamma codes of positive integers [Eli75]: floor(log2 v) zeros, then v in binary."""
    values = np.asarray(values, dtype=np.int64)
    return _pack_codes(values, 2 * _bit_length(values) - 1)  # leading zeros are the high zero bits of the word


def _read_gamma(blob: bytes, count: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8)).tolist()
    out, pos = [], 0
    for _ in range(count):
        zeros = 0
        while bits[pos] == 0:
            zeros, pos = zeros + 1, pos + 1
        v = 0
        for b in bits[pos:pos + zeros + 1]:
            v = (v << 1) | b
        out.append(v)
        pos += zeros + 1
    return np.asarray(out, dtype=np.int64)


def _huffman_decode(payload: bytes, n: int, lengths: np.ndarray) -> np.ndarray:
    codes = canonical_codes({s: int(ln) for s, ln in enumerate(lengths) if ln})
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8)).astype(np.int64)
    max_len = int(lengths.max())
    if max_len <= LOOKUP_MAX_BITS:  # peek max_len bits -> (symbol, length) by table lookup
        sym_of = np.zeros(1 << max_len, dtype=np.int64)
        len_of = np.zeros(1 << max_len, dtype=np.int64)
        for s, (c, ln) in codes.items():
            lo = c << (max_len - ln)
            sym_of[lo:lo + (1 << (max_len - ln))], len_of[lo:lo + (1 << (max_len - ln))] = s, ln
        padded = np.concatenate([bits, np.zeros(max_len, dtype=np.int64)])
        window = np.zeros(len(bits), dtype=np.int64)
        for k in range(max_len):
            window = (window << 1) | padded[k:k + len(bits)]
        sym_at, len_at = sym_of[window].tolist(), len_of[window].tolist()
        out, pos = [], 0
        for _ in range(n):
            out.append(sym_at[pos])
            pos += len_at[pos]
        return np.asarray(out, dtype=np.int64)
    lookup = {(ln, c): s for s, (c, ln) in codes.items()}
    out, code, ln = [], 0, 0
    for b in bits.tolist():
        code, ln = (code << 1) | b, ln + 1
        if (sym := lookup.get((ln, code))) is not None:
            out.append(sym)
            code, ln = 0, 0
            if len(out) == n:
                break
    if len(out) != n:
        raise ValueError("corrupt Huffman stream")
    return np.asarray(out, dtype=np.int64)
