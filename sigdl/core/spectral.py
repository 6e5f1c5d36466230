"""The orthonormal 2-D DCT-II of convolution kernels: how `.sdc` stores frequency-pruned weights.

Each (kh, kw) kernel (the last two axes of a conv weight (O, C, kh, kw)) maps to kh x kw real
coefficients X = D_h W D_w^T, where D_n is the orthonormal DCT-II matrix
D[k, i] = s_k cos(pi (2i + 1) k / 2n), s_0 = sqrt(1/n), s_k = sqrt(2/n) (scipy's
`dctn(..., norm="ortho")`). The transform is a bijection and orthogonal (Parseval), so zeroing
the smallest |X| is the smallest change to the kernel in L2 for a given number of coefficients.

    coefficients = dct2(weight)                # float64, the weight's shape
    weight32 = idct2(coefficients.astype("f4"))  # float32, what the .sdc decoder returns

`idct2` is the one inverse both the compression step (after every optimizer step) and the
`.sdc` reader run, so a decoded weight equals the trained one bit for bit on the same machine:
it sums kh*kw outer-product bases with elementwise float64 operations in a fixed order (no BLAS,
whose summation order may depend on alignment or threads).
"""

from __future__ import annotations

import functools

import numpy as np

from sigdl.core.errors import InputError

MAX_KERNEL = 64  # the longest kernel side the transform accepts (AlexNet's is 11)


@functools.cache
def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix (n, n) float64: row k is the k-th cosine basis vector."""
    if not isinstance(n, int) or not 1 <= n <= MAX_KERNEL:
        raise InputError(f"kernel side {n!r}: expected an integer in 1..{MAX_KERNEL}")
    k = np.arange(n, dtype=np.float64)[:, None]  # (n, 1) frequency
    i = np.arange(n, dtype=np.float64)[None, :]  # (1, n) position
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)  # (n, n)
    d[0] /= np.sqrt(2.0)
    d.setflags(write=False)
    return d


@functools.cache
def _bases(kh: int, kw: int) -> np.ndarray:
    """(kh, kw, kh, kw): bases[k, l] is the spatial kernel of coefficient (k, l) alone."""
    dh, dw = dct_matrix(kh), dct_matrix(kw)
    bases = np.einsum("ki,lj->klij", dh, dw)
    bases.setflags(write=False)
    return bases


def _kernel_axes(array: np.ndarray) -> tuple[int, int]:
    if array.ndim < 2:
        raise InputError(f"shape {list(array.shape)}: expected (..., kh, kw) kernels")
    kh, kw = array.shape[-2:]
    dct_matrix(int(kh)), dct_matrix(int(kw))  # checks the sides
    return int(kh), int(kw)


def dct2(kernels: np.ndarray) -> np.ndarray:
    """The orthonormal DCT-II of every (kh, kw) kernel over the last two axes, float64."""
    x = np.asarray(kernels, dtype=np.float64)
    kh, kw = _kernel_axes(x)
    return dct_matrix(kh) @ x @ dct_matrix(kw).T  # (..., kh, kw)


def idct2(coefficients: np.ndarray) -> np.ndarray:
    """The kernels whose `dct2` is `coefficients`, as float32: the sum of each nonzero
    coefficient times its basis kernel, accumulated in float64 in a fixed order."""
    x = np.asarray(coefficients, dtype=np.float64)
    kh, kw = _kernel_axes(x)
    bases = _bases(kh, kw)
    out = np.zeros(x.shape, dtype=np.float64)
    for k in range(kh):
        for l in range(kw):  # noqa: E741 (the DCT's own index names)
            column = x[..., k, l]  # (...,)
            if column.any():  # a frequency pruned everywhere adds exact zeros: skip it
                out += column[..., None, None] * bases[k, l]
    return out.astype(np.float32)
