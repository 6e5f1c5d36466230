"""The `fft-conv` step: frequency-domain convolution equals F.conv2d (forward and gradients)
within float tolerance, the cost rule reads the shape, and a recipe that converts LeNet-5's
convolutions keeps its accuracy and its .sdc weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from services.compression.engine import compress, plan_recipe
from services.compression.prune import find_layers
from services.compression.recipe import Recipe
from services.compression.steps.fft_conv import (
    ConvShape,
    FFTConv2d,
    FFTConvConfig,
    fft_conv2d,
    fft_size,
)
from services.training.stage import run_training
from sigdl.core.checkpoint import load_checkpoint
from sigdl.core.datasets import load_dataset
from sigdl.core.errors import InputError
from sigdl.core.training import TrainConfig

# (batch, in, out, size, kernel, stride, padding): LeNet-5, AlexNet-like, VGG-like, odd sizes
SHAPES = [
    (2, 1, 20, 28, 5, 1, 0),
    (2, 20, 50, 12, 5, 1, 0),
    (1, 3, 8, 35, 11, 4, 2),
    (3, 4, 6, 9, 3, 1, 1),
    (1, 2, 3, 13, 7, 2, 3),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_fft_conv_equals_direct_forward_and_backward(shape):
    b, c, o, size, k, s, p = shape
    torch.manual_seed(0)
    x = torch.randn(b, c, size, size, requires_grad=True)
    w = torch.randn(o, c, k, k, requires_grad=True)
    bias = torch.randn(o, requires_grad=True)
    ref = F.conv2d(x, w, bias, s, p)
    got = fft_conv2d(x, w, bias, (s, s), (p, p))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (x, w, bias), grad)
    got_grads = torch.autograd.grad(got, (x, w, bias), grad)
    for g, r in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-3)


def test_fft_conv2d_module_shares_parameters_and_refreshes_its_spectrum():
    conv = nn.Conv2d(3, 5, 3, padding=1)
    fft = FFTConv2d.from_conv(conv).eval()
    assert fft.weight is conv.weight and list(fft.state_dict()) == list(conv.state_dict())
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(fft(x), conv(x), rtol=1e-4, atol=1e-5)
        conv.weight.mul_(2)  # a new weight version: the precomputed spectrum must follow
        torch.testing.assert_close(fft(x), conv(x), rtol=1e-4, atol=1e-5)


def test_fft_sizes_are_fast_and_cover():
    for n in range(1, 300):
        m = fft_size(n)
        assert m >= n and m - n < 20
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        assert m == 1


def test_cost_rule_reads_kernel_channels_and_stride():
    big = ConvShape(1, 256, 256, (64, 64), (15, 15))  # huge kernel, many channels: FFT pays
    small = ConvShape(1, 256, 256, (64, 64), (3, 3))
    assert big.fft_pays() and not small.fft_pays()
    strided = ConvShape(1, 256, 256, (64, 64), (15, 15), (4, 4))  # FFT computes every output
    assert strided.direct_flops() < big.direct_flops() / 10
    assert strided.fft_flops() == big.fft_flops()
    t = big.predicted_seconds()
    assert set(t) == {"direct", "fft"} and t["fft"] < t["direct"]


def test_config_checks_and_plan_refuses_named_ineligible_layers():
    with pytest.raises(InputError, match="mode"):
        FFTConvConfig(mode="sometimes")
    with pytest.raises(InputError, match="batch"):
        FFTConvConfig(batch=0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, dilation=2), nn.Flatten())
    layers = find_layers(net)
    plan = plan_recipe(Recipe("f", [{"type": "fft-conv"}]), layers)
    assert list(plan[0]) == ["0.weight"]  # the dilated one is skipped when not named
    with pytest.raises(InputError, match=r"layer '1' has groups=1, dilation=\(2, 2\)"):
        plan_recipe(Recipe("f", [{"type": "fft-conv", "layers": ["1"]}]), layers)


@pytest.fixture(scope="module")
def lenet5(tmp_path_factory):
    root = tmp_path_factory.mktemp("fft")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        mp.setenv("SIGDL_PROGRESS", "0")
        run_training(TrainConfig(model="lenet-5", dataset="digits", epochs=2), root / "ck")
    return root / "ck"


def test_fft_conv_recipe_keeps_accuracy_and_weights(lenet5):
    data = load_dataset("digits")
    model, meta = load_checkpoint(lenet5)
    recipe = Recipe("fft", [{"type": "fft-conv", "mode": "always"}])
    result = compress(model, recipe, data, meta)
    dense, fft = result.ladder[0]["accuracy"], result.ladder[-1]["accuracy"]
    assert abs(dense - fft) <= 1e-4  # within 0.01 point
    assert result.fields["fft_layers"] == ["conv1", "conv2"]
    assert isinstance(model.net.conv1, FFTConv2d)
    again, _ = load_checkpoint(lenet5)
    for key, value in again.state_dict().items():  # the .sdc stores the same weights
        assert torch.equal(result.tensors[key], value)
    # the measured rule on this machine: direct convolution wins on LeNet-5 at batch 1
    auto, _ = load_checkpoint(lenet5)
    chosen = compress(auto, Recipe("auto", [{"type": "fft-conv"}]), data, meta)
    assert chosen.fields["fft_layers"] == []
    assert set(chosen.ladder[-1]["fft"]) == {"conv1", "conv2"}
