"""The `sensitivity-guided` step: choose each layer's sparsity and codebook bits from a
sensitivity sweep, for the `prune` and `share` steps after it that say `planned`.

The sweep prunes each selected layer alone to every sparsity of the grid (magnitude), shares
what is left on a k-means codebook of every bit width of the grid, and scores the model on a
fixed draw of training images (never the test set): the loss increase is the option's cost,
its estimated coded size (entropy of the relative indices and of the codebook indices, plus the
codebook) its size. `planner.greedy_plan` then spends the budget where it buys the most bytes.
The weights are restored after the sweep: the step only plans. Its choices, with the figures
behind them, go into the ladder row and into report.json's `plan`.

    steps:
      - type: sensitivity-guided
        target_ratio: 200      # the planned layers' dense bytes / their estimated coded bytes
        sparsities: [0.5, 0.8, 0.9, 0.95, 0.98, 0.99]
        bits: [6, 5, 4, 3]
      - type: prune
        sparsity: planned
        rounds: 5
        schedule: agp
      - type: share
        bits: planned
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from services.compression.engine import (
    CompressionState,
    PlanContext,
    StepHandler,
    StepResult,
    Targets,
    layer_bits,
    register_handler,
)
from services.compression.planner import Grid, Option, greedy_plan
from services.compression.prune import Layer, sparsity_mask
from services.compression.recipe import (
    CODEBOOK_DTYPES,
    StepConfig,
    check_all,
    check_patterns,
    register_step,
)
from services.compression.share import round_to_fp16, share_weights
from sigdl.core.datasets import Dataset, adapt
from sigdl.core.errors import InputError, short

DEFAULT_SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995]
DEFAULT_BITS = [6, 5, 4, 3, 2]
MAX_GRID = 64  # values in one grid axis


@register_step
@dataclass
class GuidedConfig(StepConfig):
    """Per-layer sparsity and codebook bits from a sensitivity sweep, greedy on bytes saved per
    loss (see the module docstring); later `prune`/`share` steps use them with `planned`."""

    type: ClassVar[str] = "sensitivity-guided"
    layers: list[str] = field(default_factory=lambda: ["*"])  # names/globs/kinds to plan
    sparsities: list[float] = field(default_factory=lambda: list(DEFAULT_SPARSITIES))
    bits: list[int] = field(default_factory=lambda: list(DEFAULT_BITS))
    target_ratio: float | None = None  # stop at this ratio of the planned layers' bytes
    budget: float | None = None  # or: at most this summed sweep-loss increase (nats)
    samples: int = 2048  # training images the sweep scores on (a seeded draw)
    index_bits: int = 8  # relative-index bits the size estimate assumes (the huffman step's)
    codebook: str = "float16"  # the codebook dtype the size estimate assumes (the share step's)
    iterations: int = 10  # Lloyd iterations of the sweep's k-means

    def __post_init__(self) -> None:
        self.layers = check_patterns(self.layers, "layers")
        self.sparsities = _grid(self.sparsities, "sparsities", float, lambda v: 0 <= v < 1,
                                "fractions in [0, 1)")  # fmt: skip
        self.bits = _grid(self.bits, "bits", int, lambda v: 1 <= v <= 16, "integers in 1..16")
        self.bits.reverse()  # most bits (least compressed) first
        if self.target_ratio is None and self.budget is None:
            raise InputError(
                "target_ratio=None, budget=None: expected a target_ratio (> 1), a budget "
                "(nats > 0) or both"
            )
        check_all([
            (self.target_ratio is None or (_number(self.target_ratio) and self.target_ratio > 1),
             "target_ratio", self.target_ratio, "a number > 1"),
            (self.budget is None or (_number(self.budget) and self.budget > 0), "budget",
             self.budget, "a number > 0 (nats)"),
            (_int(self.samples) and 1 <= self.samples <= 1_000_000, "samples", self.samples,
             "an integer in 1..1000000"),
            (_int(self.index_bits) and 1 <= self.index_bits <= 16, "index_bits",
             self.index_bits, "an integer in 1..16"),
            (self.codebook in CODEBOOK_DTYPES, "codebook", self.codebook,
             f"one of {', '.join(CODEBOOK_DTYPES)}"),
            (_int(self.iterations) and 0 <= self.iterations <= 1000, "iterations",
             self.iterations, "an integer in 0..1000"),
        ])  # fmt: skip
        if self.target_ratio is not None:
            self.target_ratio = float(self.target_ratio)
        if self.budget is not None:
            self.budget = float(self.budget)


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _grid(values: object, name: str, kind: type, ok, expected: str) -> list:
    """A non-empty list of numbers, sorted ascending without repeats."""
    if not isinstance(values, list) or not 1 <= len(values) <= MAX_GRID:
        raise InputError(f"{name}={short(values)}: expected a list of 1..{MAX_GRID} {expected}")
    for v in values:
        good = _int(v) if kind is int else _number(v)
        if not good or not ok(v):
            raise InputError(f"{name}: {short(v)} is not one of the {expected} expected")
    return sorted({kind(v) for v in values})


@register_handler
class GuidedHandler(StepHandler):
    config = GuidedConfig
    changes_weights = False  # it only plans: the weights are restored after the sweep

    def plan(self, cfg: GuidedConfig, index: int, ctx: PlanContext, where: str) -> Targets:
        targets = ctx.resolve(cfg.layers, 1, where)
        ctx.refuse_fixed(targets, where, "plans")
        ctx.planned.update(dict.fromkeys(targets, index))
        return targets

    def run(
        self, state: CompressionState, cfg: GuidedConfig, index: int, targets: Targets
    ) -> StepResult:
        pixels, labels = sweep_images(state.data, state, cfg.samples, state.recipe.seed)
        layers = {state.layers[k].name: state.layers[k] for k in targets}
        options = sweep(state.model, layers, pixels, labels, cfg)
        dense = sum(4 * layer.weight.numel() for layer in layers.values())
        target = dense / cfg.target_ratio if cfg.target_ratio is not None else None
        choices = greedy_plan(
            options, cfg.sparsities, cfg.bits, target_bytes=target, budget=cfg.budget
        )
        for name, choice in choices.items():
            state.plan[layers[name].key] = {"sparsity": choice.sparsity, "bits": choice.bits}
        planned = sum(c.estimated_bytes for c in choices.values())
        plan = {name: c.to_dict() for name, c in choices.items()}
        report = {
            "plan": plan,
            "planned_bytes": planned,
            "planned_ratio": dense / max(planned, 1.0),
            "sweep_samples": len(labels),
            "sweep": {name: [[o.sparsity, o.bits, round(o.bytes), o.loss, o.accuracy]
                             for o in grid.values()] for name, grid in options.items()},
        }  # fmt: skip
        return StepResult(report, fields={"plan": plan})


def sweep_images(
    data: Dataset, state: CompressionState, count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` training images drawn with `seed` (pixels (N, C, S, S), labels (N,))."""
    total = len(data.train.labels)
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count]
    chosen = chosen.sort().values
    m = state.meta
    return adapt(data.train.images[chosen], m.channels, m.input_size, m.adapt_mode), (
        data.train.labels[chosen]
    )


@torch.no_grad()
def score(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on the sweep's images."""
    loss, correct = 0.0, 0
    for x, y in zip(pixels.split(512), labels.split(512), strict=True):
        logits = model(x)
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return loss / len(labels), correct / len(labels)


@torch.no_grad()
def sweep(
    model: nn.Module,
    layers: dict[str, Layer],
    pixels: torch.Tensor,
    labels: torch.Tensor,
    cfg: GuidedConfig,
) -> dict[str, Grid]:
    """Every layer alone at every (sparsity, bits) of the grid: its size and its cost."""
    model.eval()
    base_loss, base_acc = score(model, pixels, labels)
    table_bits = 16 if cfg.codebook == "float16" else 32
    out: dict[str, Grid] = {}
    for name, layer in layers.items():
        weight = layer.weight
        saved = weight.detach().clone()
        grid: Grid = {}
        for i, s in enumerate(cfg.sparsities):
            pruned = saved * sparsity_mask(saved, s)
            for j, b in enumerate(cfg.bits):
                codebook, assignments = share_weights(pruned, b, cfg.iterations)
                if cfg.codebook == "float16":
                    round_to_fp16(codebook)
                weight.copy_(codebook[assignments])
                loss, acc = score(model, pixels, labels)
                size = layer_bits(assignments.numpy(), b, table_bits * 2**b, cfg.index_bits, True)
                grid[(i, j)] = Option(s, b, size / 8, loss - base_loss, base_acc - acc)
        weight.copy_(saved)
        out[name] = grid
    return out
