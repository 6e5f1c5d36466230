"""Deep Compression's sparse storage: relative positions of the nonzeros, with filler zeros.

Han, Mao, Dally (ICLR 2016, section 2 and Fig. 2) store a pruned layer as the positions of its
nonzero weights relative to the previous one, in `index_bits` bits each (8 for conv, 5 for fc).
A stored gap g means "skip g positions, then the entry", so g = 0..2**index_bits - 1 covers
distances 1..2**index_bits. A longer distance is bridged with filler entries that skip the
maximum and carry assignment 0 (a zero weight, exactly what the position holds anyway).

    gaps, values = encode_sparse(assignments, index_bits=5)
    assert (decode_sparse(gaps, values, assignments.size, 5) == assignments).all()
"""

from __future__ import annotations

import numpy as np

from sigdl.core.errors import InputError

MAX_INDEX_BITS = 16


def encode_sparse(assignments: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(gaps, values) of a flat assignment array: one entry per nonzero, plus fillers.

    gaps: int64 in 0..2**index_bits - 1; values: the assignments there (0 for a filler).
    """
    flat = np.asarray(assignments).reshape(-1)
    check_index_bits(index_bits)
    span = 1 << index_bits  # the longest distance one entry can cover
    positions = np.flatnonzero(flat)
    distance = np.diff(positions, prepend=-1)  # from the previous nonzero; the first from -1
    fillers = (distance - 1) // span  # each filler covers `span` positions
    entries = fillers + 1
    ends = np.cumsum(entries) - 1  # index of each real entry, after its fillers
    total = int(ends[-1]) + 1 if ends.size else 0
    gaps = np.full(total, span - 1, dtype=np.int64)
    gaps[ends] = distance - fillers * span - 1
    values = np.zeros(total, dtype=flat.dtype)
    values[ends] = flat[positions]
    return gaps, values


def decode_sparse(gaps: np.ndarray, values: np.ndarray, length: int, index_bits: int) -> np.ndarray:
    """The flat assignment array of `length` entries that `encode_sparse` produced (gaps, values).

    Raises InputError when the streams do not describe an array of that length.
    """
    check_index_bits(index_bits)
    gaps = np.asarray(gaps, dtype=np.int64).reshape(-1)
    values = np.asarray(values).reshape(-1)
    if gaps.size != values.size:
        raise InputError(f"sparse streams: {gaps.size} gaps but {values.size} values")
    if gaps.size and (gaps.min() < 0 or gaps.max() >= 1 << index_bits):
        raise InputError(f"sparse streams: a gap does not fit {index_bits} index bits")
    positions = np.cumsum(gaps + 1) - 1
    if positions.size and positions[-1] >= length:
        raise InputError(f"sparse streams: position {positions[-1]} beyond length {length}")
    out = np.zeros(length, dtype=values.dtype)
    out[positions] = values
    return out


def check_index_bits(index_bits: int) -> None:
    """Raise InputError unless `index_bits` is a usable relative-index width."""
    if not isinstance(index_bits, int | np.integer) or not 1 <= index_bits <= MAX_INDEX_BITS:
        raise InputError(
            f"index_bits must be an integer in 1..{MAX_INDEX_BITS}, got {index_bits!r}"
        )
