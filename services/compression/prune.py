"""Magnitude pruning: pure mask primitives, the hook that keeps masks through retraining, and
per-layer sensitivity analysis; structured (channel) pruning through residual adds and
concatenations, on groups found on the traced graph.

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
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
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


class Splicer:
    """`fit(after_step=[...])` hook that runs before the `MaskKeeper`: Dynamic Network
    Surgery's splicing (Guo, Yao, Chen, NeurIPS 2016). Each weight keeps a dense shadow copy
    that every optimizer update reaches, pruned entries included (their gradients flow through
    the masked forward); the next mask is taken from the shadow's magnitudes, so a weight pruned
    too early can come back. Before a step the weight is shadow * mask; after it, the kept
    entries are the weight and the pruned ones add their update to the shadow.
    """

    def __init__(self, weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
        self.weights, self.masks = weights, masks  # masks: the engine's, updated per round
        self.shadow = {key: w.detach().clone() for key, w in weights.items()}

    @torch.no_grad()
    def __call__(self, model: nn.Module | None = None) -> None:
        for key, weight in self.weights.items():
            shadow = self.shadow[key]
            torch.where(self.masks[key], weight, shadow + weight, out=shadow)


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


_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}
_FLATTEN_METHODS = {"flatten"}

_NormLayer = nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d
_ConvLayer = nn.Conv1d | nn.Conv2d | nn.Conv3d


@dataclass
class ChannelGroup:
    """Output channels removed together: the producers whose outputs meet in residual adds (one
    producer when they meet none), and every module that must follow those channels."""

    producer: str  # first producer: module name of a conv/linear whose filters / rows go
    followers: list[str]  # BatchNorms and depthwise convs resized on the group's channels
    consumers: list[tuple[str, int]]  # (conv/linear reading the channels, features per channel)
    producers: list[str] = field(default_factory=list)  # every producer, `producer` first
    # For a follower / consumer whose input concatenates several groups: what comes before this
    # group's channels there (producer names of other groups, whose width may change, or the
    # fixed widths of channels that cannot shrink).
    before: dict[str, list[str | int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.producers = self.producers or [self.producer]


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, _ConvLayer)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


class _Spaces:
    """Union-find over channel spaces (the output channels of one producer, or of the network's
    input). A residual add merges two spaces; a space that reaches an op which cannot follow a
    channel removal (the logits, an unknown op) is blocked with the reason."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.width: list[int | None] = []  # channels at trace time (None: unknown)
        self.producer: list[str | None] = []
        self.why: dict[int, str] = {}  # root -> why its channels cannot be removed

    def new(self, width: int | None, producer: str | None = None, why: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.width.append(width)
        self.producer.append(producer)
        if why is not None:
            self.why[len(self.parent) - 1] = why
        return len(self.parent) - 1

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.why:
                self.why.setdefault(ra, self.why.pop(rb))

    def block(self, spaces: Iterable[int], why: str) -> None:
        for space in spaces:
            self.why.setdefault(self.find(space), why)


# The channel dimension of a traced value: the spaces it concatenates, and whether it has been
# flattened into features (channel-major, so each channel owns a run of features).
_Layout = tuple[tuple[int, ...], bool]


def channel_groups(net: nn.Module) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
    """Trace `net` (torch.fx) and find which output channels must be removed together and every
    module that follows them. Returns (groups by each of their producers' names, {producer name:
    why not} for channels that cannot be removed).

    Channels pass through activations, pooling, dropout, BatchNorm, depthwise convs and a
    flatten; a residual add ties its two sides into one group (MobileNet v2's inverted
    residuals), a concatenation along channels maps each side to its own channel range
    (SqueezeNet's fire modules). The network's input and output and any other op stop them.
    """
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(net).graph
    except Exception as exc:  # tracing fails on data-dependent control flow
        raise InputError(f"structured pruning needs a traceable network: {exc}") from None
    modules = dict(net.named_modules())
    spaces, layouts = _Spaces(), {}
    uses: list[tuple[str, str, tuple[int, ...], int]] = []  # (module, role, spaces, per chan.)
    for node in graph.nodes:
        layouts[node] = _propagate(node, modules, spaces, layouts, uses)
    return _collect(spaces, uses)


def _propagate(node, modules: dict, spaces: _Spaces, layouts: dict, uses: list) -> _Layout:
    """The layout of `node`'s output; records the modules that read channel spaces."""
    import torch.fx

    def layout(arg) -> _Layout | None:
        return layouts.get(arg) if isinstance(arg, torch.fx.Node) else None

    def opaque(why: str) -> _Layout:  # an op whose channels we cannot follow
        for arg in node.all_input_nodes:
            if layouts.get(arg) is not None:
                spaces.block(layouts[arg][0], why)
        return (spaces.new(None, why=f"comes from {str(node.target)!r}"),), False

    module = modules.get(node.target) if node.op == "call_module" else None
    first = layout(node.args[0]) if node.args else None
    if node.op == "placeholder":
        return (spaces.new(None, why="is tied to the network's input"),), False
    if node.op == "output":
        return opaque("feeds the network's output")
    if isinstance(module, _ConvLayer | nn.Linear) and first is not None:
        return _layer(node.target, module, first, spaces, uses)
    if isinstance(module, _NormLayer) and first is not None and not first[1]:
        uses.append((node.target, "follower", first[0], 1))
        return first
    channelwise = (
        isinstance(module, _CHANNELWISE_MODULES)
        or (node.op == "call_function" and node.target in _CHANNELWISE_FUNCTIONS)
        or (node.op == "call_method" and node.target in _CHANNELWISE_METHODS)
    )
    if channelwise and first is not None and len(node.all_input_nodes) == 1:
        return first
    flatten = (
        isinstance(module, nn.Flatten)
        or (node.op == "call_function" and node.target is torch.flatten)
        or (node.op == "call_method" and node.target in _FLATTEN_METHODS)
    )
    if flatten and first is not None and _flatten_start(node, module) == 1:
        return first[0], True
    adds = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in _ADD_METHODS
    )
    if adds and first is not None and len(node.args) == 2 and not node.kwargs:
        return _add(first, layout(node.args[1]), spaces, opaque)
    if node.op == "call_function" and node.target is torch.cat:
        return _cat(node, layout, spaces, opaque)
    return opaque(f"feeds {str(node.target)!r}")


def _flatten_start(node, module: nn.Module | None) -> int:
    if isinstance(module, nn.Flatten):
        return module.start_dim
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    return start if isinstance(start, int) else -1


def _layer(name: str, module: nn.Module, first: _Layout, spaces: _Spaces, uses: list) -> _Layout:
    """A conv/linear: a depthwise conv follows its input's channels; any other reads them
    (a consumer) and produces a new space of its own."""
    segments, flat = first
    width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    if _is_depthwise(module) and not flat:
        uses.append((name, "follower", segments, 1))
        return first
    if isinstance(module, _ConvLayer) and module.groups != 1:
        spaces.block(segments, f"feeds grouped convolution {name!r}")
        return (spaces.new(width, name, why="a grouped convolution"),), False
    inputs = module.in_features if isinstance(module, nn.Linear) else module.in_channels
    total = _total_width(segments, spaces)
    if isinstance(module, _ConvLayer) and flat:
        spaces.block(segments, f"is flattened into convolution {name!r}")
    elif total is None or inputs % total:
        spaces.block(segments, f"feeds {name!r} with {inputs} inputs")
    else:
        uses.append((name, "consumer", segments, inputs // total))
    return (spaces.new(width, name),), False


def _total_width(segments: tuple[int, ...], spaces: _Spaces) -> int | None:
    widths = [spaces.width[s] for s in segments]
    return None if None in widths else sum(widths)


def _add(left: _Layout, right: _Layout | None, spaces: _Spaces, opaque) -> _Layout:
    """A residual add: both sides' channels are the same channels, so they merge."""
    if right is None:  # a Python number: the same for every channel
        return left
    widths = [[spaces.width[s] for s in side[0]] for side in (left, right)]
    # one range a side: the shapes match (an unknown width is the input's); else range by range
    same = len(widths[0]) == len(widths[1]) == 1 and None in (*widths[0], *widths[1])
    if left[1] or right[1] or not (same or (widths[0] == widths[1] and None not in widths[0])):
        return opaque("is added to channels laid out differently")
    for a, b in zip(left[0], right[0], strict=True):
        spaces.union(a, b)
    return left


def _cat(node, layout, spaces: _Spaces, opaque) -> _Layout:
    """A concatenation along channels: each input keeps its own channel range."""
    parts = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    ins = [layout(p) for p in parts] if isinstance(parts, list | tuple) else [None]
    if dim != 1 or any(x is None or x[1] for x in ins):
        return opaque("is concatenated along a dimension other than channels")
    return tuple(s for x in ins for s in x[0]), False


def _collect(
    spaces: _Spaces, uses: list[tuple[str, str, tuple[int, ...], int]]
) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
    """Groups from the merged spaces: each root's producers, followers and consumers."""
    for name, _, segments, _ in uses:  # the same channels twice in one input: cannot slice
        roots = [spaces.find(s) for s in segments]
        spaces.block([r for r in roots if roots.count(r) > 1], f"reaches {name!r} twice")
    for segments in (u[2] for u in uses if len(u[2]) > 1):  # ranges after unknown widths
        unknown = [i for i, s in enumerate(segments) if spaces.width[s] is None]
        spaces.block(segments[min(unknown, default=len(segments)) :], "follows unknown channels")
    groups: dict[int, ChannelGroup] = {}
    for space, producer in enumerate(spaces.producer):
        root = spaces.find(space)
        if producer is None or root in spaces.why:
            continue
        if root in groups:
            groups[root].producers.append(producer)
        else:
            groups[root] = ChannelGroup(producer, [], [])
    for name, role, segments, per_channel in uses:
        for i, space in enumerate(segments):
            group = groups.get(spaces.find(space))
            if group is None:
                continue
            if role == "follower":
                group.followers.append(name)
            else:
                group.consumers.append((name, per_channel))
            if i:
                group.before[name] = [_width_of(s, spaces, groups) for s in segments[:i]]
    by_name, refused = {}, {}
    for space, producer in enumerate(spaces.producer):
        root = spaces.find(space)
        group = groups.get(root)
        if producer is None:
            continue
        if group is not None and group.consumers:
            by_name[producer] = group
            continue
        why = spaces.why.get(root, "feeds no layer that could shrink")
        tied = [p for s, p in enumerate(spaces.producer) if p and p != producer
                and spaces.find(s) == root]  # fmt: skip
        refused[producer] = why + (f" (tied by a residual add to {tied[0]!r})" if tied else "")
    return by_name, refused


def _width_of(space: int, spaces: _Spaces, groups: dict[int, ChannelGroup]) -> str | int:
    """A channel range before another: its group's first producer (its width may change when
    that group is pruned), or its fixed width."""
    group = groups.get(spaces.find(space))
    return group.producer if group is not None else spaces.width[space]


@torch.no_grad()
def channel_scores(weight: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """Importance of each output channel: the L1 (Li et al., ICLR 2017) or L2 norm of its
    filter / row. (out,)"""
    flat = weight.detach().flatten(1).abs()  # (out, rest)
    return flat.sum(1) if norm == "l1" else flat.pow(2).sum(1).sqrt()


@torch.no_grad()
def group_scores(weights: list[torch.Tensor], norm: str = "l1") -> torch.Tensor:
    """Importance of each channel of a group: the L1 / L2 norm over all its producers' filters
    (one producer: its `channel_scores`). (out,)"""
    scores = [channel_scores(w, norm) for w in weights]
    if len(scores) == 1:
        return scores[0]
    stacked = torch.stack(scores)  # (producers, out)
    return stacked.sum(0) if norm == "l1" else stacked.pow(2).sum(0).sqrt()


@torch.no_grad()
def channels_to_keep(scores: torch.Tensor, fraction: float, multiple: int = 1) -> torch.Tensor:
    """Sorted indices of the channels kept after removing `fraction` of them, lowest scores
    first; the kept count is rounded up to a multiple of `multiple` and is at least one."""
    n = scores.numel()
    keep = max(n - round(fraction * n), 1)
    keep = min(n, multiple * math.ceil(keep / multiple))
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:keep].sort().values


def prune_channels(
    net: nn.Module,
    fractions: dict[str, float],
    norm: str = "l1",
    multiple: int = 1,
    required: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict, dict, list[str]]:
    """Remove `fractions[name]` of each named layer's output channels (lowest group norm first),
    resizing what they feed. Producers tied by residual adds lose the same channels, at the
    smallest fraction any of them is given. Layers whose channels cannot be removed (e.g. the
    logits) are skipped, or refused when `required` names them.
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
        if name in channels:
            continue  # pruned with another producer of its group
        fraction = min(fractions.get(p, fraction) for p in group.producers)
        before = modules[group.producer].weight.shape[0]
        scores = group_scores([modules[p].weight for p in group.producers], norm)
        keep = channels_to_keep(scores, fraction, multiple)
        remove_channels(net, group, keep)
        for producer in group.producers:
            channels[producer] = {"kept": len(keep), "of": before}
            if len(group.producers) > 1:
                channels[producer]["group"] = group.producer
        touched = [*group.producers, *group.followers, *(n for n, _ in group.consumers)]
        changed.extend(n for n in touched if n not in changed)
    return channels, skipped, changed


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


def _input_index(
    keep: torch.Tensor, width: int, total: int, before: list[str | int], modules: dict
) -> torch.Tensor:
    """Indices kept of an input of `total` channels whose range [offset, offset + width) is
    the group's (`before` gives the offset) and whose other channels all stay."""
    offset = sum(b if isinstance(b, int) else modules[b].weight.shape[0] for b in before)
    if offset == 0 and width == total:
        return keep
    head, tail = torch.arange(offset), torch.arange(offset + width, total)
    return torch.cat([head, keep + offset, tail])


@torch.no_grad()
def remove_channels(net: nn.Module, group: ChannelGroup, keep: torch.Tensor) -> None:
    """Keep only the output channels `keep` of the group's producers, resizing its followers
    (BatchNorm, depthwise conv) and the inputs of its consumers in place."""
    modules = dict(net.named_modules())
    width = modules[group.producer].weight.shape[0]
    for name in group.producers:
        producer = modules[name]
        _slice_param(producer, "weight", keep, 0)
        _slice_param(producer, "bias", keep, 0)
        _set_size(producer, out=len(keep))
    for name in group.followers:
        module = modules[name]
        total = module.num_features if isinstance(module, _NormLayer) else module.out_channels
        index = _input_index(keep, width, total, group.before.get(name, []), modules)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            if isinstance(getattr(module, attr, None), torch.Tensor):
                _slice_param(module, attr, index, 0)
        if isinstance(module, _NormLayer):
            module.num_features = len(index)
        else:  # depthwise conv: one filter per channel
            module.groups = len(index)
            _set_size(module, out=len(index), inp=len(index))
    for name, per_channel in group.consumers:
        module = modules[name]
        inputs = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        before = group.before.get(name, [])
        index = _input_index(keep, width, inputs // per_channel, before, modules)
        _slice_param(module, "weight", _expand_index(index, per_channel), 1)
        _set_size(module, inp=len(index) * per_channel)


def _set_size(module: nn.Module, out: int | None = None, inp: int | None = None) -> None:
    if isinstance(module, nn.Linear):
        module.out_features = out if out is not None else module.out_features
        module.in_features = inp if inp is not None else module.in_features
    else:
        module.out_channels = out if out is not None else module.out_channels
        module.in_channels = inp if inp is not None else module.in_channels


@torch.no_grad()
def multiply_adds(net: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-adds of each conv and linear layer in one forward pass of `x` (N, C, H, W)."""
    counts: dict[str, int] = {}
    hooks = []
    for name, module in net.named_modules():
        if isinstance(module, _ConvLayer | nn.Linear):

            def count(module: nn.Module, _inputs, output: torch.Tensor, name: str = name) -> None:
                # each output value costs one multiply-add per weight of its filter / row
                counts[name] = counts.get(name, 0) + output.numel() * module.weight[0].numel()

            hooks.append(module.register_forward_hook(count))
    try:
        net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return counts
