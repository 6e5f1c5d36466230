"""Weight-shared linear layer, y = x @ codebook[A].T + b, from the index matrix A alone.

A trained-quantized layer (Deep Compression's weight sharing) is K float centroids and one
small index per weight. Reading 1-2 bytes of index instead of 4 of weight is the point, so no
dense weight is ever built: the GPU kernel decodes each 16 x 16 tile into shared memory, and
the CPU path decodes a block of output rows at a time (at most `_CPU_TILE` weights) into a
scratch buffer for one BLAS call.

    y = codebook_linear(x, assignments, codebook, bias)   # NumPy: CPU; CuPy: codebook_linear.cu
    validate(batch=4, bits=5)
    benchmark(batch=1, bits=5)

The reference sums x per cluster first and multiplies by each centroid once (the paper's
"sum, then multiply", K multiplies per output): another order of the same sum, so float32
results agree within RTOL * (1 + sum |x| |w|).
"""

from __future__ import annotations

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

RTOL = 1e-5  # relative to sum |x| |w| of the output, see the module docstring
_CPU_TILE = 1 << 14  # weights decoded per CPU step: 64 KiB, reused by malloc (a fresh MiB faults)
_SHARED_CODEBOOK = 256  # SHARED_CODEBOOK in codebook_linear.cu
_T = 16  # T in codebook_linear.cu


def check(x: Array, assignments: Array, codebook: Array) -> None:
    check_2d("x", x, assignments.shape[1] if assignments.ndim == 2 else None)
    check_2d("assignments", assignments)
    if assignments.dtype.name not in ("uint8", "uint16"):
        raise KernelInputError(f"assignments must be uint8 or uint16, got {assignments.dtype}")
    if codebook.ndim != 1 or not 1 <= codebook.shape[0] <= 1 << 16:
        raise KernelInputError(f"codebook must be (K,) with 1 <= K <= 65536, got {codebook.shape}")


def reference(
    x: np.ndarray, assignments: np.ndarray, codebook: np.ndarray, bias: np.ndarray | None = None
) -> np.ndarray:
    """(B, out) float64: per output, x summed per cluster (B, K), times the codebook."""
    x = np.asarray(x, np.float64)
    codebook = np.asarray(codebook, np.float64)
    xt = x.T  # (in, B)
    y = np.zeros((x.shape[0], assignments.shape[0]))
    for o, row in enumerate(np.asarray(assignments)):
        sums = np.zeros((codebook.size, x.shape[0]))  # (K, B)
        np.add.at(sums, row, xt)
        y[:, o] = codebook @ sums
    return y + (0.0 if bias is None else np.asarray(bias, np.float64))


def codebook_linear(
    x: Array, assignments: Array, codebook: Array, bias: Array | None = None
) -> Array:
    """(B, out) float32 x @ codebook[assignments].T + bias, on the device x lives on."""
    check(x, assignments, codebook)
    if on_gpu(x, assignments, codebook, bias):
        return _gpu(x, assignments, codebook, bias)
    return _cpu(np.asarray(x, np.float32), assignments, np.asarray(codebook, np.float32), bias)


def _cpu(x: np.ndarray, a: np.ndarray, codebook: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    out, cols = a.shape
    y = np.empty((x.shape[0], out), np.float32)
    step = max(1, _CPU_TILE // max(cols, 1))
    scratch = np.empty((min(step, out), cols), np.float32)
    for r in range(0, out, step):
        tile = scratch[: min(step, out - r)]
        np.take(codebook, a[r : r + step], out=tile)  # (rows, in) decoded weights
        y[:, r : r + step] = x @ tile.T  # numpy's BLAS path needs a contiguous result
    return y + bias if bias is not None else y


def _gpu(x: Array, a: Array, codebook: Array, bias: Array | None) -> Array:
    import cupy

    x = cupy.ascontiguousarray(x, dtype=cupy.float32)
    a = cupy.ascontiguousarray(a)
    codebook = cupy.ascontiguousarray(codebook, dtype=cupy.float32)
    batch, out, k = x.shape[0], a.shape[0], codebook.shape[0]
    bias = cupy.zeros(out, cupy.float32) if bias is None else bias.astype(cupy.float32)
    y = cupy.empty((batch, out), cupy.float32)
    kind = "u8" if a.dtype == cupy.uint8 else "u16"
    fn = cuda_function("codebook_linear.cu", f"codebook_linear_{kind}")
    fn(
        (grid(out, _T), grid(batch, _T)),
        (_T, _T),
        (
            x,
            a,
            codebook,
            bias,
            y,
            np.int32(batch),
            np.int32(a.shape[1]),
            np.int32(out),
            np.int32(k),
        ),
        shared_mem=4 * min(k, _SHARED_CODEBOOK),
    )
    return y


def tolerance(x: np.ndarray, assignments: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """(B, out) bound on |y - reference| for float32 arithmetic."""
    return RTOL * (1.0 + reference(np.abs(x), assignments, np.abs(codebook)))


def example(
    batch: int, shape: tuple[int, int], bits: int, density: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, assignments, codebook, bias): a random shared layer, entry 0 = 0.0 (pruned)."""
    rng = np.random.default_rng(seed)
    k = 2**bits
    codebook = np.concatenate([[0.0], rng.standard_normal(k - 1)]).astype(np.float32)
    a = rng.integers(1, k, shape) * (rng.random(shape) < density)
    x = rng.standard_normal((batch, shape[1])).astype(np.float32)
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    return x, a.astype(np.uint8 if bits <= 8 else np.uint16), codebook, bias


def validate(
    batch: int = 4,
    shape: tuple[int, int] = (300, 784),
    bits: int = 5,
    xp: object = np,
    seed: int = 0,
) -> float:
    """Max |error| / tolerance of the kernel on `xp`'s device against `reference` (<= 1)."""
    x, a, codebook, bias = example(batch, shape, bits, seed=seed)
    dev = [xp.asarray(v) for v in (x, a, codebook, bias)]  # type: ignore[attr-defined]
    got = to_host(codebook_linear(*dev))
    ratio = float(np.max(np.abs(got - reference(x, a, codebook, bias)) / tolerance(x, a, codebook)))
    if not ratio <= 1.0:
        raise AssertionError(f"codebook_linear off by {ratio:.3g} x its tolerance")
    return ratio


def benchmark(
    batch: int = 1,
    shape: tuple[int, int] = (300, 784),
    bits: int = 5,
    xp: object = np,
    repeat: int = 50,
) -> dict:
    """Seconds of this kernel and of the dense torch.addmm (CPU) on the same layer."""
    import torch

    x, a, codebook, bias = example(batch, shape, bits)
    dense = torch.from_numpy(codebook[a])
    xt, bt = torch.from_numpy(x), torch.from_numpy(bias)
    dev = [xp.asarray(v) for v in (x, a, codebook, bias)]  # type: ignore[attr-defined]
    return {
        "kernel_s": median_seconds(lambda: codebook_linear(*dev), repeat),
        "dense_torch_s": median_seconds(lambda: torch.addmm(bt, xt, dense.T), repeat),
    }
