"""Huffman coding: round trips (property test), optimality (against an independent merge-cost
computation), prefix property, corrupt streams, refused inputs."""
import heapq
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import huffman


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=300))
def test_round_trip_arbitrary_streams(xs):
    assert huffman.decode(huffman.encode(xs)).tolist() == xs


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=15), min_size=1, max_size=500))
def test_average_length_within_one_bit_of_entropy(xs):
    lengths = huffman.code_lengths(xs)
    avg = np.mean([lengths[x] for x in xs])
    h = huffman.entropy_bits(xs)
    assert h - 1e-9 <= avg < h + 1 or len(set(xs)) == 1


def test_canonical_codes_are_prefix_free():
    rng = np.random.default_rng(0)
    xs = rng.geometric(0.3, 2000)
    codes = list(huffman.canonical_codes(huffman.code_lengths(xs)).values())
    for a in codes:
        for b in codes:
            assert a == b or not b.startswith(a)


def test_skewed_stream_compresses():
    xs = np.r_[np.zeros(9000, int), np.arange(1000) % 7 + 1]
    blob = huffman.encode(xs)
    assert len(blob) < 9000 * 2 / 8 + 200  # well under 2 bits per symbol
    assert np.array_equal(huffman.decode(blob), xs)


def test_errors():
    blob = huffman.encode([1, 2, 3, 3, 3])
    with pytest.raises(ValueError, match="truncated"):
        huffman.decode(blob[:4])
    with pytest.raises(ValueError, match="truncated"):
        huffman.decode(blob[:10])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        huffman.decode(blob[:-1])
    with pytest.raises(ValueError, match="non-negative"):
        huffman.encode([-1, 2])
    assert huffman.decode(huffman.encode([])).tolist() == []


def _optimal_cost(counts):
    """Weighted length of an optimal prefix code, computed independently: the sum of the weights of
    all merges of the two lightest subtrees (Huffman's theorem: every optimal code has this cost)."""
    heap = list(counts)
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=30), min_size=2, max_size=600))
def test_code_is_optimal(xs):
    if len(set(xs)) < 2:
        return
    lengths = huffman.code_lengths(xs)
    counts = Counter(xs)
    assert sum(counts[s] * n for s, n in lengths.items()) == _optimal_cost(counts.values())


def test_floats_are_refused_not_truncated():
    with pytest.raises(ValueError, match=r"symbols must be integers in \[0, 2\*\*32\); got 1\.5"):
        huffman.encode([1.5])
    with pytest.raises(ValueError, match="symbols"):
        huffman.code_lengths(np.array([0.25, 1.0]))
    assert huffman.decode(huffman.encode(np.array([3.0, 1.0]))).tolist() == [3, 1]  # integral floats are fine


def test_code_table_is_stored_the_smaller_way_and_round_trips():
    """Dense (one length byte per symbol 0..max, as DEFLATE) when it beats (symbol u32, length u8) pairs."""
    import struct
    rng = np.random.default_rng(0)
    many = rng.integers(0, 200, 5000)                       # ~200 distinct symbols in 0..199: dense wins
    blob = huffman.encode(many)
    word = struct.unpack_from("<I", blob, 4)[0]
    lengths = huffman.code_lengths(many)
    assert word == huffman.DENSE_TABLE | (max(lengths) + 1)
    assert len(blob) == 8 + max(lengths) + 1 + -(-sum(lengths[int(s)] for s in many) // 8)
    assert np.array_equal(huffman.decode(blob), many)
    sparse = np.array([0, 10**6, 10**6, 5])                 # few symbols far apart: the pairs win
    blob = huffman.encode(sparse)
    assert struct.unpack_from("<I", blob, 4)[0] == 3 and np.array_equal(huffman.decode(blob), sparse)
    dense_blob = huffman.encode(many)
    with pytest.raises(ValueError, match="truncated"):
        huffman.decode(dense_blob[:20])
