"""The model zoo: every architecture SigDL trains, compresses and deploys, registered by name.

    from sigdl.core.zoo import build_model, count_parameters
    model = build_model("mobilenet-v2", input_size=32, channels=1, classes=10)
    count_parameters(model)  # 2,236,106

``python -m sigdl.core.zoo`` prints the registry with parameter counts at each model's defaults.

The ImageNet-style models end in adaptive pooling, so their parameter counts do not depend on
the input size and they accept small inputs (MNIST-like data at 32x32); the LeNets flatten their
input, so their first fully connected layer grows with it. Weights are initialized as torchvision
does, from torch's global generator: the same `torch.manual_seed` gives the same model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sigdl.core.errors import InputError, short


class UnknownModelError(InputError, KeyError):
    """A model name that is not registered; caught as ValueError (InputError) or KeyError."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


# ---------------------------------------------------------------------------------------------
# Shared building blocks
# ---------------------------------------------------------------------------------------------


class ExportableAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """`nn.AdaptiveAvgPool2d` that also exports to ONNX when the output size does not divide
    the input size (a 2x2 VGG feature map pooled to 7x7 at 64x64 input).

    The TorchScript exporter maps adaptive pooling to AvgPool only when the sizes divide, so
    under tracing the other cases go through `adaptive_avg_pool2d_by_matmul`, which exports as
    MatMul. Eager mode (training) runs PyTorch's own kernel.
    """

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        if not torch.jit.is_tracing():
            return super().forward(x)  # (N, C, out_h, out_w)
        with warnings.catch_warnings():
            # The exported pooling is fixed to the traced H and W, as torch's own export of
            # adaptive pooling is; that is what the tracer would warn about.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            height, width = int(x.shape[-2]), int(x.shape[-1])
            out_h, out_w = _pair(self.output_size, height, width)
            if height % out_h == 0 and width % out_w == 0:
                return super().forward(x)  # (N, C, out_h, out_w)
            return adaptive_avg_pool2d_by_matmul(x, (out_h, out_w))  # (N, C, out_h, out_w)


def adaptive_avg_pool2d_by_matmul(x: Tensor, output_size: tuple[int, int]) -> Tensor:
    """Adaptive average pooling as `rows @ x @ cols.T` with constant averaging matrices."""
    rows = _pool_matrix(int(x.shape[-2]), output_size[0], x)  # (out_h, H)
    cols = _pool_matrix(int(x.shape[-1]), output_size[1], x)  # (out_w, W)
    return rows @ x @ cols.T  # (N, C, out_h, out_w)


def _pair(size: int | tuple[int | None, int | None], height: int, width: int) -> tuple[int, int]:
    """Adaptive pooling's output size as two ints (None keeps the input size)."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    return (height if out_h is None else out_h, width if out_w is None else out_w)


def _pool_matrix(size_in: int, size_out: int, like: Tensor) -> Tensor:
    """Averaging matrix with PyTorch's adaptive bins: row i covers floor(i*in/out) up to
    ceil((i+1)*in/out). Built from Python numbers so tracing records it as a constant."""
    rows = []
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -(-(i + 1) * size_in // size_out)
        rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(size_in)])
    return like.new_tensor(rows)  # (out, in)


def _conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """Conv (no bias: BatchNorm has one) → BatchNorm → activation, 'same' padding."""
    padding = (kernel_size - 1) // 2
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                     bias=False)  # fmt: skip
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), activation(inplace=True))


@torch.no_grad()
def _init_torchvision(model: nn.Module) -> None:
    """torchvision's VGG/MobileNet init: Kaiming-normal convs (fan-out), BN at identity,
    small normal Linear weights, zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
        if isinstance(module, nn.Conv2d | nn.BatchNorm2d | nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# LeNets
# ---------------------------------------------------------------------------------------------


class LeNet300100(nn.Module):
    """LeNet-300-100: a 784-300-100-10 multilayer perceptron with ReLU.

    LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document recognition",
    Proc. IEEE 1998; the compression baseline of Han, Mao, Dally, "Deep Compression", ICLR 2016.
    """

    def __init__(self, input_size: int = 28, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_size * input_size * channels, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, classes)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        x = torch.flatten(x, 1)  # (N, C*H*W)
        x = torch.relu(self.fc1(x))  # (N, 300)
        x = torch.relu(self.fc2(x))  # (N, 100)
        return self.fc3(x)  # (N, classes)


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe's MNIST example: conv 20@5x5 → maxpool → conv 50@5x5 → maxpool →
    fc 500 → ReLU → fc (no activations after the convs, as in Caffe).

    LeCun et al., Proc. IEEE 1998; this variant is the one compressed in Han, Mao, Dally,
    "Deep Compression", ICLR 2016 (431K parameters).
    """

    def __init__(self, input_size: int = 28, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        side = ((input_size - 4) // 2 - 4) // 2  # feature map side after conv2 + pool2
        self.conv1 = nn.Conv2d(channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, classes)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        x = self.pool(self.conv1(x))  # (N, 20, (H-4)/2, (W-4)/2)
        x = self.pool(self.conv2(x))  # (N, 50, h, w)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))  # (N, 500)
        return self.fc2(x)  # (N, classes)


# ---------------------------------------------------------------------------------------------
# AlexNet and VGG
# ---------------------------------------------------------------------------------------------


class AlexNet(nn.Module):
    """AlexNet, torchvision's single-tower variant (64-192-384-256-256 convs).

    Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep Convolutional Neural
    Networks", NeurIPS 2012; channel counts from Krizhevsky, "One weird trick for parallelizing
    convolutional neural networks", arXiv:1404.5997. Init is PyTorch's default, as torchvision.
    """

    def __init__(self, channels: int = 3, classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2),
        )  # fmt: skip
        self.avgpool = ExportableAdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, classes),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        x = self.avgpool(self.features(x))  # (N, 256, 6, 6)
        return self.classifier(torch.flatten(x, 1))  # (N, classes)


VGG16_LAYERS: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
]  # fmt: skip


class VGG(nn.Module):
    """VGG without batch norm; `layers` lists conv widths and "M" for 2x2 max pooling.

    Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
    ICLR 2015; VGG-16 is configuration D (VGG16_LAYERS). Layout and init follow torchvision.
    """

    def __init__(
        self, layers: list[int | str], channels: int = 3, classes: int = 1000, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.features = _vgg_features(layers, channels)
        self.avgpool = ExportableAdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, classes),
        )  # fmt: skip
        _init_torchvision(self)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        x = self.avgpool(self.features(x))  # (N, 512, 7, 7)
        return self.classifier(torch.flatten(x, 1))  # (N, classes)


def _vgg_features(layers: list[int | str], channels: int) -> nn.Sequential:
    modules: list[nn.Module] = []
    for width in layers:
        if width == "M":
            modules.append(nn.MaxPool2d(2, stride=2))
        else:
            assert isinstance(width, int)
            modules += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
    return nn.Sequential(*modules)


# ---------------------------------------------------------------------------------------------
# MobileNets
# ---------------------------------------------------------------------------------------------

# (output channels, stride) of each depthwise-separable block of MobileNet v1 (paper, Table 1).
MOBILENET_V1_BLOCKS: list[tuple[int, int]] = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]  # fmt: skip


class MobileNetV1(nn.Module):
    """MobileNet v1 at width 1.0: a 3x3 conv, 13 depthwise-separable blocks (3x3 depthwise,
    1x1 pointwise, each conv → BatchNorm → ReLU), global average pooling, a Linear classifier.

    Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
    Applications", arXiv:1704.04861, 2017. Init as torchvision's MobileNet v2.
    """

    def __init__(self, channels: int = 3, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_act(channels, 32, stride=2)]
        width = 32
        for out_channels, stride in MOBILENET_V1_BLOCKS:
            layers.append(_conv_bn_act(width, width, 3, stride, groups=width))  # depthwise
            layers.append(_conv_bn_act(width, out_channels, 1))  # pointwise
            width = out_channels
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, classes)
        _init_torchvision(self)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        x = self.avgpool(self.features(x))  # (N, 1024, 1, 1)
        return self.classifier(torch.flatten(x, 1))  # (N, classes)


class InvertedResidual(nn.Module):
    """MobileNet v2 block: 1x1 expand → 3x3 depthwise → 1x1 linear projection, with a residual
    connection when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_act(in_channels, hidden, 1, activation=nn.ReLU6))
        layers += [
            _conv_bn_act(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:  # (N, C_in, H, W)
        out = self.conv(x)  # (N, C_out, H/stride, W/stride)
        return x + out if self.use_residual else out


# (expansion t, output channels c, repeats n, first stride s) per stage (paper, Table 2).
MOBILENET_V2_STAGES: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]  # fmt: skip


class MobileNetV2(nn.Module):
    """MobileNet v2 at width 1.0, laid out and initialized as torchvision's.

    Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and Linear
    Bottlenecks", CVPR 2018.
    """

    def __init__(self, channels: int = 3, classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_act(channels, 32, stride=2, activation=nn.ReLU6)]
        width = 32
        for expand, out_channels, repeats, stride in MOBILENET_V2_STAGES:
            for i in range(repeats):  # only a stage's first block downsamples
                layers.append(InvertedResidual(width, out_channels, 1 if i else stride, expand))
                width = out_channels
        layers.append(_conv_bn_act(width, 1280, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, classes))
        _init_torchvision(self)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        x = self.avgpool(self.features(x))  # (N, 1280, 1, 1)
        return self.classifier(torch.flatten(x, 1))  # (N, classes)


# ---------------------------------------------------------------------------------------------
# SqueezeNets
# ---------------------------------------------------------------------------------------------


class Fire(nn.Module):
    """SqueezeNet's Fire module: a 1x1 squeeze conv, then 1x1 and 3x3 expand convs whose
    outputs are concatenated."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:  # (N, C_in, H, W)
        x = torch.relu(self.squeeze(x))  # (N, squeeze, H, W)
        left = torch.relu(self.expand1x1(x))  # (N, expand1x1, H, W)
        right = torch.relu(self.expand3x3(x))  # (N, expand3x3, H, W)
        return torch.cat([left, right], 1)  # (N, expand1x1 + expand3x3, H, W)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.0 or 1.1 (1.1: 3x3 stem, earlier pooling, 2.4x less compute, same accuracy),
    laid out and initialized as torchvision's.

    Iandola, Han, Moskewicz, Ashraf, Dally, Keutzer, "SqueezeNet: AlexNet-level accuracy with
    50x fewer parameters and <0.5MB model size", arXiv:1602.07360, 2016.
    """

    def __init__(
        self, version: str = "1.0", channels: int = 3, classes: int = 1000, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if version not in ("1.0", "1.1"):
            raise InputError(f"unknown SqueezeNet version {version!r}; expected '1.0' or '1.1'")
        self.features = _squeezenet_v10(channels) if version == "1.0" else _squeezenet_v11(channels)
        self.final_conv = nn.Conv2d(512, classes, 1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), self.final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
        )
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if module is self.final_conv:
                    nn.init.normal_(module.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        x = self.classifier(self.features(x))  # (N, classes, 1, 1)
        return torch.flatten(x, 1)  # (N, classes)


def _squeezenet_v10(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, 96, 7, stride=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
        Fire(384, 64, 256, 256),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        Fire(512, 64, 256, 256),
    )  # fmt: skip


def _squeezenet_v11(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, 64, 3, stride=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        Fire(128, 32, 128, 128), Fire(256, 32, 128, 128),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        Fire(256, 48, 192, 192), Fire(384, 48, 192, 192),
        Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture: its defaults, its limits and how to build it."""

    name: str  # canonical registry name, e.g. "mobilenet-v2"
    description: str  # one line for listings
    input_size: int  # default square input side in pixels
    channels: int  # default input channels
    classes: int  # default number of output classes
    min_input_size: int  # smallest input side the architecture accepts (checked by the tests)
    build: Callable[[int, int, int], nn.Module]  # (input_size, channels, classes) -> model
    aliases: tuple[str, ...] = field(default=())  # other names get_spec accepts


_IMAGENET = {"input_size": 224, "channels": 3, "classes": 1000}
_MNIST = {"input_size": 28, "channels": 1, "classes": 10}

_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("lenet-300-100", "LeNet-300-100 MLP (LeCun 1998; Han 2016)", **_MNIST,
              min_input_size=1, build=lambda size, c, k: LeNet300100(size, c, k)),
    ModelSpec("lenet-5", "LeNet-5, Caffe variant (LeCun 1998; Han 2016)", **_MNIST,
              min_input_size=16, build=lambda size, c, k: LeNet5(size, c, k)),
    ModelSpec("alexnet", "AlexNet, single tower (Krizhevsky 2012, 2014)", **_IMAGENET,
              min_input_size=63, build=lambda size, c, k: AlexNet(c, k)),
    ModelSpec("vgg-16", "VGG-16, configuration D (Simonyan & Zisserman 2015)", **_IMAGENET,
              min_input_size=32, build=lambda size, c, k: VGG(VGG16_LAYERS, c, k),
              aliases=("vgg16",)),
    ModelSpec("mobilenet-v1", "MobileNet v1, width 1.0 (Howard 2017)", **_IMAGENET,
              min_input_size=1, build=lambda size, c, k: MobileNetV1(c, k),
              aliases=("mobilenet",)),
    ModelSpec("mobilenet-v2", "MobileNet v2, width 1.0 (Sandler 2018)", **_IMAGENET,
              min_input_size=1, build=lambda size, c, k: MobileNetV2(c, k)),
    ModelSpec("squeezenet-1.0", "SqueezeNet 1.0 (Iandola 2016)", **_IMAGENET,
              min_input_size=21, build=lambda size, c, k: SqueezeNet("1.0", c, k),
              aliases=("squeezenet",)),
    ModelSpec("squeezenet-1.1", "SqueezeNet 1.1 (Iandola 2016)", **_IMAGENET,
              min_input_size=17, build=lambda size, c, k: SqueezeNet("1.1", c, k)),
)  # fmt: skip

_BY_NAME: dict[str, ModelSpec] = {
    name: spec for spec in _SPECS for name in (spec.name, *spec.aliases)
}


def list_models() -> list[ModelSpec]:
    """Every registered architecture, sorted by name (aliases not repeated)."""
    return sorted(_SPECS, key=lambda spec: spec.name)


def get_spec(name: str) -> ModelSpec:
    """The spec registered under `name` or one of its aliases (case-insensitive)."""
    spec = _BY_NAME.get(name.strip().lower()) if isinstance(name, str) else None
    if spec is None:
        available = ", ".join(spec.name for spec in list_models())
        raise UnknownModelError(f"unknown model {short(name)}; available: {available}")
    return spec


def build_model(
    name: str,
    input_size: int | None = None,
    channels: int | None = None,
    classes: int | None = None,
) -> nn.Module:
    """Build a freshly initialized `name`; arguments left as None take the spec's defaults."""
    spec = get_spec(name)
    input_size = spec.input_size if input_size is None else input_size
    channels = spec.channels if channels is None else channels
    classes = spec.classes if classes is None else classes
    _check_int(spec, "input_size", input_size, spec.min_input_size)
    _check_int(spec, "channels", channels, 1)
    _check_int(spec, "classes", classes, 2)
    return spec.build(input_size, channels, classes)


def _check_int(spec: ModelSpec, argument: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(
            f"{argument} for model {spec.name!r} must be an integer >= {minimum}, got {value!r}"
        )


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def _print_registry() -> None:
    print(f"{'name':<16}{'aliases':<12}{'default input':<16}{'min':>5}{'parameters':>14}  about")
    for spec in list_models():
        shape = f"{spec.input_size}x{spec.input_size}x{spec.channels}"
        with torch.device("meta"):  # shapes only, no 138M-weight VGG init
            params = count_parameters(build_model(spec.name))
        aliases = ",".join(spec.aliases) or "-"
        print(f"{spec.name:<16}{aliases:<12}{shape:<16}{spec.min_input_size:>5}"
              f"{params:>14,}  {spec.description}")  # fmt: skip


if __name__ == "__main__":
    _print_registry()
