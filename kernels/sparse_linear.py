"""Sparse linear layer, y = x @ W.T + b, with W stored as CSR (rows are output features).

Deep Compression keeps 8-20% of a fully connected layer's weights; below some density a
product over the nonzeros alone beats the dense GEMM. The CSR is built from the `.sdc`'s own
relative-index streams (`from_relative`), and its data may stay codebook indices: the weight
is then `codebook[data]`, looked up inside the kernel, so a shared layer is never expanded.

    csr = from_relative(gaps, values, shape=(300, 784), codebook=codebook)
    y = sparse_linear(x, csr, bias)   # x NumPy: CPU path; x CuPy: sparse_linear.cu
    validate(batch=4)                 # the kernel against `reference`, on x's device
    benchmark(batch=1, density=0.1)   # seconds of this path and of the dense torch.matmul

Tolerance: float32 sums in another order than a dense GEMM: |y - y_ref| <= 1e-5 * (1 +
sum |x| |w| over the row), the bound `validate` checks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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

RTOL = 1e-5  # relative to sum |x| |w| of the row, see the module docstring
_WARPS = 8  # warps (output rows) per block on the GPU
_TILE = 8  # batch rows per block on the GPU: TILE in sparse_linear.cu
_CPU_CHUNK = 1 << 22  # nonzeros x batch columns per CPU step: bounds the (nnz, B) gather


@dataclass(frozen=True)
class Csr:
    """A (rows, cols) matrix by its nonzeros, row after row."""

    indptr: Array  # (rows + 1,) int32: row r holds entries indptr[r]:indptr[r + 1]
    indices: Array  # (nnz,) int32 column of each entry
    data: Array  # (nnz,) float32 values, or uint8/uint16 codebook indices when codebook is set
    shape: tuple[int, int]
    codebook: Array | None = None  # (K,) float32; when set, the weight is codebook[data]

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    def weights(self) -> Array:
        """(nnz,) float32 value of each entry."""
        return self.data if self.codebook is None else self.codebook[self.data]

    def to(self, xp: object) -> Csr:
        """The same matrix with its arrays on numpy's or cupy's device."""
        move = xp.asarray  # type: ignore[attr-defined]
        cb = None if self.codebook is None else move(self.codebook)
        return replace(
            self,
            indptr=move(self.indptr),
            indices=move(self.indices),
            data=move(self.data),
            codebook=cb,
        )

    def dense(self) -> np.ndarray:
        """(rows, cols) float32 NumPy matrix (tests and the dense baseline only)."""
        host = self.to(np)
        out = np.zeros(self.shape, np.float32)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(host.indptr))
        out[rows, host.indices] = host.weights()
        return out


def from_positions(
    positions: np.ndarray,
    data: np.ndarray,
    shape: tuple[int, int],
    codebook: np.ndarray | None = None,
) -> Csr:
    """CSR of entries at increasing row-major `positions` holding `data`."""
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size and (np.any(np.diff(positions) <= 0) or positions[-1] >= shape[0] * shape[1]):
        raise KernelInputError(f"positions must increase and stay below {shape[0] * shape[1]}")
    rows, cols = np.divmod(positions, shape[1])
    indptr = np.searchsorted(rows, np.arange(shape[0] + 1)).astype(np.int32)
    if codebook is not None:
        codebook = np.asarray(codebook, np.float32).reshape(-1)
        data = np.asarray(data).astype(np.uint8 if codebook.size <= 256 else np.uint16)
    else:
        data = np.asarray(data, np.float32)
    return Csr(indptr, cols.astype(np.int32), data, (int(shape[0]), int(shape[1])), codebook)


def from_relative(
    gaps: np.ndarray, values: np.ndarray, shape: tuple[int, int], codebook: np.ndarray | None = None
) -> Csr:
    """CSR of the `.sdc` relative-index streams (sigdl/core/sparse.py's format).

    A stored gap g skips g positions before its entry; filler entries carry value 0 and are
    dropped here, as every real entry of a pruned layer is nonzero.
    """
    gaps = np.asarray(gaps, np.int64).reshape(-1)
    values = np.asarray(values).reshape(-1)
    if gaps.shape != values.shape:
        raise KernelInputError(f"{gaps.size} gaps but {values.size} values")
    positions = np.cumsum(gaps + 1) - 1
    keep = values != 0
    return from_positions(positions[keep], values[keep], shape, codebook)


def from_dense(weight: np.ndarray, codebook: np.ndarray | None = None) -> Csr:
    """CSR of the nonzeros of a (rows, cols) matrix: of values, or of codebook indices."""
    weight = np.asarray(weight)
    check_2d("weight", weight)
    positions = np.flatnonzero(weight)
    return from_positions(positions, weight.reshape(-1)[positions], weight.shape, codebook)


def reference(x: np.ndarray, csr: Csr, bias: np.ndarray | None = None) -> np.ndarray:
    """(B, rows) float64: each output a dot product over its row's nonzeros, in float64."""
    host = csr.to(np)
    x = np.asarray(x, np.float64)
    w = host.weights().astype(np.float64)
    y = np.zeros((x.shape[0], csr.shape[0]))
    for r in range(csr.shape[0]):
        lo, hi = host.indptr[r], host.indptr[r + 1]
        y[:, r] = x[:, host.indices[lo:hi]] @ w[lo:hi]
    return y + (0.0 if bias is None else np.asarray(bias, np.float64))


def sparse_linear(x: Array, csr: Csr, bias: Array | None = None) -> Array:
    """(B, rows) float32 x @ W.T + bias, on the device x lives on."""
    check_2d("x", x, csr.shape[1])
    if on_gpu(x, csr.indptr, csr.indices, csr.data, csr.codebook, bias):
        return _gpu(x, csr, bias)
    return _cpu(np.asarray(x, np.float32), csr, bias)


def _cpu(x: np.ndarray, csr: Csr, bias: np.ndarray | None) -> np.ndarray:
    """Gather the columns each nonzero needs, scale them, and sum row by row (reduceat)."""
    rows, batch = csr.shape[0], x.shape[0]
    y = np.zeros((rows, batch), np.float32)  # transposed: rows of y are contiguous sums
    counts = np.diff(csr.indptr)
    filled = np.flatnonzero(counts)
    if filled.size:
        xt = np.ascontiguousarray(x.T)  # (cols, B)
        w = csr.weights()[:, None]  # (nnz, 1)
        starts = csr.indptr[filled]
        step = max(1, _CPU_CHUNK // max(csr.nnz, 1))
        for b in range(0, batch, step):
            products = xt[csr.indices, b : b + step] * w  # (nnz, chunk)
            y[filled, b : b + step] = np.add.reduceat(products, starts, axis=0)
    y = y.T
    return y + bias if bias is not None else np.ascontiguousarray(y)


def _gpu(x: Array, csr: Csr, bias: Array | None) -> Array:
    import cupy

    x = cupy.ascontiguousarray(x, dtype=cupy.float32)
    rows, cols = csr.shape
    y = cupy.empty((x.shape[0], rows), cupy.float32)
    kind = {"float32": "f32", "uint8": "u8", "uint16": "u16"}.get(csr.data.dtype.name)
    if kind is None or (kind == "f32") != (csr.codebook is None):
        raise KernelInputError(
            f"CSR data {csr.data.dtype}: float32 values or uint8/uint16 indices with a codebook"
        )
    fn = cuda_function("sparse_linear.cu", f"csr_linear_{kind}")
    # float data need no codebook, and a missing bias adds zeros: pointers must still point
    null = cupy.zeros(1, cupy.float32)
    bias = cupy.zeros(rows, cupy.float32) if bias is None else bias.astype(cupy.float32)
    fn(
        (grid(rows, _WARPS), grid(x.shape[0], _TILE)),
        (32 * _WARPS,),
        (
            x,
            csr.indptr.astype(cupy.int32),
            csr.indices.astype(cupy.int32),
            csr.data,
            null if csr.codebook is None else csr.codebook.astype(cupy.float32),
            bias,
            y,
            np.int32(rows),
            np.int32(cols),
            np.int32(x.shape[0]),
        ),
    )
    return y


def tolerance(x: Array, csr: Csr) -> np.ndarray:
    """(B, rows) bound on |y - reference| for float32 arithmetic (see module docstring)."""
    host = csr.to(np)
    magnitude = from_dense(np.abs(host.dense())).to(np)
    return RTOL * (1.0 + reference(np.abs(to_host(x)), magnitude))


def validate(
    batch: int = 4,
    shape: tuple[int, int] = (300, 784),
    density: float = 0.1,
    bits: int = 5,
    xp: object = np,
    seed: int = 0,
) -> float:
    """Max |error| / tolerance of the kernel on `xp`'s device against `reference` (<= 1)."""
    x, csr, bias = example(batch, shape, density, bits, seed)
    got = to_host(sparse_linear(xp.asarray(x), csr.to(xp), xp.asarray(bias)))  # type: ignore[attr-defined]
    ratio = float(np.max(np.abs(got - reference(x, csr, bias)) / tolerance(x, csr)))
    if not ratio <= 1.0:
        raise AssertionError(f"sparse_linear off by {ratio:.3g} x its tolerance")
    return ratio


def example(
    batch: int, shape: tuple[int, int], density: float, bits: int | None, seed: int = 0
) -> tuple[np.ndarray, Csr, np.ndarray]:
    """(x, CSR, bias): a random layer with `density` nonzeros, codebook-shared at `bits`."""
    rng = np.random.default_rng(seed)
    keep = rng.random(shape) < density
    x = rng.standard_normal((batch, shape[1])).astype(np.float32)
    bias = rng.standard_normal(shape[0]).astype(np.float32)
    if bits is None:
        return x, from_dense(np.where(keep, rng.standard_normal(shape), 0).astype(np.float32)), bias
    codebook = np.concatenate([[0.0], rng.standard_normal(2**bits - 1)]).astype(np.float32)
    assignments = np.where(keep, rng.integers(1, 2**bits, shape), 0)
    return x, from_dense(assignments, codebook), bias


def benchmark(
    batch: int = 1,
    shape: tuple[int, int] = (300, 784),
    density: float = 0.1,
    bits: int | None = 5,
    xp: object = np,
    repeat: int = 50,
) -> dict:
    """Seconds of this kernel and of the dense torch.matmul (CPU) on the same layer."""
    import torch

    x, csr, bias = example(batch, shape, density, bits)
    dense = torch.from_numpy(csr.dense())
    xt, bt = torch.from_numpy(x), torch.from_numpy(bias)
    dev_x, dev_csr, dev_b = xp.asarray(x), csr.to(xp), xp.asarray(bias)  # type: ignore[attr-defined]
    return {
        "kernel_s": median_seconds(lambda: sparse_linear(dev_x, dev_csr, dev_b), repeat),
        "dense_torch_s": median_seconds(lambda: torch.addmm(bt, xt, dense.T), repeat),
    }
