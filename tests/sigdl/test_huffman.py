"""The entropy and index codecs under `.sdc`: canonical Huffman, bit packing, sparse indices."""

import heapq
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sigdl.core import huffman, sparse
from sigdl.core.errors import InputError
from sigdl.core.huffman import HuffmanCode

FAST = settings(max_examples=60, deadline=None)


def _round_trip(symbols: np.ndarray) -> HuffmanCode:
    code = huffman.encode(symbols)
    again = HuffmanCode.from_bytes(code.to_bytes())
    np.testing.assert_array_equal(huffman.decode(again), symbols)
    assert again.nbits == code.nbits and again.count == symbols.size
    return code


def _optimal_bits(counts: np.ndarray) -> int:
    """Cost of an unrestricted Huffman code: the sum of all merged weights."""
    heap = [int(c) for c in counts if c]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged
        heapq.heappush(heap, merged)
    return total


@st.composite
def skewed_symbols(draw: st.DrawFn) -> np.ndarray:
    alphabet = draw(st.sampled_from([2, 3, 32, 256, 4096]))
    n = draw(st.integers(0, 3000))
    skew = draw(st.floats(0.01, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return np.minimum(rng.geometric(skew, n) - 1, alphabet - 1)


@FAST
@given(skewed_symbols())
def test_huffman_round_trip_is_exact_and_optimal(symbols):
    code = _round_trip(symbols)
    counts = np.bincount(symbols) if symbols.size else np.zeros(0, np.int64)
    if np.count_nonzero(counts) >= 2:
        assert code.nbits == _optimal_bits(counts)  # no length limit hit at these sizes
        used = code.lengths[code.lengths > 0].astype(np.int64)
        assert np.sum(2.0**-used) == 1.0  # a complete prefix code
    assert code.coded_bits == 8 * len(code.to_bytes())


def test_huffman_edge_cases():
    empty = _round_trip(np.zeros(0, np.int64))
    assert empty.to_bytes() == b"\0\0\0" and huffman.decode(empty).dtype == np.int64
    lone = _round_trip(np.full(1000, 7))
    assert lone.lengths[7] == 1 and lone.nbits == 1000  # one bit each, so the count is kept
    _round_trip(np.array([0, 65535, 65535]))  # the whole alphabet
    for bad in (np.array([-1]), np.array([65536]), np.array([0.5]), np.zeros((2, 2), int)):
        with pytest.raises(InputError):
            huffman.encode(bad)


def test_code_lengths_are_limited():
    fibonacci = [1, 1]
    while len(fibonacci) < 32:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    counts = np.array(fibonacci)  # an unrestricted tree is 31 deep
    assert huffman.code_lengths(counts, 64).max() == 31
    for limit in (24, 8, 5):
        lengths = huffman.code_lengths(counts, limit)
        assert lengths.max() <= limit and np.sum(2.0 ** -lengths.astype(float)) <= 1.0
    symbols = np.repeat(np.arange(26), fibonacci[:26])  # ~300K symbols, a tree 25 deep
    code = _round_trip(symbols)
    assert code.lengths.max() <= huffman.MAX_CODE_BITS
    with pytest.raises(InputError, match="cannot all get codes"):
        huffman.code_lengths(np.ones(40), 5)


def test_table_is_compact_for_sparse_alphabets():
    code = huffman.encode(np.array([0, 60000, 60000, 60000]))
    # two code lengths and runs of absent symbols of 128 each
    assert len(code.table_bytes()) == 2 + -(-59999 // 128)
    assert len(huffman.encode(np.arange(32)).table_bytes()) == 32


@FAST
@given(st.binary(max_size=64), st.integers(0, 2**32 - 1))
def test_corrupted_huffman_streams_raise_input_error(garbage, seed):
    symbols = np.random.default_rng(seed).geometric(0.2, 500) - 1
    blob = bytearray(huffman.encode(symbols).to_bytes())
    rng = np.random.default_rng(seed)
    for pos in rng.integers(0, len(blob), 3):
        blob[pos] ^= 1 << int(rng.integers(0, 8))
    for candidate in (bytes(blob), bytes(blob[: rng.integers(0, len(blob))]), garbage):
        try:
            decoded = huffman.decode(HuffmanCode.from_bytes(candidate))
        except InputError:
            continue
        code = HuffmanCode.from_bytes(candidate)  # a flip inside the bitstream may still parse
        assert decoded.size == code.count


@FAST
@given(st.integers(1, 24), st.integers(0, 500), st.integers(0, 2**32 - 1))
def test_fixed_width_packing_round_trips(width, n, seed):
    values = np.random.default_rng(seed).integers(0, 1 << width, n)
    data = huffman.pack_fixed(values, width)
    assert len(data) == -(-n * width // 8)
    np.testing.assert_array_equal(huffman.unpack_fixed(data, width, n), values)
    with pytest.raises(InputError):
        huffman.unpack_fixed(data + b"\0", width, n)


def test_pack_fixed_refuses_values_wider_than_the_width():
    with pytest.raises(InputError, match=r"0\.\.7"):
        huffman.pack_fixed(np.array([8]), 3)


def test_a_million_symbols_code_in_seconds():
    rng = np.random.default_rng(0)
    symbols = np.minimum(rng.geometric(0.08, 1_000_000) - 1, 255)
    start = time.perf_counter()
    code = huffman.encode(symbols)
    encoded = time.perf_counter()
    decoded = huffman.decode(code)
    done = time.perf_counter()
    np.testing.assert_array_equal(decoded, symbols)
    bits = code.nbits / symbols.size
    print(
        f"1M symbols: encode {encoded - start:.2f} s, decode {done - encoded:.2f} s, {bits:.2f} b"
    )
    assert done - start < 10.0  # ~0.5 s on one core; generous for a shared 2-core machine


# --- sparse relative indices -------------------------------------------------------------------


def test_sparse_follows_deep_compression_figure_2():
    # 3-bit indices cover distances 1..8: the jump of 11 from position 4 to 15 takes a filler
    assignments = np.zeros(20, np.uint8)
    assignments[[1, 4, 15]] = [3, 5, 2]
    gaps, values = sparse.encode_sparse(assignments, index_bits=3)
    np.testing.assert_array_equal(gaps, [1, 2, 7, 2])
    np.testing.assert_array_equal(values, [3, 5, 0, 2])
    np.testing.assert_array_equal(sparse.decode_sparse(gaps, values, 20, 3), assignments)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 4000),
    st.floats(0.0, 1.0),
    st.integers(1, 8),
    st.integers(1, 255),
    st.integers(0, 2**32 - 1),
)
def test_sparse_round_trip_is_exact(length, density, index_bits, k, seed):
    rng = np.random.default_rng(seed)
    keep = rng.random(length) < density**3  # cubing puts most examples at high sparsity
    assignments = (rng.integers(1, k + 1, length) * keep).astype(np.uint8)
    gaps, values = sparse.encode_sparse(assignments, index_bits)
    assert gaps.size == values.size and (gaps < 1 << index_bits).all() and (gaps >= 0).all()
    assert np.count_nonzero(values) == np.count_nonzero(assignments)  # fillers carry 0
    assert values.dtype == assignments.dtype
    np.testing.assert_array_equal(
        sparse.decode_sparse(gaps, values, length, index_bits), assignments
    )


def test_sparse_refuses_inconsistent_streams():
    with pytest.raises(InputError, match="beyond length"):
        sparse.decode_sparse(np.array([3, 3]), np.array([1, 1]), 5, 2)
    with pytest.raises(InputError, match="does not fit 2 index bits"):
        sparse.decode_sparse(np.array([4]), np.array([1]), 9, 2)
    with pytest.raises(InputError, match="2 gaps but 1 values"):
        sparse.decode_sparse(np.array([0, 0]), np.array([1]), 9, 2)
    with pytest.raises(InputError, match="index_bits"):
        sparse.encode_sparse(np.ones(3, int), 0)
