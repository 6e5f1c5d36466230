"""kernels.sparse_linear and kernels.codebook_linear against torch and scipy ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch

from kernels import codebook_linear, sparse_linear
from kernels.dispatch import KernelInputError
from sigdl.core import sparse as sdc_sparse

SHAPES = [(1, 1), (7, 13), (100, 300), (300, 784)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.02, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_sparse_linear_matches_scipy_and_torch(shape, density, batch):
    x, csr, bias = sparse_linear.example(batch, shape, density, bits=None, seed=batch)
    truth = scipy.sparse.csr_matrix(
        (csr.data.astype(np.float64), csr.indices, csr.indptr), shape=shape
    )
    expected = (truth @ x.astype(np.float64).T).T + bias
    dense = torch.nn.functional.linear(
        torch.from_numpy(x).double(),
        torch.from_numpy(csr.dense()).double(),
        torch.from_numpy(bias).double(),
    ).numpy()
    np.testing.assert_allclose(expected, dense, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        sparse_linear.reference(x, csr, bias), expected, rtol=1e-10, atol=1e-10
    )
    got = sparse_linear.sparse_linear(x, csr, bias)
    assert got.dtype == np.float32 and got.shape == (batch, shape[0])
    assert np.all(np.abs(got - expected) <= sparse_linear.tolerance(x, csr))


@pytest.mark.parametrize("bits", [1, 2, 5, 8, 10])
@pytest.mark.parametrize("index_bits", [3, 5, 8])
def test_sparse_linear_from_sdc_relative_indices_with_codebook(bits, index_bits):
    """The .sdc's own streams (gaps with fillers, codebook indices) give the same layer."""
    x, csr, bias = sparse_linear.example(4, (50, 120), 0.05, bits=bits, seed=bits)
    assignments = np.zeros(csr.shape, np.int64)
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    assignments[rows, csr.indices] = csr.data
    gaps, values = sdc_sparse.encode_sparse(assignments.reshape(-1), index_bits)
    rebuilt = sparse_linear.from_relative(gaps, values, csr.shape, csr.codebook)
    assert rebuilt.nnz == csr.nnz and rebuilt.data.dtype == (np.uint8 if bits <= 8 else np.uint16)
    weight = torch.from_numpy(csr.codebook[assignments])
    expected = torch.nn.functional.linear(torch.from_numpy(x), weight, torch.from_numpy(bias))
    got = sparse_linear.sparse_linear(x, rebuilt, bias)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)
    assert sparse_linear.validate(batch=2, shape=(50, 120), density=0.05, bits=bits) <= 1.0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [1, 2, 4, 5, 8, 12])
@pytest.mark.parametrize("batch", [1, 5])
def test_codebook_linear_matches_torch(shape, bits, batch):
    x, a, codebook, bias = codebook_linear.example(batch, shape, bits, density=0.7, seed=bits)
    expected = torch.nn.functional.linear(
        torch.from_numpy(x).double(),
        torch.from_numpy(codebook[a]).double(),
        torch.from_numpy(bias).double(),
    ).numpy()
    np.testing.assert_allclose(
        codebook_linear.reference(x, a, codebook, bias), expected, rtol=1e-10, atol=1e-10
    )
    got = codebook_linear.codebook_linear(x, a, codebook, bias)
    assert got.dtype == np.float32
    assert np.all(np.abs(got - expected) <= codebook_linear.tolerance(x, a, codebook))


def test_codebook_linear_spans_several_cpu_tiles():
    x, a, codebook, bias = codebook_linear.example(3, (700, 100), 5)  # 70k weights > one tile
    assert codebook_linear.validate(batch=3, shape=(700, 100), bits=5) <= 1.0
    expected = x @ codebook[a].T + bias
    np.testing.assert_allclose(
        codebook_linear.codebook_linear(x, a, codebook, bias), expected, rtol=1e-5, atol=1e-4
    )


def test_bad_inputs_are_refused_with_the_shape():
    x, csr, bias = sparse_linear.example(2, (4, 6), 0.5, bits=None)
    with pytest.raises(KernelInputError, match=r"x must be \(rows, 6\)"):
        sparse_linear.sparse_linear(x[:, :5], csr, bias)
    with pytest.raises(KernelInputError, match="uint8 or uint16"):
        codebook_linear.codebook_linear(x, np.zeros((4, 6), np.int64), np.zeros(2, np.float32))
    with pytest.raises(KernelInputError, match="gaps"):
        sparse_linear.from_relative(np.zeros(3), np.zeros(2), (2, 2))
