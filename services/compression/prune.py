"""Magnitude pruning: pure mask primitives, the hook that keeps masks through retraining, and
per-layer sensitivity analysis.

    masks = {"net.fc1.weight": magnitude_mask(w, magnitude_threshold(w, quality=1.3))}
    keeper = MaskKeeper(model, masks)            # fit(..., after_step=[keeper])
    table = sensitivity(model, data.test, meta)  # accuracy vs sparsity, each layer alone
    table.write("out/")                          # sensitivity.md, .json, and .png if matplotlib

Layers are the conv/linear modules of the network, named as inside it (`conv1`, `fc2`,
`features.0`); their masks and weights are keyed by the state-dict key (`net.fc1.weight`), which
is how the .sdc container names tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sigdl.core import atomic
from sigdl.core.checkpoint import ModelMeta
from sigdl.core.datasets import Dataset, Split
from sigdl.core.errors import InputError
from sigdl.core.evaluation import score_torch

DEFAULT_SPARSITIES = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


@dataclass(frozen=True)
class Layer:
    """One compressible weight: a conv or linear module of the network."""

    name: str  # module path inside the network: "fc1", "features.0"
    key: str  # state-dict key of its weight: "net.fc1.weight"
    kind: str  # "conv" | "fc"
    module: nn.Module

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight


def find_layers(model: nn.Module) -> dict[str, Layer]:
    """Every conv/linear weight of `model` (a PixelModel or a bare network), keyed by state key."""
    net, prefix = (model.net, "net.") if hasattr(model, "net") else (model, "")
    layers = {}
    for name, module in net.named_modules():
        kind = (
            "conv"
            if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
            else "fc"
            if isinstance(module, nn.Linear)
            else None
        )
        if kind is not None:
            key = f"{prefix}{name}.weight"
            layers[key] = Layer(name, key, kind, module)
    return layers


# ---------------------------------------------------------------------------------------------
# Pure primitives
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def magnitude_threshold(weight: torch.Tensor, quality: float) -> float:
    """Han et al.'s threshold: quality x the (population) std of the layer's unpruned weights."""
    alive = weight[weight != 0].double()
    return float(quality * alive.std(correction=0)) if alive.numel() > 1 else 0.0


@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep-mask (True = kept) of the weights with |w| > threshold."""
    return weight.abs() > threshold


@torch.no_grad()
def sparsity_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask that zeroes exactly round(sparsity * n) weights, the smallest |w| first
    (ties broken by position, so the mask is deterministic)."""
    n = weight.numel()
    drop = min(round(sparsity * n), n)
    order = torch.argsort(weight.abs().flatten(), stable=True)
    keep = torch.ones(n, dtype=torch.bool)
    keep[order[:drop]] = False
    return keep.view_as(weight)


@torch.no_grad()
def sparsity_at_threshold(weight: torch.Tensor, threshold: float) -> float:
    """The fraction of weights a magnitude threshold would zero."""
    return float((weight.abs() <= threshold).float().mean())


def agp_sparsity(initial: float, final: float, step: int, steps: int) -> float:
    """Zhu & Gupta's gradual schedule: s_t = s_f + (s_i - s_f)(1 - t/n)^3, t = 1..n."""
    return final + (initial - final) * (1 - step / steps) ** 3


def linear_sparsity(initial: float, final: float, step: int, steps: int) -> float:
    return initial + (final - initial) * step / steps


# ---------------------------------------------------------------------------------------------
# Applying masks to modules
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the pruned weights in place (+0.0, never -0.0, so zeros are bitwise zero)."""
    weight.masked_fill_(~mask, 0.0)


class MaskKeeper:
    """`fit(after_step=[...])` hook: re-zero every pruned weight after each optimizer step.

    Re-zeroing after the step (rather than masking gradients) also undoes weight decay and
    momentum on pruned weights, so they stay exactly 0 whatever the optimizer.
    """

    def __init__(self, layers: dict[str, Layer], masks: dict[str, torch.Tensor]) -> None:
        self.pairs = [(layers[key].weight, mask) for key, mask in masks.items()]

    def __call__(self, model: nn.Module | None = None) -> None:
        for weight, mask in self.pairs:
            apply_mask(weight, mask)


def prune_channels(
    net: nn.Module,
    fractions: dict[str, float],
    norm: str = "l1",
    multiple: int = 1,
    required: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict, dict, list[str]]:
    """Remove `fractions[name]` of each named layer's output channels (lowest norm first),
    resizing what they feed. Layers whose channels cannot be removed alone (e.g. feeding a
    residual add) are skipped, or refused when `required` names them.
    Returns ({name: {kept, of}}, {skipped name: why}, names of every module resized)."""
    groups, refused = channel_groups(net)
    modules = dict(net.named_modules())
    channels, skipped, changed = {}, {}, []
    for name, fraction in fractions.items():
        group = groups.get(name)
        if group is None:
            why = refused.get(name, "is not prunable by channel")
            if name in required:
                raise InputError(f"layer {name!r} {why}")
            skipped[name] = why
            continue
        weight = modules[name].weight
        before = weight.shape[0]
        keep = channels_to_keep(channel_scores(weight, norm), fraction, multiple)
        remove_channels(net, group, keep)
        channels[name] = {"kept": len(keep), "of": before}
        touched = [group.producer, *group.followers, *(n for n, _ in group.consumers)]
        changed.extend(n for n in touched if n not in changed)
    return channels, skipped, changed


# ---------------------------------------------------------------------------------------------
# Sensitivity analysis
# ---------------------------------------------------------------------------------------------


@dataclass
class SensitivityTable:
    """Test accuracy with one layer pruned at a time, without retraining."""

    baseline: float  # accuracy of the unpruned model
    sparsities: list[float]
    accuracy: dict[str, list[float]]  # layer name -> accuracy at each sparsity

    def to_dict(self) -> dict:
        return {
            "baseline": self.baseline,
            "sparsities": self.sparsities,
            "accuracy": self.accuracy,
        }

    def to_markdown(self) -> str:
        head = "| layer | " + " | ".join(f"{s:.0%}" for s in self.sparsities) + " |"
        rule = "| --- |" + " ---: |" * len(self.sparsities)
        rows = [
            f"| {name} | " + " | ".join(f"{100 * a:.2f}" for a in accs) + " |"
            for name, accs in self.accuracy.items()
        ]
        caption = (
            f"Test accuracy (%) with one layer magnitude-pruned to each sparsity, no retraining "
            f"(dense: {100 * self.baseline:.2f}%)."
        )
        return "\n".join([caption, "", head, rule, *rows]) + "\n"

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write sensitivity.json and sensitivity.md, and sensitivity.png if matplotlib exists."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_json(out / "sensitivity.json", self.to_dict())
        atomic.write_bytes(out / "sensitivity.md", self.to_markdown().encode())
        written = [out / "sensitivity.json", out / "sensitivity.md"]
        plot = self.plot(out / "sensitivity.png")
        return written + ([plot] if plot else [])

    def plot(self, path: Path) -> Path | None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib import pyplot as plt
        except ImportError:
            return None
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, accs in self.accuracy.items():
            ax.plot([100 * s for s in self.sparsities], [100 * a for a in accs], "o-", label=name)
        ax.axhline(100 * self.baseline, color="gray", linestyle=":", label="dense")
        ax.set(xlabel="sparsity (%)", ylabel="test accuracy (%)", title="Pruning sensitivity")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


@torch.no_grad()
def sensitivity(
    model: nn.Module,
    split: Split | Dataset,
    meta: ModelMeta,
    layers: Iterable[str] | None = None,
    sparsities: Iterable[float] = DEFAULT_SPARSITIES,
) -> SensitivityTable:
    """Prune each layer alone to each sparsity (magnitude), score on `split`, restore it.

    `layers` are layer names (`fc1`); None means every conv/linear layer. A Dataset is scored
    on its test split.
    """
    split = split.test if isinstance(split, Dataset) else split
    found = {layer.name: layer for layer in find_layers(model).values()}
    names = list(found) if layers is None else list(layers)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise InputError(
            f"layers {', '.join(map(repr, unknown))} not in {meta.model!r} "
            f"(layers: {', '.join(found)})"
        )
    levels = [float(s) for s in sparsities]
    if not levels or not all(0 <= s <= 1 and math.isfinite(s) for s in levels):
        raise InputError(f"sparsities={levels!r}: expected fractions in [0, 1]")

    def score() -> float:
        return score_torch(model, split, meta.channels, meta.input_size, meta.adapt_mode).accuracy

    baseline = score()
    table: dict[str, list[float]] = {}
    for name in names:
        weight = found[name].weight
        saved = weight.detach().clone()
        table[name] = []
        for level in levels:
            apply_mask(weight, sparsity_mask(saved, level))
            table[name].append(score())
            weight.copy_(saved)
    return SensitivityTable(baseline, levels, table)


# ---------------------------------------------------------------------------------------------
# Structured pruning: remove whole filters / neurons and resize the layers that consume them
# ---------------------------------------------------------------------------------------------

# Ops that keep channel c of their input in channel c of their output.
_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid,
    nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_CHANNELWISE_FUNCTIONS = {
    torch.relu, torch.sigmoid, torch.tanh, nn.functional.relu, nn.functional.relu6,
    nn.functional.gelu, nn.functional.silu, nn.functional.hardswish, nn.functional.dropout,
    nn.functional.max_pool2d, nn.functional.avg_pool2d, nn.functional.adaptive_avg_pool2d,
}  # fmt: skip
_CHANNELWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous"}


@dataclass
class ChannelGroup:
    """A layer whose output channels can be removed, and every module that must follow."""

    producer: str  # module name of the conv/linear whose outputs (rows / filters) go
    followers: list[str]  # BatchNorms and depthwise convs resized on their channels
    consumers: list[tuple[str, int]]  # (conv/linear reading the channels, features per channel)


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def channel_groups(net: nn.Module) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
    """Trace `net` (torch.fx) and find, for each conv/linear, the modules its output channels
    flow into. Returns (prunable groups by producer name, {name: why not} for the others).

    Channels may pass through activations, pooling, dropout, BatchNorm, depthwise convs and a
    flatten; an add, a concatenation, the network's output or any other op stops the search
    (a residual or the logits cannot lose channels on one side only).
    """
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(net).graph
    except Exception as exc:  # tracing fails on data-dependent control flow
        raise InputError(f"structured pruning needs a traceable network: {exc}") from None
    modules = dict(net.named_modules())
    groups, refused = {}, {}
    for node in graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            continue
        if _is_depthwise(module):
            continue  # follows its producer's channels, never prunes on its own
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups != 1:
            refused[node.target] = "a grouped convolution"
            continue
        group, why = _follow(node, modules)
        if group is None:
            refused[node.target] = why
        else:
            groups[node.target] = group
    return groups, refused


def _follow(start, modules: dict[str, nn.Module]) -> tuple[ChannelGroup | None, str]:
    producer = modules[start.target]
    channels = producer.out_channels if hasattr(producer, "out_channels") else producer.out_features
    followers, consumers, flattened = [], [], False
    frontier, seen = list(start.users), set()
    while frontier:
        node = frontier.pop()
        if node in seen:
            continue
        seen.add(node)
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d) or (
            module is not None and _is_depthwise(module)
        ):
            followers.append(node.target)
            frontier.extend(node.users)
        elif (
            isinstance(module, _CHANNELWISE_MODULES)
            or (node.op == "call_function" and node.target in _CHANNELWISE_FUNCTIONS)
            or (node.op == "call_method" and node.target in _CHANNELWISE_METHODS)
        ):
            frontier.extend(node.users)
        elif (node.op == "call_function" and node.target is torch.flatten) or (
            isinstance(module, nn.Flatten)
        ):
            flattened = True
            frontier.extend(node.users)
        elif isinstance(module, nn.Linear):
            if module.in_features % channels:
                return None, f"feeds {node.target!r} with {module.in_features} inputs"
            consumers.append((node.target, module.in_features // channels))
        elif isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups == 1:
            if flattened:
                return None, f"is flattened into convolution {node.target!r}"
            consumers.append((node.target, 1))
        else:
            what = "the network's output" if node.op == "output" else repr(str(node.target))
            return None, f"feeds {what}"
    if not consumers:
        return None, "feeds no layer that could shrink"
    return ChannelGroup(start.target, followers, consumers), ""


@torch.no_grad()
def channel_scores(weight: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """Importance of each output channel: the L1 (Li et al., ICLR 2017) or L2 norm of its
    filter / row. (out,)"""
    flat = weight.detach().flatten(1).abs()  # (out, rest)
    return flat.sum(1) if norm == "l1" else flat.pow(2).sum(1).sqrt()


@torch.no_grad()
def channels_to_keep(scores: torch.Tensor, fraction: float, multiple: int = 1) -> torch.Tensor:
    """Sorted indices of the channels kept after removing `fraction` of them, lowest scores
    first; the kept count is rounded up to a multiple of `multiple` and is at least one."""
    n = scores.numel()
    keep = max(n - round(fraction * n), 1)
    keep = min(n, multiple * math.ceil(keep / multiple))
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:keep].sort().values


@torch.no_grad()
def _slice_param(module: nn.Module, name: str, index: torch.Tensor, dim: int) -> None:
    tensor = getattr(module, name)
    if tensor is None:
        return
    data = tensor.detach().index_select(dim, index).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, name, nn.Parameter(data, requires_grad=tensor.requires_grad))
    else:
        setattr(module, name, data)


def _expand_index(index: torch.Tensor, per_channel: int) -> torch.Tensor:
    """Channel indices -> the flattened feature indices they own (channel-major flatten)."""
    offsets = torch.arange(per_channel)
    return (index[:, None] * per_channel + offsets[None, :]).flatten()


@torch.no_grad()
def remove_channels(net: nn.Module, group: ChannelGroup, keep: torch.Tensor) -> None:
    """Keep only the output channels `keep` of the group's producer, resizing its followers
    (BatchNorm, depthwise conv) and the inputs of its consumers in place."""
    modules = dict(net.named_modules())
    producer = modules[group.producer]
    _slice_param(producer, "weight", keep, 0)
    _slice_param(producer, "bias", keep, 0)
    _set_size(producer, out=len(keep))
    for name in group.followers:
        module = modules[name]
        for attr in ("weight", "bias", "running_mean", "running_var"):
            if isinstance(getattr(module, attr, None), torch.Tensor):
                _slice_param(module, attr, keep, 0)
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            module.num_features = len(keep)
        else:  # depthwise conv: one filter per channel
            module.groups = len(keep)
            _set_size(module, out=len(keep), inp=len(keep))
    for name, per_channel in group.consumers:
        module = modules[name]
        _slice_param(module, "weight", _expand_index(keep, per_channel), 1)
        _set_size(module, inp=len(keep) * per_channel)


def _set_size(module: nn.Module, out: int | None = None, inp: int | None = None) -> None:
    if isinstance(module, nn.Linear):
        module.out_features = out if out is not None else module.out_features
        module.in_features = inp if inp is not None else module.in_features
    else:
        module.out_channels = out if out is not None else module.out_channels
        module.in_channels = inp if inp is not None else module.in_channels
