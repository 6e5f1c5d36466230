"""int8 GEMM: int8 x int8 (or uint8 x int8) products, int32 accumulation, requantization.

The integer arithmetic of the int8 targets, bit for bit. Operands follow SigDL's int8
numerics (sigdl/core/numerics.py, ONNX QDQ): weights symmetric per output channel (int8, zero
point 0), activations affine uint8 with a zero point or symmetric int8. Two requantizations:

- `float` (ONNX Runtime's MLAS, QLinearMatMul/QLinearConv): q = rint(float32(acc) * M[n]),
  M = x_scale * w_scale[n] / y_scale as float32, ties to even;
- `fixed` (gemmlowp / TFLite, DSPs without float such as the TI C66x integer path):
  M = m0 * 2**(left - right - 31) with a 31-bit m0, a saturating rounding doubling high
  multiply and a rounding right shift.

Then y = clamp(q + y_zero) to uint8 or int8. The CPU path accumulates in float64 BLAS, exact
while |acc| < 2**53 (K < 2**37 for 8-bit operands), so it is bit-exact with the int64
`reference`; the CUDA kernel (int8_gemm.cu) is bit-exact with both (tolerance: 0).

    rq = Requant.from_scales(x_scale, w_scale, y_scale, y_zero=128, dtype="uint8")
    y = int8_gemm(xq, wq, bias_q, x_zero=128, requant=rq)   # NumPy: CPU; CuPy: int8_gemm.cu
    validate(); benchmark(batch=1)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kernels.dispatch import (
    Array,
    KernelInputError,
    check_2d,
    cuda_function,
    grid,
    median_seconds,
    on_gpu,
    to_host,
)

MODES = ("float", "fixed")
_LIMITS = {"uint8": (0, 255), "int8": (-128, 127)}
_T = 16  # T in int8_gemm.cu
_INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class Requant:
    """How int32 accumulators become 8-bit outputs (per output channel n)."""

    multiplier: np.ndarray  # (N,) float32 x_scale * w_scale[n] / y_scale, > 0
    y_zero: int = 0  # output zero point
    dtype: str = "uint8"  # uint8 (affine) | int8 (symmetric)
    mode: str = "float"  # see MODES
    fixed: tuple[np.ndarray, np.ndarray, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        m = np.asarray(self.multiplier, np.float32).reshape(-1)
        if self.mode not in MODES:
            raise KernelInputError(f"mode={self.mode!r}: expected one of {', '.join(MODES)}")
        if self.dtype not in _LIMITS:
            raise KernelInputError(f"dtype={self.dtype!r}: expected uint8 or int8")
        if not (np.isfinite(m).all() and (m > 0).all()):
            raise KernelInputError("requantization multipliers must be finite and > 0")
        object.__setattr__(self, "multiplier", m)
        object.__setattr__(self, "fixed", quantize_multiplier(m))

    @classmethod
    def from_scales(
        cls,
        x_scale: float,
        w_scale: np.ndarray,
        y_scale: float,
        y_zero: int = 0,
        dtype: str = "uint8",
        mode: str = "float",
    ) -> Requant:
        m = np.float32(x_scale) * np.asarray(w_scale, np.float32) / np.float32(y_scale)
        return cls(m.astype(np.float32), y_zero, dtype, mode)


def quantize_multiplier(real: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(m0, left, right) int32 with real ~= m0 * 2**(left - right - 31), m0 in [2**30, 2**31)."""
    mantissa, exponent = np.frexp(np.asarray(real, np.float64))  # real = mantissa * 2**exponent
    m0 = np.round(mantissa * 2**31).astype(np.int64)
    carry = m0 == 2**31  # rounding reached the next power of two
    m0, exponent = np.where(carry, m0 // 2, m0), np.where(carry, exponent + 1, exponent)
    if np.any(exponent < -31) or np.any(exponent > 30):
        raise KernelInputError("requantization multiplier outside 2**-31 .. 2**30")
    left, right = np.maximum(exponent, 0), np.maximum(-exponent, 0)
    return m0.astype(np.int32), left.astype(np.int32), right.astype(np.int32)


def requantize(acc: np.ndarray, rq: Requant) -> np.ndarray:
    """int32 accumulators (M, N) as rq.dtype, exactly as int8_gemm.cu computes them."""
    acc = np.asarray(acc, np.int64)
    if rq.mode == "float":
        q = np.rint(acc.astype(np.float32) * rq.multiplier).astype(np.int64)
    else:
        m0, left, right = (v.astype(np.int64) for v in rq.fixed)
        shifted = np.clip(acc << left, *_INT32)
        q = _rounding_shift(_srdhm(shifted, m0), right)
    return np.clip(q + rq.y_zero, *_LIMITS[rq.dtype]).astype(rq.dtype)


def _srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int32 values held in int64."""
    ab = a * b
    nudged = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(nudged >= 0, nudged >> 31, -((-nudged) >> 31))  # division toward zero
    return np.where((a == b) & (a == _INT32[0]), _INT32[1], high)


def _rounding_shift(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: x / 2**exponent, ties away from zero."""
    mask = (np.int64(1) << exponent) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + ((x & mask) > threshold)


def check(x: Array, w: Array, bias: Array | None) -> None:
    check_2d("w", w)
    check_2d("x", x, w.shape[1])
    if x.dtype.name not in ("uint8", "int8") or w.dtype.name != "int8":
        raise KernelInputError(f"x must be uint8/int8 and w int8, got {x.dtype} and {w.dtype}")
    if bias is not None and (bias.dtype.name != "int32" or bias.shape != (w.shape[0],)):
        raise KernelInputError(f"bias must be int32 ({w.shape[0]},), got {bias.dtype} {bias.shape}")


def reference(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    x_zero: int = 0,
    requant: Requant | None = None,
) -> np.ndarray:
    """Integer matmul in int64; int32 accumulators out, or requantized by `requant`."""
    acc = (np.asarray(x, np.int64) - x_zero) @ np.asarray(w, np.int64).T
    acc += 0 if bias is None else np.asarray(bias, np.int64)
    if acc.size and (acc.min() < _INT32[0] or acc.max() > _INT32[1]):
        raise KernelInputError("int32 accumulators overflow: K is too large for 8-bit operands")
    return acc.astype(np.int32) if requant is None else requantize(acc, requant)


def int8_gemm(
    x: Array, w: Array, bias: Array | None = None, x_zero: int = 0, requant: Requant | None = None
) -> Array:
    """(M, N) int32 accumulators of (x - x_zero) @ w.T + bias, or 8-bit outputs via `requant`,
    on the device x lives on."""
    check(x, w, bias)
    if on_gpu(x, w, bias):
        return _gpu(x, w, bias, x_zero, requant)
    # float64 BLAS is exact for these integers (see the module docstring)
    acc = (np.asarray(x, np.float64) - x_zero) @ np.asarray(w, np.float64).T
    acc = acc + (0 if bias is None else bias)
    return acc.astype(np.int32) if requant is None else requantize(acc.astype(np.int64), requant)


def _gpu(x: Array, w: Array, bias: Array | None, x_zero: int, rq: Requant | None) -> Array:
    import cupy

    (m, k), n = x.shape, w.shape[0]
    bias = cupy.zeros(n, cupy.int32) if bias is None else bias
    dtype = "int32" if rq is None else rq.dtype
    y = cupy.empty((m, n), dtype)
    mode = 0 if rq is None else MODES.index(rq.mode) + 1
    ones = np.ones(n, np.float32)
    multiplier = cupy.asarray(ones if rq is None else rq.multiplier)
    m0, left, right = (cupy.asarray(v) for v in (rq.fixed if rq else quantize_multiplier(ones)))
    qmin, qmax = _LIMITS[dtype] if rq else _INT32
    kind = "u8" if x.dtype == cupy.uint8 else "s8"
    fn = cuda_function("int8_gemm.cu", f"int8_gemm_{kind}")
    fn(
        (grid(n, _T), grid(m, _T)),
        (_T, _T),
        (
            cupy.ascontiguousarray(x),
            cupy.ascontiguousarray(w),
            bias,
            multiplier,
            m0,
            left,
            right,
            y,
            np.int32(m),
            np.int32(n),
            np.int32(k),
            np.int32(x_zero),
            np.int32(rq.y_zero if rq else 0),
            np.int32(mode),
            np.int32(qmin),
            np.int32(qmax),
        ),
    )
    return y


def example(
    batch: int, shape: tuple[int, int], x_dtype: str = "uint8", mode: str = "float", seed: int = 0
) -> tuple:
    """(x, w, bias, x_zero, requant): a layer with plausible scales (outputs span the range)."""
    rng = np.random.default_rng(seed)
    n, k = shape
    lo, hi = _LIMITS[x_dtype]
    x = rng.integers(lo, hi + 1, (batch, k)).astype(x_dtype)
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    bias = rng.integers(-(2**12), 2**12, n).astype(np.int32)
    x_zero = 128 if x_dtype == "uint8" else 0
    spread = 74.0 * 127.0 * np.sqrt(k)  # about one standard deviation of acc
    multiplier = (rng.uniform(0.3, 1.2, n) * 127.0 / spread).astype(np.float32)
    return (
        x,
        w,
        bias,
        x_zero,
        Requant(
            multiplier, int(rng.integers(-5, 6)) + (128 if x_dtype == "uint8" else 0), x_dtype, mode
        ),
    )


def validate(
    batch: int = 4,
    shape: tuple[int, int] = (100, 300),
    x_dtype: str = "uint8",
    mode: str = "float",
    xp: object = np,
    seed: int = 0,
) -> int:
    """Outputs that differ from `reference` on `xp`'s device (must be 0: bit-exact)."""
    x, w, bias, x_zero, rq = example(batch, shape, x_dtype, mode, seed)
    move = xp.asarray  # type: ignore[attr-defined]
    differ = 0
    for requant in (None, rq):
        got = to_host(int8_gemm(move(x), move(w), move(bias), x_zero, requant))
        differ += int(np.count_nonzero(got != reference(x, w, bias, x_zero, requant)))
    if differ:
        raise AssertionError(f"int8_gemm: {differ} outputs differ from the reference")
    return differ


def benchmark(
    batch: int = 1, shape: tuple[int, int] = (300, 784), xp: object = np, repeat: int = 50
) -> dict:
    """Seconds of this kernel (requantized uint8 out) and of the dense fp32 torch.addmm."""
    import torch

    x, w, bias, x_zero, rq = example(batch, shape)
    xt = torch.from_numpy(x.astype(np.float32))
    wt, bt = torch.from_numpy(w.astype(np.float32)), torch.from_numpy(bias.astype(np.float32))
    dev = [xp.asarray(v) for v in (x, w, bias)]  # type: ignore[attr-defined]
    return {
        "kernel_s": median_seconds(lambda: int8_gemm(*dev, x_zero, rq), repeat),
        "dense_torch_s": median_seconds(lambda: torch.addmm(bt, xt, wt.T), repeat),
    }
