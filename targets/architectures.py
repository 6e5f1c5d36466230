"""Architectures outside the zoo whose published board latencies calibrate the target profiles.

The fit sets in `targets/measurements/<target>.yaml` name models that SigDL does not train
(ResNets, Inceptions, ShuffleNets, MnasNet, MobileNet v3, MobileNet-SSD, MobileNet v1 at
other widths). The latency model needs only their graphs: these are compact PyTorch
definitions of them, our own code, exported to ONNX at the measurement's input shape.
Weights are random (a graph's cost does not depend on them); BatchNorm after a conv folds
into it on export, as every inference runtime does. Parameter counts are checked against
the published ones in tests/targets/test_architectures.py (sources cited there).

    from targets.architectures import build, names
    model = build("resnet-v1-50")            # an nn.Module taking (1, 3, H, W) pixels

Built: every name in `ARCHITECTURES`. Not built (the fit skips their figures and says why in
`NOT_BUILT`): detection models whose published figure includes post-processing outside the
network or whose exact layers we could not find.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def conv(
    cin: int, cout: int, k: int | tuple[int, int] = 3, s: int = 1, g: int = 1,
    act: type[nn.Module] | None = nn.ReLU, bn: bool = True,
) -> nn.Sequential:  # fmt: skip
    """Conv ('same' padding) -> BatchNorm (or a bias) -> activation."""
    kh, kw = (k, k) if isinstance(k, int) else k
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, (kh, kw), s, ((kh - 1) // 2, (kw - 1) // 2), groups=g, bias=not bn)
    ]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """Global average pooling, then a fully connected layer."""

    def __init__(self, features: nn.Module, width: int, classes: int) -> None:
        super().__init__()
        self.features = features
        self.fc = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        x = self.features(x)  # (N, width, h, w)
        return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))  # (N, classes)


# ---------------------------------------------------------------------------------------------
# ResNets (He 2016; v2: pre-activation, He 2016b)
# ---------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 with a projection shortcut where the shape changes; `pre`:
    the v2 unit (BN-ReLU before each conv, no activation after the sum)."""

    def __init__(self, cin: int, mid: int, stride: int, pre: bool = False) -> None:
        super().__init__()
        cout = mid * 4
        self.pre = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU()) if pre else nn.Identity()
        act = None if pre else nn.ReLU
        self.body = nn.Sequential(
            conv(cin, mid, 1), conv(mid, mid, 3, stride),
            conv(mid, cout, 1, act=None, bn=not pre),
        )  # fmt: skip
        self.short = None
        if stride != 1 or cin != cout:
            self.short = conv(cin, cout, 1, stride, act=None, bn=not pre)
        self.act = act() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        y = self.pre(x)
        short = x if self.short is None else self.short(y)
        return self.act(self.body(y) + short)


class Basic(nn.Module):
    """Two 3x3 convs and a shortcut (ResNet-18/34)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(cin, cout, 3, stride), conv(cout, cout, 3, act=None))
        self.short = None if stride == 1 and cin == cout else conv(cin, cout, 1, stride, act=None)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        return self.act(self.body(x) + (x if self.short is None else self.short(x)))


def resnet(depth: int, version: int = 1, classes: int = 1000) -> nn.Module:
    """ResNet-18/50/101/152 v1 (torchvision's layout: stride on the 3x3) or v2 (pre-act)."""
    blocks = {18: [2, 2, 2, 2], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]
    layers: list[nn.Module] = [conv(3, 64, 7, 2, bn=version == 1, act=nn.ReLU if version == 1
                                    else None), nn.MaxPool2d(3, 2, 1)]  # fmt: skip
    cin = 64
    for stage, count in enumerate(blocks):
        mid = 64 * 2**stage
        for i in range(count):
            stride = 2 if i == 0 and stage > 0 else 1
            if depth == 18:
                layers.append(Basic(cin, mid, stride))
                cin = mid
            else:
                layers.append(Bottleneck(cin, mid, stride, pre=version == 2))
                cin = mid * 4
    if version == 2:  # the last unit's output is normalized once more
        layers += [nn.BatchNorm2d(cin), nn.ReLU()]
    return Classifier(nn.Sequential(*layers), cin, classes)


# ---------------------------------------------------------------------------------------------
# Inception v1 (GoogLeNet, Szegedy 2015) and v3 (Szegedy 2016)
# ---------------------------------------------------------------------------------------------


class Branches(nn.Module):
    """Parallel branches concatenated along channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        return torch.cat([b(x) for b in self.branches], 1)


def inception_v1_block(cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, pool: int,
                       k5: int, bn: bool) -> Branches:  # fmt: skip
    return Branches(
        conv(cin, c1, 1, bn=bn),
        nn.Sequential(conv(cin, r3, 1, bn=bn), conv(r3, c3, 3, bn=bn)),
        nn.Sequential(conv(cin, r5, 1, bn=bn), conv(r5, c5, k5, bn=bn)),
        nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(cin, pool, 1, bn=bn)),
    )


GOOGLENET_BLOCKS = [  # (c1, r3, c3, r5, c5, pool) per inception block; "M": a 3x3/2 max pool
    (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M",
    (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), "M",
    (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128),
]  # fmt: skip


def inception_v1(caffe: bool = True, classes: int = 1000) -> nn.Module:
    """GoogLeNet without its auxiliary heads. `caffe`: BVLC's (conv biases, a 5x5 branch; its
    LRN layers left out); else TF-slim's inception_v1 (BatchNorm, 3x3 in that branch)."""
    bn, k5 = not caffe, 5 if caffe else 3
    layers: list[nn.Module] = [
        conv(3, 64, 7, 2, bn=bn), nn.MaxPool2d(3, 2, 1), conv(64, 64, 1, bn=bn),
        conv(64, 192, 3, bn=bn), nn.MaxPool2d(3, 2, 1),
    ]  # fmt: skip
    cin = 192
    for block in GOOGLENET_BLOCKS:
        if block == "M":
            layers.append(nn.MaxPool2d(3, 2, 1))
            continue
        c1, r3, c3, r5, c5, pool = block
        layers.append(inception_v1_block(cin, c1, r3, c3, r5, c5, pool, k5, bn))
        cin = c1 + c3 + c5 + pool
    return Classifier(nn.Sequential(*layers), cin, classes)


def _v3_a(cin: int, pool: int) -> Branches:
    return Branches(
        conv(cin, 64, 1),
        nn.Sequential(conv(cin, 48, 1), conv(48, 64, 5)),
        nn.Sequential(conv(cin, 64, 1), conv(64, 96, 3), conv(96, 96, 3)),
        nn.Sequential(nn.AvgPool2d(3, 1, 1), conv(cin, pool, 1)),
    )


def _v3_c(cin: int, mid: int) -> Branches:  # 7x7 factorized into 1x7 and 7x1
    return Branches(
        conv(cin, 192, 1),
        nn.Sequential(conv(cin, mid, 1), conv(mid, mid, (1, 7)), conv(mid, 192, (7, 1))),
        nn.Sequential(conv(cin, mid, 1), conv(mid, mid, (7, 1)), conv(mid, mid, (1, 7)),
                      conv(mid, mid, (7, 1)), conv(mid, 192, (1, 7))),
        nn.Sequential(nn.AvgPool2d(3, 1, 1), conv(cin, 192, 1)),
    )  # fmt: skip


class _V3E(nn.Module):
    """Inception v3's widest block: 1x3 and 3x1 branches side by side."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = conv(cin, 320, 1)
        self.b3, self.b3a, self.b3b = (
            conv(cin, 384, 1),
            conv(384, 384, (1, 3)),
            conv(384, 384, (3, 1)),
        )
        self.bd = nn.Sequential(conv(cin, 448, 1), conv(448, 384, 3))
        self.bda, self.bdb = conv(384, 384, (1, 3)), conv(384, 384, (3, 1))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), conv(cin, 192, 1))

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        b3, bd = self.b3(x), self.bd(x)
        parts = [self.b1(x), self.b3a(b3), self.b3b(b3), self.bda(bd), self.bdb(bd), self.bp(x)]
        return torch.cat(parts, 1)  # (N, 2048, H, W)


def inception_v3(classes: int = 1000) -> nn.Module:
    """Inception v3 (torchvision's Inception3 layout, without the auxiliary head)."""
    stem = [conv(3, 32, 3, 2), conv(32, 32, 3), conv(32, 64, 3), nn.MaxPool2d(3, 2),
            conv(64, 80, 1), conv(80, 192, 3), nn.MaxPool2d(3, 2)]  # fmt: skip
    # torchvision pads none of the stem's 3x3 convs: 299 -> 35; rebuild them unpadded
    for i in (0, 1, 5):
        stem[i][0].padding = (0, 0)
    reduce_a = Branches(
        conv(288, 384, 3, 2),
        nn.Sequential(conv(288, 64, 1), conv(64, 96, 3), conv(96, 96, 3, 2)),
        nn.MaxPool2d(3, 2),
    )
    reduce_b = Branches(
        nn.Sequential(conv(768, 192, 1), conv(192, 320, 3, 2)),
        nn.Sequential(conv(768, 192, 1), conv(192, 192, (1, 7)), conv(192, 192, (7, 1)),
                      conv(192, 192, 3, 2)),
        nn.MaxPool2d(3, 2),
    )  # fmt: skip
    for branch in (reduce_a.branches[0], reduce_a.branches[1][2], reduce_b.branches[0][1],
                   reduce_b.branches[1][3]):  # fmt: skip
        branch[0].padding = (0, 0)
    layers = [*stem, _v3_a(192, 32), _v3_a(256, 64), _v3_a(288, 64), reduce_a,
              _v3_c(768, 128), _v3_c(768, 160), _v3_c(768, 160), _v3_c(768, 192), reduce_b,
              _V3E(1280), _V3E(2048)]  # fmt: skip
    return Classifier(nn.Sequential(*layers), 2048, classes)


# ---------------------------------------------------------------------------------------------
# Mobile networks
# ---------------------------------------------------------------------------------------------

MOBILENET_V1 = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5,
                (1024, 2), (1024, 1)]  # fmt: skip


def mobilenet_v1_features(width: float) -> list[nn.Module]:
    """MobileNet v1's convolutions at width multiplier `width` (Howard 2017, table 1)."""
    cin = int(32 * width)
    layers: list[nn.Module] = [conv(3, cin, 3, 2)]
    for cout, stride in MOBILENET_V1:
        cout = int(cout * width)
        layers += [conv(cin, cin, 3, stride, g=cin), conv(cin, cout, 1)]
        cin = cout
    return layers


def mobilenet_v1(width: float, classes: int = 1001) -> nn.Module:
    """MobileNet v1 at a width multiplier, TF-slim's 1001 classes."""
    return Classifier(nn.Sequential(*mobilenet_v1_features(width)), int(1024 * width), classes)


class MobileNetSSD(nn.Module):
    """chuanqi305's Caffe MobileNet-SSD (300x300, 21 VOC classes), what ncnn's benchmark runs:
    MobileNet v1 to conv13, four extra 1x1 + 3x3/2 pairs, 1x1 box and class heads on six
    feature maps. The DetectionOutput (decoding, NMS) is not a network layer and is left out."""

    def __init__(self, classes: int = 21) -> None:
        super().__init__()
        features = mobilenet_v1_features(1.0)
        self.to_conv11, self.to_conv13 = (
            nn.Sequential(*features[:23]),
            nn.Sequential(*features[23:]),
        )
        extras, cin = [], 1024
        for mid, cout in ((256, 512), (128, 256), (128, 256), (64, 128)):
            extras.append(
                nn.Sequential(conv(cin, mid, 1, bn=False), conv(mid, cout, 3, 2, bn=False))
            )
            cin = cout
        self.extras = nn.ModuleList(extras)
        sources = [(512, 3), (1024, 6), (512, 6), (256, 6), (256, 6), (128, 6)]
        self.heads = nn.ModuleList(
            nn.Conv2d(c, boxes * (4 + classes), 1) for c, boxes in sources
        )  # loc and conf heads as one conv each: the same work as two

    def forward(self, x: Tensor) -> Tensor:  # (N, 3, 300, 300)
        maps = [self.to_conv11(x)]
        maps.append(self.to_conv13(maps[-1]))
        for extra in self.extras:
            maps.append(extra(maps[-1]))
        outs = [torch.flatten(h(m), 1) for h, m in zip(self.heads, maps, strict=True)]
        return torch.cat(outs, 1)  # (N, boxes x (4 + classes))


class ChannelShuffle(nn.Module):
    """The channel shuffle of ShuffleNet: channel i of group g goes to position i x groups + g.

    Written as a gather of the channels by a constant permutation, not as reshape -> transpose
    -> reshape: the exported reshapes took their sizes from Shape ops, which ONNX shape
    inference does not resolve, and every layer after the first shuffle lost its shape (the
    latency model then costed ShuffleNet v2 at 19 M of its 145 M multiply-adds)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        order = torch.arange(channels).reshape(groups, channels // groups).t().reshape(-1)
        self.register_buffer("order", order, persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        return x.index_select(1, self.order)


class ShuffleUnitV1(nn.Module):
    """ShuffleNet v1 unit (Zhang 2018): grouped 1x1, shuffle, 3x3 depthwise, grouped 1x1; on
    stride 2 the 3x3/2 average-pooled input is concatenated instead of added."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, first: bool) -> None:
        super().__init__()
        self.stride = stride
        out = cout - cin if stride == 2 else cout
        mid = out // 4
        self.body = nn.Sequential(
            conv(cin, mid, 1, g=1 if first else groups), ChannelShuffle(mid, groups),
            conv(mid, mid, 3, stride, g=mid, act=None), conv(mid, out, 1, g=groups, act=None),
        )  # fmt: skip
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        if self.pool is not None:
            return self.act(torch.cat([self.pool(x), self.body(x)], 1))
        return self.act(x + self.body(x))


def shufflenet_v1(groups: int = 3, classes: int = 1000) -> nn.Module:
    """ShuffleNet v1 1x, g=3: what ncnn's benchmark/shufflenet.param runs (240/480/960)."""
    layers: list[nn.Module] = [conv(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 24
    for stage, (cout, repeat) in enumerate(((240, 4), (480, 8), (960, 4))):
        for i in range(repeat):
            layers.append(
                ShuffleUnitV1(cin, cout, 2 if i == 0 else 1, groups, stage == 0 and i == 0)
            )
            cin = cout
    return Classifier(nn.Sequential(*layers), cin, classes)


class ShuffleUnitV2(nn.Module):
    """ShuffleNet v2 unit (Ma 2018): channel split, one branch 1x1 -> dw 3x3 -> 1x1, concat,
    shuffle; on stride 2 both branches take the whole input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, half = stride, cout // 2
        self.half = half
        src = cin if stride == 2 else half
        self.branch = nn.Sequential(
            conv(src, half, 1), conv(half, half, 3, stride, g=half, act=None), conv(half, half, 1)
        )
        self.side = None
        if stride == 2:
            self.side = nn.Sequential(conv(cin, cin, 3, 2, g=cin, act=None), conv(cin, half, 1))
        self.shuffle = ChannelShuffle(cout, 2)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        if self.side is None:  # constant slices, not chunk(): its Split's sizes were Shape ops
            keep, x = x[:, : self.half], x[:, self.half :]
            return self.shuffle(torch.cat([keep, self.branch(x)], 1))
        return self.shuffle(torch.cat([self.side(x), self.branch(x)], 1))


def shufflenet_v2(classes: int = 1000) -> nn.Module:
    """ShuffleNet v2 1.0x (torchvision's layout: 116/232/464, conv5 1024)."""
    layers: list[nn.Module] = [conv(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 24
    for cout, repeat in ((116, 4), (232, 8), (464, 4)):
        for i in range(repeat):
            layers.append(ShuffleUnitV2(cin, cout, 2 if i == 0 else 1))
            cin = cout
    layers.append(conv(cin, 1024, 1))
    return Classifier(nn.Sequential(*layers), 1024, classes)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a hard sigmoid gate (MobileNet v3)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        s = torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))
        return x * nn.functional.hardsigmoid(self.fc2(s))


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise k x k -> (SE) -> project 1x1, residual when shapes match."""

    def __init__(self, cin: int, mid: int, cout: int, k: int, stride: int,
                 act: type[nn.Module] = nn.ReLU, se: int = 0) -> None:  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = [conv(cin, mid, 1, act=act)] if mid != cin else []
        layers.append(conv(mid, mid, k, stride, g=mid, act=act))
        if se:
            layers.append(SqueezeExcite(mid, se))
        layers.append(conv(mid, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        return x + self.body(x) if self.residual else self.body(x)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


# (k, expanded, out, se, activation, stride): torchvision's mobilenet_v3_large configuration
MOBILENET_V3_LARGE = [
    (3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1),
]  # fmt: skip


class MobileNetV3Large(nn.Module):
    """MobileNet v3 large (Howard 2019; torchvision's layout)."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv(3, 16, 3, 2, act=nn.Hardswish)]
        cin = 16
        for k, mid, cout, se, act, stride in MOBILENET_V3_LARGE:
            act_cls = nn.Hardswish if act == "HS" else nn.ReLU
            squeeze = _make_divisible(mid // 4) if se else 0
            layers.append(InvertedResidual(cin, mid, cout, k, stride, act_cls, squeeze))
            cin = cout
        layers.append(conv(cin, 960, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(960, 1280), nn.Hardswish(), nn.Linear(1280, classes))

    def forward(self, x: Tensor) -> Tensor:  # (N, 3, H, W)
        x = self.features(x).mean((2, 3))  # (N, 960)
        return self.head(x)  # (N, classes)


# (expansion, out, repeats, stride, kernel): torchvision's mnasnet1_0 (MnasNet-B1)
MNASNET = [(3, 24, 3, 2, 3), (3, 40, 3, 2, 5), (6, 80, 3, 2, 5), (6, 96, 2, 1, 3),
           (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]  # fmt: skip


def mnasnet(classes: int = 1000) -> nn.Module:
    """MnasNet-B1 1.0 (Tan 2019; torchvision's mnasnet1_0)."""
    layers: list[nn.Module] = [conv(3, 32, 3, 2), conv(32, 32, 3, g=32), conv(32, 16, 1, act=None)]
    cin = 16
    for expand, cout, repeats, stride, k in MNASNET:
        for i in range(repeats):
            layers.append(InvertedResidual(cin, cin * expand, cout, k, stride if i == 0 else 1))
            cin = cout
    layers.append(conv(cin, 1280, 1))
    return Classifier(nn.Sequential(*layers), 1280, classes)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "resnet-18": lambda: resnet(18),
    "resnet-50": lambda: resnet(50),
    "resnet-v1-50": lambda: resnet(50),
    "resnet-v1-101": lambda: resnet(101),
    "resnet-v1-152": lambda: resnet(152),
    "resnet-v2-50": lambda: resnet(50, 2),
    "resnet-v2-101": lambda: resnet(101, 2),
    "resnet-v2-152": lambda: resnet(152, 2),
    "googlenet": lambda: inception_v1(caffe=True),
    "inception-v1": lambda: inception_v1(caffe=False),
    "inception-v3": inception_v3,
    "mobilenet-v1-0.25-128": lambda: mobilenet_v1(0.25),
    "mobilenet-v1-0.5-160": lambda: mobilenet_v1(0.5),
    "mobilenet-v1-ssd": MobileNetSSD,
    "shufflenet-v1": shufflenet_v1,
    "shufflenet-v2": shufflenet_v2,
    "mobilenet-v3": MobileNetV3Large,
    "mnasnet": mnasnet,
}
# fit-set models with no graph here, and why (the fit skips their figures)
NOT_BUILT = {
    "inception-v2": "TF-slim's BN-Inception variant: not built yet",
    "inception-v4": "not built yet (42.7 M parameters, ~14 block types)",
    "inception-resnet-v2": "not built yet",
    "ssd-mobilenet-v1-coco": "the TF-TRT figure includes TensorFlow's CPU post-processing "
    "(box decoding, NMS over 1917 boxes), which a graph cost model does not see",
    "ssd-inception-v2-coco": "as ssd-mobilenet-v1-coco: TensorFlow post-processing in the figure",
    "squeezenet-ssd": "the exact extra layers of ncnn's squeezenet_ssd.param not reproduced",
    "mobilenet-yolo": "the exact head of ncnn's mobilenet_yolo.param not reproduced",
    "mobilenet-v2-yolov3": "the exact head of ncnn's mobilenetv2_yolov3.param not reproduced",
    "proxylessnas": "the searched block sequence of ProxylessNAS-mobile not reproduced",
}


def names() -> list[str]:
    """Every architecture built here, sorted."""
    return sorted(ARCHITECTURES)


def build(name: str) -> nn.Module:
    """A freshly initialized `name` in eval mode; KeyError lists what exists."""
    if name not in ARCHITECTURES:
        raise KeyError(f"no architecture {name!r}; built: {', '.join(names())}")
    return ARCHITECTURES[name]().eval()
