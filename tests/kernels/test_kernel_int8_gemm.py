"""kernels.int8_gemm: bit-exact integer GEMM and requantization, against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import int8_gemm
from kernels.dispatch import KernelInputError


def _gemmlowp(acc: int, m0: int, left: int, right: int) -> int:
    """gemmlowp's MultiplyByQuantizedMultiplier in Python integers (ground truth)."""
    a = max(-(2**31), min(2**31 - 1, acc << left))
    if a == m0 == -(2**31):
        high = 2**31 - 1
    else:
        ab = a * m0
        nudged = ab + (1 << 30 if ab >= 0 else 1 - (1 << 30))
        high = (abs(nudged) >> 31) * (1 if nudged >= 0 else -1)  # division toward zero
    mask = (1 << right) - 1
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if (high & mask) > threshold else 0)


@pytest.mark.parametrize("shape", [(1, 1), (10, 17), (100, 300), (64, 800)])
@pytest.mark.parametrize("batch", [1, 4, 33])
@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
def test_accumulators_match_torch_integer_matmul(shape, batch, x_dtype):
    x, w, bias, x_zero, _ = int8_gemm.example(batch, shape, x_dtype, seed=batch)
    truth = (torch.from_numpy(x.astype(np.int64)) - x_zero) @ torch.from_numpy(w.astype(np.int64)).T
    truth = (truth + torch.from_numpy(bias.astype(np.int64))).numpy()
    np.testing.assert_array_equal(int8_gemm.reference(x, w, bias, x_zero), truth)
    got = int8_gemm.int8_gemm(x, w, bias, x_zero)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, truth)


@pytest.mark.parametrize("shape", [(10, 17), (100, 300)])
@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
def test_float_requantization_matches_torch_round_half_even(shape, x_dtype):
    x, w, bias, x_zero, rq = int8_gemm.example(8, shape, x_dtype, "float")
    acc = torch.from_numpy(int8_gemm.reference(x, w, bias, x_zero))
    scaled = acc.float() * torch.from_numpy(rq.multiplier)  # float32 product, as MLAS
    lo, hi = (0, 255) if x_dtype == "uint8" else (-128, 127)
    truth = torch.clamp(torch.round(scaled).long() + rq.y_zero, lo, hi).numpy()
    got = int8_gemm.int8_gemm(x, w, bias, x_zero, rq)
    assert got.dtype == np.dtype(x_dtype)
    np.testing.assert_array_equal(got, truth)
    assert 0 < np.mean((got == lo) | (got == hi)) < 0.2  # the range is used, not saturated


def test_float_requantization_rounds_ties_to_even():
    rq = int8_gemm.Requant(np.array([0.5], np.float32), y_zero=0, dtype="int8")
    acc = np.array([[1], [3], [5], [-1], [-3], [7]], np.int64)
    np.testing.assert_array_equal(int8_gemm.requantize(acc, rq).ravel(), [0, 2, 2, 0, -2, 4])


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixed_point_requantization_matches_gemmlowp(x_dtype, seed):
    x, w, bias, x_zero, rq = int8_gemm.example(6, (20, 64), x_dtype, "fixed", seed)
    acc = int8_gemm.reference(x, w, bias, x_zero)
    m0, left, right = rq.fixed
    lo, hi = (0, 255) if x_dtype == "uint8" else (-128, 127)
    truth = np.array(
        [
            [
                min(
                    hi,
                    max(lo, _gemmlowp(int(a), int(m0[n]), int(left[n]), int(right[n])) + rq.y_zero),
                )
                for n, a in enumerate(row)
            ]
            for row in acc
        ]
    )
    np.testing.assert_array_equal(int8_gemm.int8_gemm(x, w, bias, x_zero, rq), truth)
    # fixed point approximates the float multiplier to within one level
    as_float = int8_gemm.requantize(acc, int8_gemm.Requant(rq.multiplier, rq.y_zero, x_dtype))
    assert np.abs(as_float.astype(int) - truth).max() <= 1


@pytest.mark.parametrize("real", [1e-6, 0.0123, 0.5, 0.99999, 1.0, 3.7, 1000.0])
def test_quantize_multiplier_represents_the_real_multiplier(real):
    m0, left, right = (int(v[0]) for v in int8_gemm.quantize_multiplier(np.array([real])))
    assert 2**30 <= m0 < 2**31
    assert m0 * 2.0 ** (left - right - 31) == pytest.approx(real, rel=2**-30)


@pytest.mark.parametrize("mode", ["float", "fixed"])
def test_validate_is_bit_exact(mode):
    assert int8_gemm.validate(mode=mode) == 0


def test_overflow_and_bad_dtypes_are_refused():
    with pytest.raises(KernelInputError, match="uint8/int8"):
        int8_gemm.int8_gemm(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.int8))
    with pytest.raises(KernelInputError, match="multipliers"):
        int8_gemm.Requant(np.array([0.0], np.float32))
    x, w = np.full((1, 70_000), 255, np.uint8), np.full((1, 70_000), 127, np.int8)
    with pytest.raises(KernelInputError, match="overflow"):
        int8_gemm.reference(x, w)
