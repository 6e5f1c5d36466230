"""Canonical Huffman decoding of `.sdc` index streams (sigdl/core/huffman.py's bitstreams).

The input is a coded stream's fields: the code length of every symbol, the bitstream bytes,
the symbol count and the bit count (`HuffmanCode.lengths, .data, .count, .nbits`).

- CPU path (NumPy bytes): the code length at every bit position in one vectorized pass,
  then one hop per symbol from code to code (the only sequential step, ~0.1 us a symbol);
- GPU path (CuPy bytes): huffman_decode.cu's self-synchronizing segments, every segment
  decoded by its own thread, a few rounds until the segment starts agree, then a scan.

Which one retest uses: the `.sdc` is read from disk into host memory and each stream is
decoded once per candidate, in milliseconds for a LeNet (benchmarks/results/kernels.md), a
small share of scoring it; so services/retest/compressed.py decodes on the CPU and uploads
the decoded indices. The GPU decoder is for streams already on the device; it is validated
against `reference` by the gpu-marked tests, and no speedup of it is claimed here.

    symbols = huffman_decode(code.lengths, np.frombuffer(code.data, np.uint8), code.count,
                             code.nbits)
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np

from kernels.dispatch import (
    Array,
    KernelInputError,
    cuda_function,
    grid,
    median_seconds,
    on_gpu,
    to_host,
)

MAX_CODE_BITS = 24  # sigdl.core.huffman.MAX_CODE_BITS: a code plus 7 offset bits fit 32 bits
SEGMENT_BITS = 512  # bits per GPU thread
_CHUNK = 1 << 20  # bit positions per CPU pass (bounds the window temporaries)


@dataclass(frozen=True)
class Tables:
    """The canonical code of `lengths`, as DEFLATE assigns it."""

    symbols: np.ndarray  # used symbols sorted by (length, symbol), int32
    first: np.ndarray  # (max_len + 1,) first code of each length, int32
    offset: np.ndarray  # (max_len + 1,) index in `symbols` of each length's first code, int32
    count: np.ndarray  # (max_len + 1,) codes of each length
    limit: np.ndarray  # (max_len,) uint32: windows below limit[l - 1] have a code of length <= l
    max_len: int


def tables(lengths: np.ndarray) -> Tables:
    lengths = np.asarray(lengths, np.int64)
    if lengths.size == 0 or lengths.max() > MAX_CODE_BITS or lengths.min() < 0:
        raise KernelInputError(f"code lengths must lie in 0..{MAX_CODE_BITS}, with one used")
    used = np.flatnonzero(lengths)
    symbols = used[np.argsort(lengths[used], kind="stable")]
    max_len = int(lengths.max())
    count = np.bincount(lengths[used], minlength=max_len + 1)
    first = np.zeros(max_len + 1, np.int64)
    for length in range(1, max_len + 1):
        first[length] = (first[length - 1] + count[length - 1]) << 1
    offset = np.concatenate([[0], np.cumsum(count)[:-1]])
    ls = np.arange(1, max_len + 1)
    limit = (first[ls] + count[ls]) << (max_len - ls)
    return Tables(
        symbols.astype(np.int32),
        first.astype(np.int32),
        offset.astype(np.int32),
        count,
        limit.astype(np.uint32),
        max_len,
    )


def reference(lengths: np.ndarray, data: bytes | np.ndarray, count: int, nbits: int) -> np.ndarray:
    """Bit by bit, as zlib's puff.c decodes: extend the code one bit at a time until it falls
    within the codes of its length. Plain Python: for tests and validation."""
    t = tables(lengths)
    bits = np.unpackbits(np.frombuffer(bytes(to_host(data)), np.uint8))[:nbits].tolist()
    out, pos = [], 0
    for _ in range(count):
        code = length = 0
        while True:
            if pos >= nbits or length >= t.max_len:
                raise KernelInputError(f"huffman stream: {count} symbols overrun {nbits} bits")
            code, length, pos = (code << 1) | bits[pos], length + 1, pos + 1
            rank = code - int(t.first[length])
            if 0 <= rank < int(t.count[length]):
                out.append(int(t.symbols[t.offset[length] + rank]))
                break
    if pos != nbits:
        raise KernelInputError(f"huffman stream: {count} symbols end at bit {pos}, not {nbits}")
    return np.array(out, np.int64)


def huffman_decode(lengths: np.ndarray, data: Array, count: int, nbits: int) -> Array:
    """The `count` symbols (int64 on the CPU, int32 on the GPU) of the stream in `data`
    (uint8 bytes), on the device `data` lives on; an invalid stream raises KernelInputError."""
    if count == 0:
        return np.zeros(0, np.int64)
    if nbits > 8 * data.shape[0] or count > nbits:
        raise KernelInputError(
            f"huffman stream: {count} symbols in {nbits} bits of {data.shape[0]} bytes"
        )
    t = tables(lengths)
    if on_gpu(data):
        return _gpu(t, data, count, nbits)
    return _cpu(t, np.asarray(data, np.uint8), count, nbits)


def _windows(padded: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """The `width` bits starting at each bit position, MSB first, as uint64."""
    byte = positions >> 3
    word = np.zeros(positions.shape, np.uint64)
    for i in range(4):
        word = (word << np.uint64(8)) | padded[byte + i].astype(np.uint64)
    word = (word << (positions & 7).astype(np.uint64)) & np.uint64(0xFFFFFFFF)
    return word >> np.uint64(32 - width)


def _cpu(t: Tables, data: np.ndarray, count: int, nbits: int) -> np.ndarray:
    padded = np.concatenate([data, np.zeros(4, np.uint8)])
    steps = np.zeros(nbits + MAX_CODE_BITS + 1, np.uint8)  # a hop past the end lands on 0
    for lo in range(0, nbits, _CHUNK):
        windows = _windows(padded, np.arange(lo, min(lo + _CHUNK, nbits)), t.max_len)
        found = np.searchsorted(t.limit, windows, side="right") + 1
        steps[lo : lo + windows.size] = np.where(found <= t.max_len, found, 0)
    view, starts, pos = memoryview(steps), array("q", bytes(8 * count)), 0
    for i in range(count):
        starts[i] = pos
        pos += view[pos]
    at = np.frombuffer(starts, np.int64)
    if pos != nbits or not steps[at].all():
        raise KernelInputError(f"huffman stream: {count} symbols do not decode to {nbits} bits")
    windows = _windows(padded, at, t.max_len)
    length = steps[at].astype(np.int64)
    code = (windows >> (t.max_len - length).astype(np.uint64)).astype(np.int64)
    return t.symbols[t.offset[length] + code - t.first[length]].astype(np.int64)


def _gpu(t: Tables, data: Array, count: int, nbits: int) -> Array:
    import cupy

    padded = cupy.concatenate([data.astype(cupy.uint8), cupy.zeros(4, cupy.uint8)])
    segments = -(-nbits // SEGMENT_BITS)
    limit = cupy.asarray(t.limit)
    starts = cupy.arange(segments, dtype=cupy.int64) * SEGMENT_BITS  # guesses but the first
    exits = cupy.empty(segments, cupy.int64)
    counts = cupy.empty(segments, cupy.int64)
    decode = cuda_function("huffman_decode.cu", "decode_segments")
    args = (padded, np.int64(nbits), limit, np.int32(t.max_len), np.int64(SEGMENT_BITS))
    for _ in range(segments):  # converges in a few rounds; at worst one per segment
        decode((grid(segments, 128),), (128,), (*args, starts, exits, counts, np.int32(segments)))
        moved = cupy.concatenate([starts[:1], exits[:-1]])
        if bool(cupy.array_equal(moved, starts)):
            break
        starts = moved
    if int(counts.sum()) != count or int(exits[-1]) != nbits:
        raise KernelInputError(f"huffman stream: {count} symbols do not decode to {nbits} bits")
    offsets = cupy.cumsum(counts) - counts
    out = cupy.empty(count, cupy.int32)
    write = cuda_function("huffman_decode.cu", "write_symbols")
    tabs = [cupy.asarray(v) for v in (t.first, t.offset, t.symbols)]
    write(
        (grid(segments, 128),),
        (128,),
        (
            padded,
            np.int64(nbits),
            limit,
            *tabs,
            np.int32(t.max_len),
            np.int64(SEGMENT_BITS),
            starts,
            offsets,
            out,
            np.int32(segments),
        ),
    )
    return out


def example(count: int = 100_000, alphabet: int = 32, seed: int = 0) -> tuple:
    """(lengths, data uint8, count, nbits, symbols) of a skewed stream, like codebook indices."""
    from sigdl.core import huffman  # the .sdc writer's encoder (only for examples and tests)

    rng = np.random.default_rng(seed)
    symbols = np.minimum(rng.geometric(0.25, count) - 1, alphabet - 1)
    code = huffman.encode(symbols)
    return code.lengths, np.frombuffer(code.data, np.uint8), code.count, code.nbits, symbols


def validate(count: int = 20_000, alphabet: int = 32, xp: object = np, seed: int = 0) -> int:
    """Symbols that differ from `reference` on `xp`'s device (must be 0)."""
    lengths, data, n, nbits, _ = example(count, alphabet, seed)
    got = to_host(huffman_decode(lengths, xp.asarray(data), n, nbits))  # type: ignore[attr-defined]
    differ = int(np.count_nonzero(got != reference(lengths, data, n, nbits)))
    if differ:
        raise AssertionError(f"huffman_decode: {differ} symbols differ from the reference")
    return differ


def benchmark(count: int = 100_000, alphabet: int = 32, xp: object = np, repeat: int = 5) -> dict:
    """Seconds of this decoder and of sigdl.core.huffman.decode (the .sdc reader's)."""
    from sigdl.core import huffman

    lengths, data, n, nbits, _ = example(count, alphabet)
    code = huffman.HuffmanCode(lengths, data.tobytes(), n, nbits)
    dev = xp.asarray(data)  # type: ignore[attr-defined]
    return {
        "kernel_s": median_seconds(lambda: huffman_decode(lengths, dev, n, nbits), repeat, 1),
        "sdc_reader_s": median_seconds(lambda: huffman.decode(code), repeat, 1),
    }
