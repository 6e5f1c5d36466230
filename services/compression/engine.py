"""The compression engine: run a recipe's steps in order on a trained model.

One entry point, one registered handler class per step type (the torchao pattern): a handler's
`plan()` resolves the step's per-layer values before anything runs, its `run()` does the step
and returns the weights it fixed (on a codebook, a grid) as `FixedWeights`, which keep them
there through every later retraining and hand them to the `.sdc` writer as its tensor types.
A new step is one file under `steps/` (its config and its handler) plus its tests.
Retraining goes through `sigdl.core.training.fit`, the trainer every stage uses, with after-step
hooks that keep masks and fixed weights; test accuracy is measured after each step into a
ladder (dense / prune / +share / +huffman, as the paper's tables).

    model, meta = load_checkpoint("runs/lenet5")
    result = compress(model, "deep-compression-lenet-5", load_dataset("mnist"), meta)
    result.ladder[-1]["accuracy"], result.tensors["net.fc1.weight"]  # SharedTensor(...)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from services.compression.prune import Layer, MaskKeeper, find_layers
from services.compression.prune import prune_channels as prune_channels  # benchmarks use it
from services.compression.recipe import (
    LAYER_KINDS,
    PLANNED,
    LayerValue,
    Recipe,
    RetrainConfig,
    StepConfig,
    discover_steps,
    load_recipe,
    pattern_matches,
    value_for,
)
from sigdl.core.checkpoint import ModelMeta
from sigdl.core.datasets import Dataset
from sigdl.core.errors import InputError
from sigdl.core.evaluation import Score, score_torch
from sigdl.core.events import EventFn, ProgressEvent, epoch_event
from sigdl.core.sdc import Int8Tensor, SharedTensor, TensorLike
from sigdl.core.training import EpochResult, fit, teacher_logits

DEFAULT_INDEX_BITS = {"conv": 8, "fc": 5}  # relative-index bits when no huffman step sets them
Hook = Callable[[nn.Module], None]  # a `fit(after_step=[...])` hook
Targets = dict[str, float | int]  # state key -> the step's value for that layer


class FixedWeights(Protocol):
    """Weights one step fixed on a code: kept there through every later retraining, stored in
    the `.sdc` as the step's tensor type. Keys are state-dict keys ("net.fc1.weight")."""

    keeps_zeros: bool  # its hook keeps pruned entries at 0 itself (masks are not re-applied)

    def keys(self) -> list[str]: ...

    def hook(self, keys: list[str]) -> Hook:
        """The after-step hook that puts these weights (of those it fixed) back on their code."""
        ...

    def sdc_tensor(self, key: str, index_bits: int) -> TensorLike:
        """The weight as the .sdc writer stores it, checked to be exactly the model's weight."""
        ...

    def symbols(self, key: str) -> tuple[np.ndarray, int, int] | None:
        """(stored symbols, bits per symbol, table bits) for the size estimate, or None to
        count the weight's float32 bits."""
        ...


@dataclass
class StepResult:
    """What one step's `run()` returns."""

    report: dict = field(default_factory=dict)  # the step's ladder row, beyond the accuracy
    fixed: FixedWeights | None = None  # the weights it fixed on a code, if any
    fields: dict = field(default_factory=dict)  # report.json fields the step owns ("int8")


@dataclass
class CompressionState:
    """What the handlers read and change while a recipe runs."""

    model: nn.Module
    meta: ModelMeta
    data: Dataset
    recipe: Recipe
    layers: dict[str, Layer]  # every conv/linear weight, by state-dict key
    emit: EventFn
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> keep-mask (bool)
    fixed: dict[str, FixedWeights] = field(default_factory=dict)  # key -> the step's weights
    index_bits: dict[str, int] = field(default_factory=dict)  # key -> sparse index bits
    huffman: bool = False  # whether the writer Huffman-codes the index streams
    raw_float16: bool = False  # whether unfixed float tensors are float16 values (stored so)
    fields: dict = field(default_factory=dict)  # report.json fields the steps own
    baseline: float = 0.0  # dense test accuracy
    dense_parameters: int = 0  # parameters before any step: what every ratio divides
    teacher: torch.Tensor | None = None  # the dense model's logits on the train split (N, K),
    # when a retraining distills from it
    pre_hooks: list[Hook] = field(default_factory=list)  # run after each optimizer step,
    # before the masks are re-applied (a splicing prune step's shadow weights)
    plan: dict[str, dict] = field(default_factory=dict)  # key -> a planner step's choices
    # for that layer ({"sparsity", "bits"}), read by the later steps whose value is `planned`

    def score(self) -> Score:
        m = self.meta
        return score_torch(self.model, self.data.test, m.channels, m.input_size, m.adapt_mode)

    def hooks(self) -> list[Hook]:
        """Masks first (but not where a fixed weight keeps its own zeros), then each step's
        fixed weights; every hook touches only its own weights, so their order is free."""
        groups: dict[int, tuple[FixedWeights, list[str]]] = {}
        for key, owner in self.fixed.items():
            groups.setdefault(id(owner), (owner, []))[1].append(key)
        own_zeros = {k for k, owner in self.fixed.items() if owner.keeps_zeros}
        plain = {k: m for k, m in self.masks.items() if k not in own_zeros}
        fixed = [o.hook(keys) for o, keys in groups.values()]
        return [*self.pre_hooks, MaskKeeper(self.layers, plain), *fixed]


@dataclass
class PlanContext:
    """What `plan()` sees: the model's layers and what the recipe's earlier steps will do."""

    layers: dict[str, Layer]
    model_name: str
    fixed_by: dict[str, tuple[int, str]] = field(default_factory=dict)  # key -> (step, type)
    changed_by: int | None = None  # the first step that changes weight values
    planned: dict[str, int] = field(default_factory=dict)  # key -> the step that plans it

    def require_planned(self, targets: Targets, where: str, what: str) -> None:
        """A `planned` value needs a planner step before it that plans every such layer."""
        for key, value in targets.items():
            if value == PLANNED and key not in self.planned:
                raise InputError(
                    f"{where}: {what} 'planned' for layer {self.layers[key].name!r}, but no "
                    "sensitivity-guided step before it plans that layer"
                )

    def resolve(self, patterns: list[str], value: LayerValue, where: str) -> Targets:
        return resolve_layers(patterns, value, self.layers, where, self.model_name)

    def refuse_fixed(
        self, targets: Targets, where: str, verb: str, allow: tuple[str, ...] = ()
    ) -> None:
        """A weight fixed on a codebook or grid may not be moved by a later step (except by
        steps of the types in `allow`), refused before anything runs."""
        for key in targets:
            by = self.fixed_by.get(key)
            if by is not None and by[1] not in allow:
                raise InputError(
                    f"{where}: {verb} layer {self.layers[key].name!r}, already fixed on a "
                    f"codebook or grid by steps[{by[0]}]; prune first, then share or quantize once"
                )


class StepHandler:
    """One step type: subclass, set `config`, decorate with `register_handler`, implement
    `plan()` (the per-layer values, checked before anything runs) and `run()`."""

    config: ClassVar[type[StepConfig]]
    changes_weights: ClassVar[bool] = True  # later shape-changing steps are refused after it
    fixes_weights: ClassVar[bool] = False  # its targets are fixed for the steps after it

    def plan(self, cfg: Any, index: int, ctx: PlanContext, where: str) -> Targets:
        return {}

    def run(self, state: CompressionState, cfg: Any, index: int, targets: Targets) -> StepResult:
        raise NotImplementedError


HANDLERS: dict[type[StepConfig], StepHandler] = {}


def register_handler(cls: type[StepHandler]) -> type[StepHandler]:
    """Register the handler of the step config `cls.config` (torchao's handler registry)."""
    HANDLERS[cls.config] = cls()
    return cls


def handlers() -> dict[type[StepConfig], StepHandler]:
    """Every registered handler; importing `steps/` registers them."""
    discover_steps()
    return HANDLERS


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


@dataclass
class CompressionResult:
    """What a recipe produced. Tensors are keyed by state-dict key ("net.fc1.weight")."""

    model: nn.Module  # the compressed PixelModel, in eval mode
    tensors: dict[str, TensorLike]  # every state_dict entry as the .sdc writer stores it
    masks: dict[str, torch.Tensor]  # key -> keep-mask (bool, the weight's shape)
    index_bits: dict[str, int]  # key -> bits per sparse relative index, every conv/fc weight
    huffman: bool  # whether the writer should Huffman-code indices
    ladder: list[dict]  # one row per step, the dense model first
    recipe: Recipe
    raw_float16: bool = False  # whether unfixed float tensors are float16 values (stored so)
    fields: dict = field(default_factory=dict)  # report.json fields the steps own: "resized"
    # (modules a structured step reshaped: rebuild the zoo model, then
    # `checkpoint.resize_to_state_dict`), "int8" (the quantize step's activation settings)

    @property
    def shared(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """key -> (codebook f32 (K,), assignments) of every shared weight."""
        return {k: (t.codebook, t.assignments) for k, t in self._of(SharedTensor).items()}

    @property
    def bits(self) -> dict[str, int]:
        """key -> codebook index bits of every shared weight."""
        return {k: t.codebook.size.bit_length() - 1 for k, t in self._of(SharedTensor).items()}

    @property
    def fp16_codebooks(self) -> set[str]:
        """Keys whose codebooks are exact in float16 (stored so, losslessly)."""
        return {k for k, t in self._of(SharedTensor).items() if t.fp16_codebook}

    @property
    def quantized(self) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
        """key -> (scale (C_out,) float32, levels int8, bits): the weight is scale[c] * q."""
        return {k: (t.scale, t.q, t.bits) for k, t in self._of(Int8Tensor).items()}

    @property
    def resized(self) -> list[str]:
        return self.fields.get("resized", [])

    @property
    def int8(self) -> dict | None:
        return self.fields.get("int8")

    def _of(self, kind: type) -> dict:
        return {k: t for k, t in self.tensors.items() if isinstance(t, kind)}

    def to_dict(self) -> dict:
        """JSON-ready summary for report.json (no tensors)."""
        return {
            "recipe": self.recipe.to_dict(),
            "recipe_digest": self.recipe.digest(),
            "huffman": self.huffman,
            "index_bits": self.index_bits,
            "bits": self.bits,
            "fp16_codebooks": sorted(self.fp16_codebooks),
            "resized": self.resized,
            "weight_bits": {k: bits for k, (_, _, bits) in self.quantized.items()},
            "int8": self.int8,
            **self.fields,
            "ladder": self.ladder,
        }


def compress(
    model: nn.Module,
    recipe: Recipe | str | Path,
    data: Dataset,
    meta: ModelMeta,
    on_event: EventFn | None = None,
) -> CompressionResult:
    """Run `recipe` on `model` (a PixelModel, changed in place) with `data`'s train split for
    retraining and its test split for the ladder. Deterministic under the recipe's seed."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    layers = find_layers(model)
    plan = plan_recipe(recipe, layers, meta.model)
    emit = on_event or (lambda event: None)
    state = CompressionState(model, meta, data, recipe, layers, emit)
    torch.manual_seed(recipe.seed)
    model.eval()
    started = time.perf_counter()
    dense = state.score()
    state.baseline = dense.accuracy
    if uses_distill(recipe):  # the dense model teaches every distilling retraining
        state.teacher = teacher_logits(
            model, data.train, meta.channels, meta.input_size, meta.adapt_mode
        )
    state.dense_parameters = sum(p.numel() for p in _net(model).parameters())
    ladder = [_ladder_row(state, "dense", -1, dense, started)]
    emit(ProgressEvent.of("ladder", len(ladder) - 1, len(recipe.steps), **ladder[-1]))
    for index, (step, targets) in enumerate(zip(recipe.steps, plan, strict=True)):
        began = time.perf_counter()
        emit(ProgressEvent.of("step", index, len(recipe.steps), type=step.type))
        done = HANDLERS[type(step)].run(state, step, index, targets)
        if done.fixed is not None:
            state.fixed.update(dict.fromkeys(done.fixed.keys(), done.fixed))
        state.fields.update(done.fields)
        model.eval()
        row = _ladder_row(state, step.type, index, state.score(), began)
        ladder.append({**row, **done.report})
        emit(ProgressEvent.of("ladder", len(ladder) - 1, len(recipe.steps), **ladder[-1]))
    for key, layer in layers.items():
        state.index_bits.setdefault(key, DEFAULT_INDEX_BITS[layer.kind])
    return CompressionResult(
        model=model,
        tensors=sdc_tensors(state),
        masks=dict(state.masks),
        index_bits=dict(state.index_bits),
        huffman=state.huffman,
        ladder=ladder,
        recipe=recipe,
        raw_float16=state.raw_float16,
        fields=dict(state.fields),
    )


def sdc_tensors(state: CompressionState) -> dict[str, TensorLike]:
    """Every state_dict entry as the .sdc writer stores it: fixed weights as their step's
    tensor type, everything else (biases, buffers, plain weights) raw."""
    out: dict[str, TensorLike] = {}
    for key, value in state.model.state_dict().items():
        owner = state.fixed.get(key)
        if owner is None:
            out[key] = value.detach().cpu()
        else:  # a fixed bias has no index bits of its own: it is stored dense
            out[key] = owner.sdc_tensor(key, state.index_bits.get(key, 8))
    return out


def uses_distill(recipe: Recipe) -> bool:
    """Whether any step's retraining distills from the dense model."""
    return any(getattr(getattr(s, "retrain", None), "distill", None) for s in recipe.steps)


def plan_recipe(
    recipe: Recipe, layers: dict[str, Layer], model_name: str = "the model"
) -> list[Targets]:
    """Resolve every step's per-layer values against the model before anything runs: unknown
    layer names, steps without a handler, a prune after a share of the same layer and a
    structured step after pruning all fail before any work is done."""
    registry, ctx, plan = handlers(), PlanContext(layers, model_name), []
    for index, step in enumerate(recipe.steps):
        where = f"recipe {recipe.name!r} steps[{index}] ({step.type})"
        handler = registry.get(type(step))
        if handler is None:
            names = ", ".join(sorted(c.type for c in registry))
            raise InputError(f"{where}: no handler for {step.type!r}; registered: {names}")
        targets = handler.plan(step, index, ctx, where)
        if handler.fixes_weights:
            ctx.fixed_by.update(dict.fromkeys(targets, (index, step.type)))
        if handler.changes_weights and ctx.changed_by is None:
            ctx.changed_by = index
        plan.append(targets)
    return plan


def resolve_layers(
    patterns: list[str],
    value: LayerValue,
    layers: dict[str, Layer],
    where: str,
    model_name: str = "the model",
) -> Targets:
    """{state key: value} for the layers `patterns` select and `value` covers."""
    names = ", ".join(layer.name for layer in layers.values())
    keys = list(value) if isinstance(value, dict) else []
    for pattern in [*patterns, *keys]:
        special = pattern == "*" or pattern in LAYER_KINDS
        hits = any(pattern_matches(pattern, x.name, x.kind) for x in layers.values())
        if not special and not hits:
            raise InputError(
                f"{where}: {pattern!r} matches no layer of {model_name!r} (layers: {names})"
            )
    out = {}
    for key, layer in layers.items():
        if any(pattern_matches(p, layer.name, layer.kind) for p in patterns):
            v = value_for(value, layer.name, layer.kind)
            if v is not None:
                out[key] = v
    return out


# ---------------------------------------------------------------------------------------------
# Retraining, checks and the ladder
# ---------------------------------------------------------------------------------------------


def end_round(
    state: CompressionState, cfg, index: int, r: int, sparsity: dict, before: float,
    history: list,
) -> dict:  # fmt: skip
    """A prune round's record (sparsity per layer name, accuracy before and after its
    retraining, epochs), emitted as a `round` event; the pruning steps keep the list."""
    row = {
        "round": r,
        "sparsity": sparsity,
        "accuracy_before_retrain": before,
        "accuracy": state.score().accuracy if history else before,
        "epochs": len(history),
    }
    state.emit(ProgressEvent.of("round", r, cfg.rounds, index=index, type=cfg.type, **row))
    return row


def retrain(state: CompressionState, cfg: RetrainConfig, index: int, round_: int) -> list:
    """Retrain with the one trainer, hooks keeping masks and codebooks; early stop at the
    target accuracy (absolute, or the dense accuracy minus `target_drop`)."""
    if cfg.epochs == 0:
        return []
    target = cfg.target_accuracy
    if cfg.target_drop is not None:
        target = state.baseline - cfg.target_drop if state.baseline > cfg.target_drop else None
    meta = state.meta
    train_cfg = cfg.train_config(
        model=meta.model,
        dataset=meta.dataset or state.data.name,
        seed=state.recipe.seed * 1_000 + index * 10 + round_,
        adapt_mode=meta.adapt_mode,
        target_accuracy=target,
    )

    def on_epoch(result: EpochResult) -> None:
        state.emit(epoch_event({**result.to_row(), "index": index, "round": round_}, cfg.epochs))

    history = fit(
        state.model,
        state.data.train,
        train_cfg,
        meta.channels,
        meta.input_size,
        evaluate=state.score if target is not None else None,
        after_step=state.hooks(),
        on_epoch=on_epoch,
        teacher=state.teacher,
    )
    state.model.eval()
    return history


def _net(model: nn.Module) -> nn.Module:
    return model.net if hasattr(model, "net") else model


def _ladder_row(state: CompressionState, step: str, index: int, score: Score, began: float) -> dict:
    weights = sum(x.weight.numel() for x in state.layers.values())
    nonzero_weights = sum(int((x.weight != 0).sum()) for x in state.layers.values())
    net = _net(state.model)
    parameters = sum(p.numel() for p in net.parameters())
    bits, per_layer = estimate_bits(state)
    return {
        "step": step,
        "index": index,
        "accuracy": score.accuracy,
        "loss": score.loss,
        "parameters": parameters,
        "nonzeros": sum(int((p != 0).sum()) for p in net.parameters()),
        "weight_sparsity": 1 - nonzero_weights / max(weights, 1),
        "estimated_bits": bits,
        "estimated_ratio": 32 * (state.dense_parameters or parameters) / max(bits, 1),
        "seconds": time.perf_counter() - began,
        "layers": per_layer,
    }


# ---------------------------------------------------------------------------------------------
# Size estimate (the .sdc file on disk is the real number)
# ---------------------------------------------------------------------------------------------


def relative_index_symbols(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, int]:
    """Deep Compression's relative indexing: the gaps between nonzeros, each stored in
    `index_bits` as 1..2**index_bits; a longer gap spends filler entries of 2**index_bits.
    Returns (the gap of every real entry after its fillers, the number of fillers)."""
    span = 2**index_bits
    gaps = np.diff(np.concatenate([[-1], positions]))  # (nnz,) >= 1
    fillers = (gaps - 1) // span
    return gaps - fillers * span, int(fillers.sum())


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon bound on the coded size of a stream with these symbol counts (Huffman is
    within one bit per symbol of it)."""
    counts = counts[counts > 0].astype(np.float64)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


def layer_bits(
    values: np.ndarray, value_bits: int, codebook_bits: int, index_bits: int, huffman: bool
) -> int:
    """Estimated bits for one weight: `values` are codebook indices (shared) or float32 bits,
    dense or sparse (relative indices), whichever is smaller."""
    flat = values.ravel()
    positions = np.flatnonzero(flat)
    last, fillers = relative_index_symbols(positions, index_bits)
    entries = len(positions) + fillers
    if huffman and codebook_bits:
        symbols = np.concatenate([flat[positions], np.zeros(fillers, dtype=flat.dtype)])
        value_cost = entropy_bits(np.unique(symbols, return_counts=True)[1])
        dense_cost = entropy_bits(np.unique(flat, return_counts=True)[1])
    else:
        value_cost, dense_cost = entries * value_bits, flat.size * value_bits
    if huffman:
        gap_counts = np.unique(np.concatenate([last, np.full(fillers, 2**index_bits)]),
                               return_counts=True)[1]  # fmt: skip
        index_cost = entropy_bits(gap_counts)
    else:
        index_cost = entries * index_bits
    return math.ceil(min(value_cost + index_cost, dense_cost)) + codebook_bits


def estimate_bits(state: CompressionState) -> tuple[int, dict[str, dict]]:
    """(total bits, per-layer details) of the model as it would be stored now: fixed layers
    as their symbols (shared: codebook indices), pruned layers sparse with relative indices,
    the rest as float32."""
    per_layer, total = {}, 0
    for key, layer in state.layers.items():
        ib = state.index_bits.get(key, DEFAULT_INDEX_BITS[layer.kind])
        owner = state.fixed.get(key)
        symbols = owner.symbols(key) if owner is not None else None
        if symbols is not None:
            values, vbits, cbits = symbols
        else:
            values, vbits, cbits = layer.weight.detach().numpy().view(np.int32), 32, 0  # raw bits
        bits = layer_bits(values, vbits, cbits, ib, state.huffman)
        per_layer[key] = {
            "name": layer.name,
            "kind": layer.kind,
            "weights": int(values.size),
            "nonzeros": int(np.count_nonzero(values)),
            "value_bits": vbits,
            "index_bits": ib,
            "estimated_bits": bits,
        }
        total += bits
    prefix = "net." if hasattr(state.model, "net") else ""  # not the PixelModel's mean/std
    for key, tensor in state.model.state_dict().items():
        if key not in state.layers and tensor.is_floating_point() and key.startswith(prefix):
            owner = state.fixed.get(key)  # a bias a share step put on a codebook
            symbols = owner.symbols(key) if owner is not None else None
            if symbols is None:
                total += 32 * tensor.numel()
            else:
                total += layer_bits(*symbols, 8, state.huffman)
    return total, per_layer
