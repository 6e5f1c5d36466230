"""Canonical Huffman coding of small non-negative integer symbols, and the bit packing under it.

Deep Compression (Han, Mao, Dally, ICLR 2016, section 4) Huffman-codes the codebook indices and
the sparse relative indices of every layer: both distributions are skewed, so a variable-length
code saves 20-30% over fixed width. The code is canonical, so the table is only the code length
of each symbol, and decoding needs no tree: the next `max_len` bits, read as an integer, give the
code length by table lookup (by bisection over per-length limits when codes exceed 16 bits), and
the code's rank within its length gives the symbol. Lengths are found for every bit position at
once; only hopping from one code to the next is a Python loop (about 0.1 us per symbol).

    code = encode(np.array([1, 1, 2, 0, 1]))
    assert (decode(HuffmanCode.from_bytes(code.to_bytes())) == [1, 1, 2, 0, 1]).all()
    print(code.fixed_bits(), "bits fixed-width,", code.coded_bits, "bits coded")

Bits are written most significant first, codes back to back, the last byte padded with zeros.
"""

from __future__ import annotations

import heapq
from array import array
from dataclasses import dataclass

import numpy as np

from sigdl.core.errors import InputError

MAX_CODE_BITS = 24  # a code plus a misaligned bit offset (<= 7) must fit a 32-bit window
MAX_ALPHABET = 65536  # symbols are 0..65535
_PACK_CHUNK = 1 << 18  # symbols per bit-packing batch: bounds the (n, max_len) temporaries
_WINDOW_CHUNK = 1 << 19  # bytes per decoding batch (x8 bit positions)
_LUT_BITS = 16  # code lengths up to this are found by table lookup, longer ones by bisection
_MASK32 = np.uint64(0xFFFFFFFF)
_ZERO_RUN = 127  # table byte b > 127 is a run of b - 127 absent symbols (1..128)


@dataclass
class HuffmanCode:
    """A coded sequence: the canonical code lengths, the bitstream and how many symbols it holds."""

    lengths: np.ndarray  # (alphabet,) uint8 code length per symbol, 0 = symbol absent
    data: bytes  # the bitstream, zero padded to whole bytes
    count: int  # symbols coded
    nbits: int  # bits used in `data`, without the padding

    def __post_init__(self) -> None:
        self.lengths = np.asarray(self.lengths, dtype=np.uint8)
        _check_lengths(self.lengths)
        if self.count < 0 or self.nbits < 0 or len(self.data) != -(-self.nbits // 8):
            raise InputError(f"huffman stream: {len(self.data)} bytes for {self.nbits} bits")
        if (self.count == 0) != (self.nbits == 0) or self.count > self.nbits:
            raise InputError(f"huffman stream: {self.count} symbols in {self.nbits} bits")
        if self.count and not self.lengths.any():
            raise InputError("huffman stream: symbols but an empty code table")

    def table_bytes(self) -> bytes:
        """The code lengths, one byte each, runs of absent symbols folded into one byte."""
        out = bytearray()
        lengths = self.lengths.tolist()
        i = 0
        while i < len(lengths):
            if lengths[i]:
                out.append(lengths[i])
                i += 1
                continue
            run = 1
            while i + run < len(lengths) and lengths[i + run] == 0 and run < 128:
                run += 1
            out.append(_ZERO_RUN + run)
            i += run
        return bytes(out)

    def to_bytes(self) -> bytes:
        table = self.table_bytes()
        head = _varint(self.count) + _varint(self.nbits) + _varint(len(table))
        return head + table + self.data

    @classmethod
    def from_bytes(cls, blob: bytes) -> HuffmanCode:
        """Parse `to_bytes` output; anything malformed raises InputError."""
        blob = bytes(blob)
        count, pos = _read_varint(blob, 0)
        nbits, pos = _read_varint(blob, pos)
        table_len, pos = _read_varint(blob, pos)
        if pos + table_len > len(blob):
            raise InputError("huffman stream: code table runs past the end")
        lengths = _parse_table(blob[pos : pos + table_len])
        return cls(lengths, blob[pos + table_len :], count, nbits)

    @property
    def coded_bits(self) -> int:
        """Everything the stream costs when stored: framing, table and bitstream."""
        return 8 * len(self.to_bytes())

    def fixed_bits(self, width: int | None = None) -> int:
        """What the same symbols cost at `width` bits each (default: enough for the alphabet)."""
        return self.count * (fixed_width(len(self.lengths)) if width is None else width)


def fixed_width(alphabet: int) -> int:
    """Bits per symbol of a fixed-width code for symbols 0..alphabet-1 (at least 1)."""
    return max(1, (alphabet - 1).bit_length())


def encode(symbols: np.ndarray, max_len: int = MAX_CODE_BITS) -> HuffmanCode:
    """Huffman-code a 1-D sequence of integers in 0..65535 with code lengths <= max_len."""
    symbols = _as_symbols(symbols)
    if not 1 <= max_len <= MAX_CODE_BITS:
        raise InputError(f"max_len {max_len} out of range 1..{MAX_CODE_BITS}")
    if symbols.size == 0:
        return HuffmanCode(np.zeros(0, np.uint8), b"", 0, 0)
    lengths = code_lengths(np.bincount(symbols), max_len)
    codes = canonical_codes(lengths)
    data, nbits = pack_codes(codes[symbols], lengths[symbols])
    return HuffmanCode(lengths, data, int(symbols.size), nbits)


def decode(code: HuffmanCode) -> np.ndarray:
    """The int64 symbols of `code`; a stream that does not decode exactly raises InputError."""
    if code.count == 0:
        return np.zeros(0, np.int64)
    table = _DecodeTable.build(code.lengths)
    steps = _steps(code.data, code.nbits, table)
    starts = _follow(steps, code.count, code.nbits)
    windows = _windows(_padded(code.data), starts, table.max_len)
    return table.symbols_of(windows).astype(np.int64)


def code_lengths(counts: np.ndarray, max_len: int = MAX_CODE_BITS) -> np.ndarray:
    """Huffman code lengths for symbol frequencies `counts`, none longer than `max_len`.

    Too-deep trees are flattened by halving every frequency (rounding up, so no used symbol
    disappears) and rebuilding: simple, and all-equal weights give a balanced tree of depth
    ceil(log2 n) <= 16, so it always terminates. The loss against package-merge is negligible.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, np.uint8)
    used = np.flatnonzero(counts)
    if used.size == 1:
        lengths[used] = 1  # a lone symbol still needs one bit per occurrence to be counted
    if used.size <= 1:
        return lengths
    if max_len < fixed_width(used.size):
        raise InputError(f"{used.size} symbols cannot all get codes of at most {max_len} bits")
    weights = counts[used]
    depths = _tree_depths(weights)
    while depths.max() > max_len:
        weights = (weights + 1) // 2
        depths = _tree_depths(weights)
    lengths[used] = depths
    return lengths


def _tree_depths(weights: np.ndarray) -> np.ndarray:
    """Leaf depths of the Huffman tree of `weights` (at least two of them)."""
    n = int(weights.size)
    heap = [(int(w), i) for i, w in enumerate(weights.tolist())]
    heapq.heapify(heap)
    parent = [0] * (2 * n - 1)
    for node in range(n, 2 * n - 1):
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (w1 + w2, node))
    # a parent is created after its children, so walking ids downwards sees parents first
    depth = [0] * (2 * n - 1)
    for node in range(2 * n - 3, -1, -1):
        depth[node] = depth[parent[node]] + 1
    return np.array(depth[:n], dtype=np.int64)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of each symbol (uint32, right-aligned), as DEFLATE assigns them."""
    table = _Canonical.build(lengths)
    codes = np.zeros(lengths.size, np.uint32)
    sym_len = lengths[table.symbols].astype(np.int64)
    rank = np.arange(table.symbols.size) - table.offset[sym_len]
    codes[table.symbols] = (table.first[sym_len] + rank).astype(np.uint32)
    return codes


@dataclass
class _Canonical:
    """Canonical code structure: symbols sorted by (length, symbol) and per-length starts."""

    symbols: np.ndarray  # used symbols in canonical order
    first: np.ndarray  # (max_len + 1,) first code of each length
    offset: np.ndarray  # (max_len + 1,) index in `symbols` of the first code of each length
    count: np.ndarray  # (max_len + 1,) codes of each length
    max_len: int

    @classmethod
    def build(cls, lengths: np.ndarray) -> _Canonical:
        lengths = lengths.astype(np.int64)
        used = np.flatnonzero(lengths)
        symbols = used[np.argsort(lengths[used], kind="stable")]
        max_len = int(lengths.max(initial=0))
        count = np.bincount(lengths[used], minlength=max_len + 1)
        count[0] = 0
        first = np.zeros(max_len + 1, np.int64)
        for length in range(1, max_len + 1):
            first[length] = (first[length - 1] + count[length - 1]) << 1
        offset = np.concatenate([[0], np.cumsum(count)[:-1]])
        return cls(symbols, first, offset, count, max_len)


@dataclass
class _DecodeTable:
    """For a `max_len`-bit window: its code length via `limit`, then its symbol."""

    canon: _Canonical
    limit: np.ndarray  # (max_len,) windows below limit[l - 1] have a code of length <= l
    lut: np.ndarray | None  # (2**max_len,) code length of every window, when that is small

    @property
    def max_len(self) -> int:
        return self.canon.max_len

    @classmethod
    def build(cls, lengths: np.ndarray) -> _DecodeTable:
        canon = _Canonical.build(lengths)
        ls = np.arange(1, canon.max_len + 1)
        limit = (canon.first[ls] + canon.count[ls]) << (canon.max_len - ls)
        table = cls(canon, limit, None)
        if canon.max_len <= _LUT_BITS:
            table.lut = table.lengths_of(np.arange(1 << canon.max_len, dtype=np.uint64))
        return table

    def lengths_of(self, windows: np.ndarray) -> np.ndarray:
        """Code length starting each window; 0 where the bits are no code (incomplete table)."""
        if self.lut is not None:
            return self.lut[windows]
        found = np.searchsorted(self.limit, windows, side="right") + 1
        return np.where(found <= self.max_len, found, 0).astype(np.uint8)

    def symbols_of(self, windows: np.ndarray) -> np.ndarray:
        c = self.canon
        length = np.searchsorted(self.limit, windows, side="right") + 1
        code = windows.astype(np.int64) >> (self.max_len - length)
        return c.symbols[c.offset[length] + code - c.first[length]]


def _steps(data: bytes, nbits: int, table: _DecodeTable) -> np.ndarray:
    """Code length at every bit position (0 past the end or on invalid bits), uint8.

    Bit positions 8*i + s for all i share the shift s, so each of the eight shifts is one
    vectorized pass over the 32-bit words starting at every byte; no per-bit gather.
    """
    words = _words(_padded(data))[: len(data)]
    # padding so that a chain that overruns the end stalls on a zero instead of indexing out
    steps = np.zeros(8 * len(data) + MAX_CODE_BITS + 1, np.uint8)
    for start in range(0, words.size, _WINDOW_CHUNK):
        chunk = words[start : start + _WINDOW_CHUNK]
        for shift in range(8):
            windows = ((chunk << np.uint64(shift)) & _MASK32) >> np.uint64(32 - table.max_len)
            steps[8 * start + shift : 8 * (start + chunk.size) : 8] = table.lengths_of(windows)
    steps[nbits:] = 0
    return steps


def _follow(steps: np.ndarray, count: int, nbits: int) -> np.ndarray:
    """Bit positions of the first `count` codes, checked to end exactly at the stream's end.

    The only sequential part of decoding: one list step per symbol (about 0.1 us each).
    """
    view = memoryview(steps)
    starts = array("q", bytes(8 * count))  # C int64s: no Python object kept per symbol
    pos = 0
    for i in range(count):
        starts[i] = pos
        pos += view[pos]
    out = np.frombuffer(starts, dtype=np.int64)
    if pos != nbits or not steps[out].all():
        raise InputError(f"huffman stream: {count} symbols do not decode to exactly {nbits} bits")
    return out


def pack_codes(codes: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Concatenate codes (right-aligned uint) of the given bit lengths; return (bytes, nbits)."""
    codes = np.asarray(codes, dtype=np.uint32)
    lengths = np.asarray(lengths, dtype=np.int64)
    if codes.size == 0:
        return b"", 0
    max_len = int(lengths.max())
    shifts = np.arange(max_len - 1, -1, -1, dtype=np.uint32)
    columns = np.arange(max_len)
    parts = []
    for start in range(0, codes.size, _PACK_CHUNK):
        c, n = codes[start : start + _PACK_CHUNK], lengths[start : start + _PACK_CHUNK]
        left = c << (max_len - n).astype(np.uint32)  # left-justify, so bit j is column j
        bits = ((left[:, None] >> shifts) & 1).astype(np.uint8)  # (n, max_len)
        parts.append(bits[columns < n[:, None]])  # row-major: codes stay in order
    bits = np.concatenate(parts)
    return np.packbits(bits).tobytes(), int(bits.size)


def pack_fixed(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers below 2**width at `width` bits each."""
    values = np.asarray(values).reshape(-1)
    if values.size and (values.min() < 0 or values.max() >> width):
        raise InputError(f"fixed-width stream: values must lie in 0..{2**width - 1}")
    return pack_codes(values, np.full(values.size, width))[0]


def unpack_fixed(data: bytes, width: int, count: int) -> np.ndarray:
    """Inverse of `pack_fixed`: `count` int64 values; raises InputError on a size mismatch."""
    if not 1 <= width <= MAX_CODE_BITS:
        raise InputError(f"fixed-width stream: width {width} out of range 1..{MAX_CODE_BITS}")
    if count < 0 or len(data) != -(-count * width // 8):
        raise InputError(f"fixed-width stream: {len(data)} bytes for {count} x {width} bits")
    positions = np.arange(count, dtype=np.int64) * width
    return _windows(_padded(data), positions, width).astype(np.int64)


def _padded(data: bytes) -> np.ndarray:
    # four zero bytes so that a 32-bit window may start in any byte of the data
    return np.frombuffer(bytes(data) + b"\0\0\0\0", dtype=np.uint8)


def _words(buf: np.ndarray) -> np.ndarray:
    """The 32 bits starting at each byte of `buf` but the last three, as uint64 (MSB first)."""
    b = buf.astype(np.uint64)
    return (
        (b[:-3] << np.uint64(24)) | (b[1:-2] << np.uint64(16)) | (b[2:-1] << np.uint64(8)) | b[3:]
    )


def _windows(buf: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """The `width` bits starting at each bit position, as uint64 integers (MSB first)."""
    byte = positions >> 3
    word = (
        (buf[byte].astype(np.uint64) << np.uint64(24))
        | (buf[byte + 1].astype(np.uint64) << np.uint64(16))
        | (buf[byte + 2].astype(np.uint64) << np.uint64(8))
        | buf[byte + 3].astype(np.uint64)
    )
    word = (word << (positions & 7).astype(np.uint64)) & _MASK32
    return word >> np.uint64(32 - width)


def _as_symbols(symbols: np.ndarray) -> np.ndarray:
    symbols = np.asarray(symbols)
    if symbols.ndim != 1 or (symbols.size and symbols.dtype.kind not in "iu"):
        raise InputError(
            f"symbols must be a 1-D integer array, got {symbols.dtype} {symbols.shape}"
        )
    if symbols.size and (symbols.min() < 0 or symbols.max() >= MAX_ALPHABET):
        raise InputError(f"symbols must lie in 0..{MAX_ALPHABET - 1}")
    return symbols.astype(np.int64)


def _check_lengths(lengths: np.ndarray) -> None:
    if lengths.ndim != 1 or lengths.size > MAX_ALPHABET:
        raise InputError(f"huffman table: {lengths.size} symbols, at most {MAX_ALPHABET}")
    used = lengths[lengths > 0].astype(np.int64)
    if used.size and used.max() > MAX_CODE_BITS:
        raise InputError(f"huffman table: code length {used.max()} > {MAX_CODE_BITS}")
    # Kraft's inequality: otherwise canonical codes overflow their lengths
    if int(np.sum(np.int64(1) << (MAX_CODE_BITS - used))) > 1 << MAX_CODE_BITS:
        raise InputError("huffman table: code lengths violate Kraft's inequality")


def _parse_table(table: bytes) -> np.ndarray:
    lengths = bytearray()
    for b in table:
        if 1 <= b <= MAX_CODE_BITS:
            lengths.append(b)
        elif b > _ZERO_RUN:
            lengths.extend(bytes(b - _ZERO_RUN))
        else:
            raise InputError(f"huffman table: invalid byte {b}")
        if len(lengths) > MAX_ALPHABET:
            raise InputError(f"huffman table: more than {MAX_ALPHABET} symbols")
    return np.frombuffer(bytes(lengths), dtype=np.uint8).copy()


def _varint(value: int) -> bytes:
    """LEB128: small counts in one or two bytes, which matters for many small tensors."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(blob: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(blob) or shift > 63:
            raise InputError("huffman stream: truncated or oversized length field")
        byte = blob[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos
