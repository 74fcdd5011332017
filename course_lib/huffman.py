"""Huffman coding from scratch: the entropy-coding stage of Deep Compression.

A Huffman code gives frequent symbols short bit strings and rare ones long strings; its average
length L satisfies H <= L < H + 1 bits per symbol, where H = -sum p_i log2 p_i is the entropy.
The course stores *canonical* codes: only each symbol's code length is saved, and both sides
rebuild the same codes from the lengths.

Symbols are non-negative integers (k-means indices, run lengths...). Encoded streams are bytes.
"""
from __future__ import annotations

import heapq
import math
import struct
from collections import Counter

import numpy as np

DENSE_TABLE = 1 << 31  # flag in the table word: the code table is one length byte per symbol 0..max

def _symbols(symbols) -> np.ndarray:
    """``symbols`` as a flat int64 array of integers in [0, 2**32); raises ValueError otherwise
    (floats such as 1.5 are refused, not truncated; integral floats such as 2.0 are accepted)."""
    arr = np.asarray(symbols).ravel()
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iub":
        bad = arr[0] if arr.dtype.kind != "f" else arr[np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))[0]]
        raise ValueError(f"symbols must be integers in [0, 2**32); got {bad.item()!r} (dtype {arr.dtype})")
    if arr.min() < 0 or arr.max() >= 2**32:
        raise ValueError(f"symbols must be non-negative integers in [0, 2**32); got min {arr.min()}, max {arr.max()}")
    return arr.astype(np.int64)


def code_lengths(symbols) -> dict[int, int]:
    """Huffman code length in bits of every distinct symbol of ``symbols`` (a 1-D int sequence,
    values in [0, 2**32)).

    One distinct symbol gets length 1. Ties are broken by symbol value, so the result is deterministic.
    """
    counts = Counter(int(s) for s in _symbols(symbols))
    if not counts:
        return {}
    if len(counts) == 1:
        return {next(iter(counts)): 1}
    heap = [(c, s, (s,)) for s, c in sorted(counts.items())]
    heapq.heapify(heap)
    depth = dict.fromkeys(counts, 0)
    while len(heap) > 1:
        c1, k1, g1 = heapq.heappop(heap)
        c2, k2, g2 = heapq.heappop(heap)
        for s in g1 + g2:
            depth[s] += 1
        heapq.heappush(heap, (c1 + c2, min(k1, k2), g1 + g2))
    return depth


def canonical_codes(lengths: dict[int, int]) -> dict[int, str]:
    """Canonical prefix codes (bit strings) from code lengths: sorted by (length, symbol)."""
    codes, code, prev = {}, 0, 0
    for s, n in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= n - prev
        codes[s] = format(code, f"0{n}b")
        code += 1
        prev = n
    return codes


def entropy_bits(symbols) -> float:
    """Shannon entropy of the empirical distribution of ``symbols``, in bits per symbol."""
    counts = np.bincount(np.asarray(symbols, dtype=np.int64).ravel())
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) if p.size else 0.0


def encode(symbols) -> bytes:
    """Huffman-encode a 1-D sequence of integers in [0, 2**32) (ValueError otherwise: floats with a
    fractional part are refused, never truncated).

    Layout: count (u32), table word (u32), the code table, then the bit stream padded with zeros to
    a whole byte. The table is stored whichever way is smaller: *sparse*, (symbol u32, length u8) per
    distinct symbol, the table word holding their number; or *dense*, as DEFLATE does, one length byte
    (0: absent) for every symbol 0..max, the table word holding ``DENSE_TABLE | (max + 1)``. Lengths
    are all a canonical code needs. ``decode(encode(x)) == x``. The bit stream is built as a Python
    string of '0'/'1' (one byte per bit) and decoded prefix by prefix: fine for teaching at tens of
    thousands of symbols, not a production coder.
    """
    arr = _symbols(symbols)
    lengths = code_lengths(arr)
    codes = canonical_codes(lengths)
    top = max(lengths, default=-1) + 1                     # a dense table covers symbols 0..top-1
    if lengths and top < 5 * len(lengths) and top < DENSE_TABLE and max(lengths.values()) < 256:
        dense = np.zeros(top, dtype=np.uint8)
        for s, n in lengths.items():
            dense[s] = n
        head, table = struct.pack("<II", arr.size, DENSE_TABLE | top), dense.tobytes()
    else:
        head = struct.pack("<II", arr.size, len(lengths))
        table = b"".join(struct.pack("<IB", s, n) for s, n in sorted(lengths.items()))
    bits = "".join(codes[int(s)] for s in arr)
    nbytes = math.ceil(len(bits) / 8)
    payload = int(bits.ljust(nbytes * 8, "0"), 2).to_bytes(nbytes, "big") if bits else b""
    return head + table + payload


def decode(blob: bytes) -> np.ndarray:
    """Inverse of ``encode``: returns int64 array. Raises ValueError on a truncated or corrupt stream."""
    if len(blob) < 8:
        raise ValueError(f"Huffman stream truncated: {len(blob)} bytes, the header alone is 8")
    count, word = struct.unpack_from("<II", blob, 0)
    lengths = {}
    if word & DENSE_TABLE:                                 # one length byte per symbol 0..top-1, 0 = absent
        top = word & ~DENSE_TABLE
        off = 8 + top
        if len(blob) < off:
            raise ValueError("Huffman stream truncated inside its code table")
        lengths = {int(s): int(n) for s, n in enumerate(blob[8:off]) if n}
    else:
        off = 8 + 5 * word
        if len(blob) < off:
            raise ValueError("Huffman stream truncated inside its code table")
        for i in range(word):
            s, n = struct.unpack_from("<IB", blob, 8 + 5 * i)
            if n == 0:
                raise ValueError("Huffman stream corrupt: a code length of 0")
            lengths[s] = n
    if count and not lengths:
        raise ValueError("Huffman stream corrupt: symbols but no code table")
    lookup = {code: s for s, code in canonical_codes(lengths).items()}
    maxlen = max(lengths.values(), default=0)
    bits = bin(int.from_bytes(blob[off:], "big"))[2:].zfill(8 * (len(blob) - off)) if len(blob) > off else ""
    out = np.empty(count, dtype=np.int64)
    pos, i = 0, 0
    while i < count:
        for n in range(1, maxlen + 1):
            s = lookup.get(bits[pos:pos + n])
            if s is not None and pos + n <= len(bits):
                out[i] = s
                pos += n
                i += 1
                break
        else:
            raise ValueError(f"Huffman stream corrupt or truncated at symbol {i} of {count}")
    return out
