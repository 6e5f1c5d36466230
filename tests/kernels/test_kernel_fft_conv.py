"""kernels.fft_conv against torch's direct conv2d."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import fft_conv
from kernels.dispatch import KernelInputError


@pytest.mark.parametrize("method", ["full", "overlap-add", "auto"])
@pytest.mark.parametrize(
    ("batch", "channels", "outputs", "size", "kernel", "padding"),
    [
        (1, 1, 1, 5, 5, 0),
        (2, 1, 20, 28, 5, 0),
        (3, 20, 50, 12, 5, 0),
        (1, 3, 4, 70, 3, 1),
        (2, 2, 3, 33, 7, 3),
        (1, 4, 2, 100, 11, 0),
    ],
)
def test_conv2d_matches_torch(method, batch, channels, outputs, size, kernel, padding):
    x, w, bias = fft_conv.example(batch, channels, outputs, size, kernel, seed=size)
    truth = torch.nn.functional.conv2d(
        torch.from_numpy(x).double(),
        torch.from_numpy(w).double(),
        torch.from_numpy(bias).double(),
        padding=padding,
    ).numpy()
    np.testing.assert_allclose(fft_conv.reference(x, w, bias, padding), truth, atol=1e-9)
    got = fft_conv.conv2d(x, w, bias, padding, method)
    assert got.dtype == np.float32 and got.shape == truth.shape
    assert np.all(np.abs(got - truth) <= fft_conv.tolerance(x, w))


def test_method_is_chosen_by_size():
    assert fft_conv.block_fft(5, 5) == (32, 32)
    assert fft_conv.choose_method(28, 28, 5, 5) == "full"
    assert fft_conv.choose_method(224, 224, 3, 3) == "overlap-add"


def test_bad_shapes_are_refused():
    with pytest.raises(KernelInputError, match="w \\(O, C, kh, kw\\)"):
        fft_conv.conv2d(np.zeros((1, 2, 8, 8)), np.zeros((1, 3, 3, 3)))
    with pytest.raises(KernelInputError, match="padding"):
        fft_conv.conv2d(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3)))
    with pytest.raises(KernelInputError, match="method"):
        fft_conv.conv2d(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), method="winograd")
