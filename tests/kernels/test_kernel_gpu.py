"""Every kernel on a GPU against its reference (CuPy arrays in, the .cu kernels run).

Marked gpu: skipped where CuPy is missing or sees no device (this is never CPU-only code)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import codebook_linear, dispatch, fft_conv, huffman_decode, int8_gemm, sparse_linear

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cupy():
    if not dispatch.cuda_available():
        pytest.skip("CuPy with a CUDA device is not available")
    import cupy

    return cupy


@pytest.mark.parametrize("batch", [1, 3, 8, 33])
@pytest.mark.parametrize("bits", [None, 5, 10])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5])
def test_sparse_linear_on_gpu(cupy, batch, bits, density):
    assert sparse_linear.validate(batch, (300, 784), density, bits, xp=cupy) <= 1.0


@pytest.mark.parametrize("batch", [1, 17])
@pytest.mark.parametrize("bits", [2, 5, 8, 12])
@pytest.mark.parametrize("shape", [(7, 13), (300, 784)])
def test_codebook_linear_on_gpu(cupy, batch, bits, shape):
    assert codebook_linear.validate(batch, shape, bits, xp=cupy) <= 1.0


@pytest.mark.parametrize("mode", ["float", "fixed"])
@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("shape", [(10, 17), (300, 784)])
def test_int8_gemm_on_gpu_is_bit_exact(cupy, mode, x_dtype, shape):
    assert int8_gemm.validate(5, shape, x_dtype, mode, xp=cupy) == 0


@pytest.mark.parametrize("method", ["full", "overlap-add"])
@pytest.mark.parametrize(("size", "kernel", "padding"), [(28, 5, 0), (70, 3, 1)])
def test_fft_conv_on_gpu(cupy, method, size, kernel, padding):
    assert fft_conv.validate(size, kernel, padding, method, xp=cupy) <= 1.0


@pytest.mark.parametrize(("count", "alphabet"), [(1, 2), (5000, 32), (100_000, 256)])
def test_huffman_decode_on_gpu(cupy, count, alphabet):
    assert huffman_decode.validate(count, alphabet, xp=cupy) == 0


def test_results_stay_on_the_device(cupy):
    x, csr, bias = sparse_linear.example(2, (20, 30), 0.3, 5)
    y = sparse_linear.sparse_linear(cupy.asarray(x), csr.to(cupy), cupy.asarray(bias))
    assert dispatch.is_cupy(y)
    np.testing.assert_allclose(y.get(), sparse_linear.sparse_linear(x, csr, bias), atol=1e-4)
