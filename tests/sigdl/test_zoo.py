"""Tests for sigdl.core.zoo: published parameter counts, shapes, ONNX export, registry errors.

Run with `.venv/bin/pytest tests/sigdl/test_zoo.py -q`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from sigdl.core import zoo
from sigdl.core.errors import InputError

BIG = ["alexnet", "vgg-16", "mobilenet-v1", "mobilenet-v2", "squeezenet-1.0", "squeezenet-1.1"]
SMALL = ["lenet-300-100", "lenet-5"]
SMALL_SIZE = 64  # big models run here: fast, and not a multiple of AlexNet's/VGG's pool sizes


def _test_size(name: str) -> int:
    return zoo.get_spec(name).input_size if name in SMALL else SMALL_SIZE


@pytest.mark.parametrize(
    ("name", "size", "channels", "classes", "expected"),
    [
        ("lenet-300-100", 28, 1, 10, 266_610),
        ("lenet-5", 28, 1, 10, 431_080),
        ("alexnet", 224, 3, 1000, 61_100_840),
        ("vgg-16", 224, 3, 1000, 138_357_544),
        ("mobilenet-v1", 224, 3, 1000, 4_231_976),
        ("mobilenet-v2", 224, 3, 1000, 3_504_872),
        ("squeezenet-1.0", 224, 3, 1000, 1_248_424),
        ("squeezenet-1.1", 224, 3, 1000, 1_235_496),
    ],
)
def test_published_parameter_counts(
    name: str, size: int, channels: int, classes: int, expected: int
) -> None:
    with torch.device("meta"):  # shapes only: skips initializing VGG-16's 138M weights
        model = zoo.build_model(name, input_size=size, channels=channels, classes=classes)
    assert zoo.count_parameters(model) == expected
    spec = zoo.get_spec(name)  # the published sizes are the defaults
    assert (spec.input_size, spec.channels, spec.classes) == (size, channels, classes)


def test_lenet_first_layer_follows_input_size() -> None:
    mlp = zoo.build_model("lenet-300-100", input_size=32, channels=3)
    assert mlp.fc1.in_features == 32 * 32 * 3
    lenet5 = zoo.build_model("lenet-5", input_size=32, channels=3)
    assert lenet5.fc1.in_features == 50 * 5 * 5  # 32 → conv 28 → pool 14 → conv 10 → pool 5


def test_lenet_layer_names() -> None:
    names = {name for name, _ in zoo.build_model("lenet-5").named_children()}
    assert {"conv1", "conv2", "fc1", "fc2"} <= names
    names = {name for name, _ in zoo.build_model("lenet-300-100").named_children()}
    assert {"fc1", "fc2", "fc3"} <= names


@pytest.fixture(scope="module")
def built() -> Iterator[Callable[[str, int, int], nn.Module]]:
    """Models with 10 classes in eval mode, built once per (name, input_size, channels): VGG-16
    takes seconds to initialize. Forward passes and ONNX export leave them unchanged."""
    cache: dict[tuple[str, int, int], nn.Module] = {}

    def get(name: str, size: int, channels: int) -> nn.Module:
        if (name, size, channels) not in cache:
            model = zoo.build_model(name, input_size=size, channels=channels, classes=10)
            cache[name, size, channels] = model.eval()
        return cache[name, size, channels]

    yield get
    cache.clear()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", SMALL + BIG)
def test_forward_shape(built: Callable[..., nn.Module], name: str, channels: int) -> None:
    size = _test_size(name)
    with torch.no_grad():
        logits = built(name, size, channels)(torch.rand(2, channels, size, size))  # (N, classes)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", SMALL + BIG)
def test_min_input_size_is_the_smallest_that_runs(
    built: Callable[..., nn.Module], name: str
) -> None:
    low = zoo.get_spec(name).min_input_size
    # The big models do not depend on input_size; the LeNets are built for the size they get.
    at_min = built(name, low if name in SMALL else _test_size(name), 1)
    with torch.no_grad():
        assert at_min(torch.rand(2, 1, low, low)).shape == (2, 10)
        if low == 1:
            return
        with pytest.raises(RuntimeError), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LeNet-5's fc1 is empty below its minimum
            below = zoo.get_spec(name).build(low - 1, 1, 10) if name in SMALL else at_min
            below(torch.rand(2, 1, low - 1, low - 1))


@pytest.mark.parametrize("name", SMALL + BIG)
def test_onnx_export_matches_pytorch(built: Callable[..., nn.Module], name: str) -> None:
    size, channels = _test_size(name), zoo.get_spec(name).channels
    model = built(name, size, channels)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        torch.onnx.export(
            model, (torch.rand(2, channels, size, size),), buffer, dynamo=False,
            opset_version=17, input_names=["pixels"], output_names=["logits"],
            dynamic_axes={"pixels": {0: "N"}, "logits": {0: "N"}},
        )  # fmt: skip
    pixels = torch.rand(3, channels, size, size)  # (N, C, H, W), another batch size than traced
    with torch.no_grad():
        expected = model(pixels).numpy()  # (N, classes)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pixels": pixels.numpy()})
    assert got.shape == (3, 10)
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize(
    ("size_in", "size_out"),
    [((1, 1), 7), ((2, 2), 7), ((5, 3), 6), ((13, 13), (7, None)), ((14, 14), 7), ((6, 6), 6)],
)
def test_exportable_adaptive_pool_matches_torch(
    size_in: tuple[int, int], size_out: int | tuple[int | None, int | None]
) -> None:
    x = torch.randn(2, 4, *size_in)  # (N, C, H, W)
    expected = nn.AdaptiveAvgPool2d(size_out)(x)  # (N, C, out_h, out_w)
    pool = zoo.ExportableAdaptiveAvgPool2d(size_out)
    torch.testing.assert_close(pool(x), expected)
    traced = torch.jit.trace(pool, (x,), check_trace=False)  # the path ONNX export takes
    torch.testing.assert_close(traced(x), expected)


@pytest.mark.parametrize("name", ["lenet-5", "squeezenet-1.1", "mobilenet-v2"])
def test_deterministic_under_manual_seed(name: str) -> None:
    states = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        states.append(zoo.build_model(name, input_size=32, classes=10).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_registry_names_and_aliases() -> None:
    names = [spec.name for spec in zoo.list_models()]
    assert names == sorted(SMALL + BIG)
    for alias, name in [
        ("vgg16", "vgg-16"),
        ("mobilenet", "mobilenet-v1"),
        ("squeezenet", "squeezenet-1.0"),
        ("VGG-16", "vgg-16"),
    ]:
        assert zoo.get_spec(alias) is zoo.get_spec(name)


def test_unknown_name_lists_available_models() -> None:
    with pytest.raises(zoo.UnknownModelError) as caught:
        zoo.build_model("foo")
    message = str(caught.value)
    assert message.startswith("unknown model 'foo'; available: alexnet, lenet-300-100, lenet-5")
    assert isinstance(caught.value, KeyError)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("name", "kwargs", "fragment"),
    [
        ("vgg-16", {"input_size": 31}, "input_size for model 'vgg-16' must be an integer >= 32"),
        ("alexnet", {"input_size": 32}, "input_size for model 'alexnet' must be an integer >= 63"),
        ("lenet-5", {"input_size": 8}, "input_size for model 'lenet-5' must be an integer >= 16"),
        ("lenet-5", {"channels": 0}, "channels for model 'lenet-5' must be an integer >= 1"),
        ("mobilenet-v2", {"classes": 1}, "classes for model 'mobilenet-v2' must be an integer"),
        ("squeezenet-1.1", {"classes": 2.5}, "got 2.5"),
        ("lenet-300-100", {"input_size": True}, "got True"),
    ],
)
def test_bad_arguments_are_named(name: str, kwargs: dict, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        zoo.build_model(name, **kwargs)
