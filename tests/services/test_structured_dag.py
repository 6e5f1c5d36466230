"""Structured pruning through residual adds and concatenations: the channel groups of
MobileNet v2 (inverted residuals) and SqueezeNet 1.1 (fire modules) found on the traced graph,
removal equal to zeroing the same channels, multiply-adds that fall accordingly, the ONNX
export under ONNX Runtime, and the `structured` step end to end through a `.sdc`."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from services.compression.engine import compress
from services.compression.prune import (
    ChannelGroup,
    channel_groups,
    channels_to_keep,
    find_layers,
    group_scores,
    multiply_adds,
    prune_channels,
    remove_channels,
)
from services.compression.recipe import Recipe
from sigdl.core import checkpoint, onnx_io
from sigdl.core.datasets import Dataset, Split
from sigdl.core.errors import InputError
from sigdl.core.exporting import zoo_meta
from sigdl.core.sdc import load_model, write_sdc

SIZE = 64  # input side: small enough for CPU tests, large enough for every stride
MODELS = ["mobilenet-v2", "squeezenet-1.1"]


def build(name: str, seed: int = 0) -> nn.Module:
    """A zoo network in eval mode with BatchNorm statistics that are not the identity."""
    torch.manual_seed(seed)
    net = checkpoint.build(zoo_meta(name, SIZE, 3, 10)).net.eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return net


def unique(groups: dict[str, ChannelGroup]) -> list[ChannelGroup]:
    return list({id(g): g for g in groups.values()}.values())


def width(module: nn.Module) -> int:
    return module.weight.shape[0]


def offset(group: ChannelGroup, name: str, modules: dict) -> int:
    return sum(b if isinstance(b, int) else width(modules[b]) for b in group.before.get(name, []))


@torch.no_grad()
def zero_channels(net: nn.Module, group: ChannelGroup, gone: torch.Tensor) -> None:
    """What removing channels `gone` means: every producer and follower outputs exactly 0 there
    (BatchNorm with zero scale, shift and mean), so consumers read nothing from them."""
    modules = dict(net.named_modules())
    for name in group.producers:
        modules[name].weight[gone] = 0
        if modules[name].bias is not None:
            modules[name].bias[gone] = 0
    for name in group.followers:
        module, at = modules[name], gone + offset(group, name, modules)
        module.weight[at] = 0
        if isinstance(module, nn.BatchNorm2d):
            module.bias[at] = 0
            module.running_mean[at] = 0


# --- the groups ------------------------------------------------------------------------------


def test_mobilenet_v2_ties_the_producers_of_each_residual_stage():
    net = build("mobilenet-v2")
    groups, refused = channel_groups(net)
    modules = dict(net.named_modules())
    assert refused == {"classifier.1": "feeds the network's output"}
    # stage (24 channels, 2 blocks): both blocks' projections meet in the residual add
    stage = groups["features.2.conv.2"]
    assert stage.producers == ["features.2.conv.2", "features.3.conv.2"]
    assert stage.followers == ["features.2.conv.3", "features.3.conv.3"]  # their BatchNorms
    assert stage.consumers == [("features.3.conv.0.0", 1), ("features.4.conv.0.0", 1)]
    assert groups["features.3.conv.2"] is stage
    tied = sorted(len(g.producers) for g in unique(groups))
    assert tied[-5:] == [2, 3, 3, 3, 4]  # the five stages with residuals (paper, Table 2)
    # an expansion conv's channels run through its BN, the depthwise conv and its BN
    expand = groups["features.2.conv.0.0"]
    assert expand.followers == ["features.2.conv.0.1", "features.2.conv.1.0", "features.2.conv.1.1"]
    assert expand.consumers == [("features.2.conv.2", 1)]
    for group in unique(groups):  # shapes agree across every group
        channels = width(modules[group.producer])
        assert all(width(modules[p]) == channels for p in group.producers)
        assert all(width(modules[f]) == channels for f in group.followers)
        for name, per_channel in group.consumers:
            module = modules[name]
            inputs = module.in_features if isinstance(module, nn.Linear) else module.in_channels
            assert inputs == channels * per_channel


def test_squeezenet_maps_each_side_of_a_concatenation_to_its_channel_range():
    net = build("squeezenet-1.1")
    groups, refused = channel_groups(net)
    assert refused == {"final_conv": "feeds the network's output"}
    assert len(groups) == 25 and all(len(g.producers) == 1 for g in groups.values())
    left, right = groups["features.3.expand1x1"], groups["features.3.expand3x3"]
    assert left.consumers == right.consumers == [("features.4.squeeze", 1)]
    assert left.before == {} and right.before == {"features.4.squeeze": ["features.3.expand1x1"]}
    assert groups["features.12.expand3x3"].before == {"final_conv": ["features.12.expand1x1"]}
    squeeze = groups["features.3.squeeze"]
    assert squeeze.consumers == [("features.3.expand1x1", 1), ("features.3.expand3x3", 1)]


class Odd(nn.Module):
    """A residual whose side is the network's input, and a concatenation along width."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W)
        y = self.b(x + self.a(x))  # (N, 4, H, W)
        return self.head(torch.cat([y, self.c(y)], 1)).mean((2, 3))  # (N, 2)


def test_what_cannot_shrink_is_refused_with_the_reason():
    groups, refused = channel_groups(Odd())
    assert refused["a"] == "is tied to the network's input"
    assert set(groups) == {"b", "c"} and groups["c"].before == {"head": ["b"]}
    assert refused["head"] == "feeds 'mean'"
    with pytest.raises(InputError, match="layer 'a' is tied to the network's input"):
        prune_channels(Odd(), {"a": 0.5}, required={"a"})


# --- pruning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_removing_whole_groups_equals_zeroing_them(name):
    net = build(name)
    reference = copy.deepcopy(net)
    modules = dict(net.named_modules())
    x = torch.rand(2, 3, SIZE, SIZE)
    groups, _ = channel_groups(net)
    for i, group in enumerate(unique(groups)):
        fraction = (0.3, 0.4, 0.5)[i % 3]
        scores = group_scores([modules[p].weight for p in group.producers], "l2")
        keep = channels_to_keep(scores, fraction)
        gone = torch.ones(len(scores), dtype=torch.bool)
        gone[keep] = False
        zero_channels(reference, group, gone.nonzero().flatten())
        remove_channels(net, group, keep)
    with torch.no_grad():
        pruned, zeroed = net(x), reference(x)
    assert pruned.shape == (2, 10)
    torch.testing.assert_close(pruned, zeroed, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_multiply_adds_fall_with_the_channels_removed(name, fraction):
    net = build(name)
    x = torch.rand(1, 3, SIZE, SIZE)
    before = multiply_adds(net, x)
    group = channel_groups(net)[0]["features.5.conv.2" if name == "mobilenet-v2" else
                                   "features.6.expand3x3"]  # fmt: skip
    modules = dict(net.named_modules())
    channels = width(modules[group.producer])
    kept = len(channels_to_keep(torch.rand(channels), fraction))
    remove_channels(net, group, torch.arange(kept))
    after = multiply_adds(net, x)
    for name_ in [*group.producers, *group.followers]:  # their work shrinks with the channels
        if name_ in before:
            assert after[name_] * channels == before[name_] * kept
    for name_, _ in group.consumers:  # a consumer loses the same channels from its inputs
        inputs = modules[name_].in_channels
        assert after[name_] == before[name_] * inputs // (inputs + channels - kept)
    touched = {*group.producers, *group.followers, *(n for n, _ in group.consumers)}
    assert all(after[n] == before[n] for n in before if n not in touched)
    # every prunable layer at `fraction`: between (1 - f)^2 (both sides thin) and 1 - f
    whole = build(name)
    prune_channels(whole, {layer.name: fraction for layer in find_layers(whole).values()})
    ratio = sum(multiply_adds(whole, x).values()) / sum(before.values())
    assert (1 - fraction) ** 2 * 0.95 < ratio < 1 - fraction


@pytest.mark.parametrize("name", MODELS)
def test_pruned_model_exports_to_onnx_with_the_same_logits(name, tmp_path):
    meta = zoo_meta(name, SIZE, 3, 10)
    torch.manual_seed(0)
    model = checkpoint.build(meta).eval()
    fractions = {x.name: 0.4 for x in find_layers(model.net).values()}
    channels, skipped, _ = prune_channels(model.net, fractions, multiple=4)
    assert set(skipped) <= {"classifier.1", "final_conv"} | {
        x.name for x in find_layers(model.net).values() if getattr(x.module, "groups", 1) > 1
    }
    assert all(c["kept"] % 4 == 0 for c in channels.values())
    path = onnx_io.export_onnx(model, tmp_path / "model.onnx", meta.input_shape)
    pixels = np.random.default_rng(0).random((3, 3, SIZE, SIZE), dtype=np.float32)
    logits = onnx_io.predict(onnx_io.session(path), pixels)
    with torch.no_grad():
        expected = model(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-3)


# --- the `structured` step -------------------------------------------------------------------


def synthetic(classes: int = 10, n: int = 48) -> Dataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    split = Split(images, labels)
    return Dataset("synthetic", [str(i) for i in range(classes)], split, split, "test")


@pytest.mark.parametrize("name", MODELS)
def test_structured_step_shrinks_a_dag_through_the_sdc(name, tmp_path):
    meta = zoo_meta(name, SIZE, 3, 10)
    torch.manual_seed(0)
    model = checkpoint.build(meta).eval()
    before = sum(multiply_adds(model.net, torch.rand(1, 3, SIZE, SIZE)).values())
    recipe = Recipe.from_dict({
        "name": "thin", "seed": 0,
        "steps": [{"type": "structured", "fraction": 0.5, "retrain": {"epochs": 0}}],
    })  # fmt: skip
    result = compress(model, recipe, synthetic(), meta)
    row = result.ladder[1]
    assert row["parameters"] < result.ladder[0]["parameters"] * 0.6
    assert len(row["skipped"]) == (1 if name == "squeezenet-1.1" else 18)  # logits, depthwise
    write_sdc(tmp_path / "model.sdc", result.tensors, meta.to_json())
    decoded, _ = load_model(tmp_path / "model.sdc")  # rebuilt thin from the stored shapes
    after = sum(multiply_adds(decoded.net, torch.rand(1, 3, SIZE, SIZE)).values())
    assert after < before * 0.5
    path = onnx_io.export_onnx(decoded, tmp_path / "model.onnx", meta.input_shape)
    pixels = np.random.default_rng(1).random((2, 3, SIZE, SIZE), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(pixels)).numpy()
    logits = onnx_io.predict(onnx_io.session(path), pixels)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-3)
