"""kernels.huffman_decode against the .sdc writer's encoder and reader (sigdl.core.huffman)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import huffman_decode
from kernels.dispatch import KernelInputError
from sigdl.core import huffman


@pytest.mark.parametrize("count", [1, 2, 100, 5000])
@pytest.mark.parametrize("alphabet", [1, 2, 5, 32, 256, 4096])
@pytest.mark.parametrize("skew", [0.05, 0.5])
def test_decode_matches_the_sdc_reader(count, alphabet, skew):
    rng = np.random.default_rng(count + alphabet)
    symbols = np.minimum(rng.geometric(skew, count) - 1, alphabet - 1)
    code = huffman.encode(symbols)
    data = np.frombuffer(code.data, np.uint8)
    np.testing.assert_array_equal(huffman.decode(code), symbols)
    np.testing.assert_array_equal(
        huffman_decode.reference(code.lengths, data, count, code.nbits), symbols
    )
    np.testing.assert_array_equal(
        huffman_decode.huffman_decode(code.lengths, data, count, code.nbits), symbols
    )


def test_long_codes_up_to_the_format_limit():
    counts = np.array([2**i for i in range(22)])  # Fibonacci-like skew: very long codes
    symbols = np.repeat(np.arange(22), counts)
    code = huffman.encode(np.random.default_rng(0).permutation(symbols))
    assert code.lengths.max() >= 20
    data = np.frombuffer(code.data, np.uint8)
    np.testing.assert_array_equal(
        huffman_decode.huffman_decode(code.lengths, data, code.count, code.nbits),
        huffman.decode(code),
    )


def test_canonical_tables_match_the_writer():
    code = huffman.encode(np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3]))
    t = huffman_decode.tables(code.lengths)
    codes = huffman.canonical_codes(code.lengths)
    for rank, symbol in enumerate(t.symbols):
        length = int(code.lengths[symbol])
        assert codes[symbol] == t.first[length] + rank - t.offset[length]


def test_truncated_or_overlong_streams_are_refused():
    code = huffman.encode(np.arange(40) % 7)
    data = np.frombuffer(code.data, np.uint8)
    with pytest.raises(KernelInputError, match="do not decode"):
        huffman_decode.huffman_decode(code.lengths, data, code.count - 1, code.nbits)
    with pytest.raises(KernelInputError):
        huffman_decode.reference(code.lengths, data, code.count + 1, code.nbits)
    with pytest.raises(KernelInputError, match="bytes"):
        huffman_decode.huffman_decode(code.lengths, data[:1], code.count, code.nbits)
