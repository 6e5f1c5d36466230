"""The compression engine: run a recipe's steps in order on a trained model.

One entry point, one registered handler per step type (the torchao pattern). Retraining after
prune rounds and share steps goes through `sigdl.core.training.fit`, the trainer every stage uses,
with after-step hooks that keep masks and shared weights; test accuracy is measured after each
step into a ladder (dense / prune / +share / +huffman, as the paper's tables).

    model, meta = load_checkpoint("runs/lenet5")
    result = compress(model, "deep-compression-lenet-5", load_dataset("mnist"), meta)
    result.ladder[-1]["accuracy"], result.shared["net.fc1.weight"]  # (codebook, assignments)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.compression.prune import (
    Layer,
    MaskKeeper,
    agp_sparsity,
    apply_mask,
    channel_groups,
    channel_scores,
    channels_to_keep,
    find_layers,
    linear_sparsity,
    magnitude_mask,
    magnitude_threshold,
    remove_channels,
    sparsity_at_threshold,
    sparsity_mask,
)
from services.compression.quantize import (
    FakeQuant,
    GridKeeper,
    dequantize_weight,
    observe_input_ranges,
    project_to_grid,
    quantize_weight,
    weight_scale,
)
from services.compression.recipe import (
    LAYER_KINDS,
    HuffmanConfig,
    LayerValue,
    PruneConfig,
    QuantizeConfig,
    Recipe,
    RetrainConfig,
    ShareConfig,
    StepConfig,
    StructuredConfig,
    load_recipe,
    pattern_matches,
    value_for,
)
from services.compression.share import CentroidTrainer, SharedWeight, project, share_weights
from sigdl.core.checkpoint import ModelMeta
from sigdl.core.datasets import Dataset, adapt
from sigdl.core.errors import InputError
from sigdl.core.evaluation import Score, score_torch
from sigdl.core.events import EventFn, ProgressEvent, epoch_event
from sigdl.core.training import EpochResult, TrainConfig, fit

DEFAULT_INDEX_BITS = {"conv": 8, "fc": 5}  # relative-index bits when no huffman step sets them


@dataclass
class CompressionResult:
    """What a recipe produced. Tensors are keyed by state-dict key ("net.fc1.weight")."""

    model: nn.Module  # the compressed PixelModel, in eval mode
    shared: dict[str, tuple[np.ndarray, np.ndarray]]  # key -> (codebook f32 (K,), assignments)
    masks: dict[str, torch.Tensor]  # key -> keep-mask (bool, the weight's shape)
    index_bits: dict[str, int]  # key -> bits per sparse relative index, every conv/fc weight
    huffman: bool  # whether the writer should Huffman-code indices
    ladder: list[dict]  # one row per step, the dense model first
    recipe: Recipe
    bits: dict[str, int] = field(default_factory=dict)  # key -> codebook index bits (shared)
    raw_float16: bool = False  # whether unshared float tensors are float16 values (stored so)
    fp16_codebooks: set[str] = field(default_factory=set)  # keys whose codebooks are exact
    # in float16 (write them with SharedTensor(fp16_codebook=True), losslessly)
    resized: list[str] = field(default_factory=list)  # modules whose shapes a structured step
    # changed: rebuild the zoo model, then `checkpoint.resize_to_state_dict`, before loading weights
    quantized: dict[str, tuple[np.ndarray, np.ndarray, int]] = field(default_factory=dict)
    # key -> (scale (C_out,) float32, levels int8, bits): the weight is exactly scale[c] * q
    int8: dict | None = None  # the quantize step's activation settings, for the int8 ONNX model

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
            "ladder": self.ladder,
        }


@dataclass
class CompressionState:
    """What the handlers read and change while a recipe runs."""

    model: nn.Module
    meta: ModelMeta
    data: Dataset
    recipe: Recipe
    layers: dict[str, Layer]  # every conv/linear weight, by state-dict key
    emit: EventFn
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    shared: dict[str, SharedWeight] = field(default_factory=dict)
    index_bits: dict[str, int] = field(default_factory=dict)
    huffman: bool = False
    raw_float16: bool = False
    baseline: float = 0.0  # dense test accuracy
    dense_parameters: int = 0  # parameters before any step: what every ratio divides
    resized: list[str] = field(default_factory=list)  # modules a structured step reshaped
    grids: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)  # quantized
    # weights: key -> (scale (C_out,), bits)
    int8: dict | None = None

    def score(self) -> Score:
        m = self.meta
        return score_torch(self.model, self.data.test, m.channels, m.input_size, m.adapt_mode)

    def hooks(self) -> list[Callable[[nn.Module], None]]:
        plain = {k: v for k, v in self.masks.items() if k not in self.shared}
        grids = {k: (self.layers[k].weight, s, b) for k, (s, b) in self.grids.items()}
        return [
            MaskKeeper(self.layers, plain),
            CentroidTrainer(self.layers, self.shared),
            GridKeeper(grids),
        ]


Handler = Callable[[CompressionState, StepConfig, int, dict[str, float | int]], dict]
HANDLERS: dict[type[StepConfig], Handler] = {}


def register_handler(config_cls: type[StepConfig]) -> Callable[[Handler], Handler]:
    """Register the function that runs steps of `config_cls` (torchao's handler registry)."""

    def wrap(handler: Handler) -> Handler:
        HANDLERS[config_cls] = handler
        return handler

    return wrap


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


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
    state.dense_parameters = sum(p.numel() for p in _net(model).parameters())
    ladder = [_ladder_row(state, "dense", -1, dense, started)]
    emit(ProgressEvent.of("ladder", len(ladder) - 1, len(recipe.steps), **ladder[-1]))
    for index, (step, targets) in enumerate(zip(recipe.steps, plan, strict=True)):
        began = time.perf_counter()
        emit(ProgressEvent.of("step", index, len(recipe.steps), type=step.type))
        extra = HANDLERS[type(step)](state, step, index, targets)
        model.eval()
        ladder.append({**_ladder_row(state, step.type, index, state.score(), began), **extra})
        emit(ProgressEvent.of("ladder", len(ladder) - 1, len(recipe.steps), **ladder[-1]))
    _check_shared(state)
    for key, layer in layers.items():
        state.index_bits.setdefault(key, DEFAULT_INDEX_BITS[layer.kind])
    return CompressionResult(
        model=model,
        shared={k: s.to_numpy() for k, s in state.shared.items()},
        masks=dict(state.masks),
        index_bits=dict(state.index_bits),
        huffman=state.huffman,
        raw_float16=state.raw_float16,
        ladder=ladder,
        recipe=recipe,
        bits={k: s.bits for k, s in state.shared.items()},
        fp16_codebooks={k for k, s in state.shared.items() if s.fp16},
        resized=list(state.resized),
        quantized={k: _grid_arrays(state, k) for k in state.grids},
        int8=state.int8,
    )


def plan_recipe(
    recipe: Recipe, layers: dict[str, Layer], model_name: str = "the model"
) -> list[dict[str, float | int]]:
    """Resolve every step's per-layer values against the model before anything runs: unknown
    layer names, steps without a handler, a prune after a share of the same layer and a
    structured step after pruning all fail before any work is done."""
    plan, shared_by, masked_by, quantized_by = [], {}, None, {}
    for index, step in enumerate(recipe.steps):
        where = f"recipe {recipe.name!r} steps[{index}] ({step.type})"
        if type(step) not in HANDLERS:
            names = ", ".join(sorted(c.type for c in HANDLERS))
            raise InputError(f"{where}: no handler for {step.type!r}; registered: {names}")
        if isinstance(step, StructuredConfig):
            if masked_by is not None:
                raise InputError(
                    f"{where}: changes layer shapes after steps[{masked_by}] pruned or shared; "
                    "put structured steps first"
                )
            targets = resolve_layers(step.layers, step.fraction, layers, where, model_name)
        elif isinstance(step, PruneConfig):
            value = step.quality if step.quality is not None else step.sparsity
            targets = resolve_layers(step.layers, value, layers, where, model_name)
            _refuse_fixed(targets, {**shared_by, **quantized_by}, layers, where, "prunes")
        elif isinstance(step, ShareConfig):
            targets = resolve_layers(step.layers, step.bits, layers, where, model_name)
            _refuse_fixed(targets, quantized_by, layers, where, "shares")
            shared_by.update(dict.fromkeys(targets, index))
        elif isinstance(step, QuantizeConfig):
            targets = resolve_layers(step.layers, step.weight_bits, layers, where, model_name)
            _refuse_fixed(targets, {**shared_by, **quantized_by}, layers, where, "quantizes")
            quantized_by.update(dict.fromkeys(targets, index))
        elif isinstance(step, HuffmanConfig):
            targets = resolve_layers(["*"], step.index_bits, layers, where, model_name)
        else:
            targets = {}
        if isinstance(step, PruneConfig | ShareConfig | QuantizeConfig) and masked_by is None:
            masked_by = index
        plan.append(targets)
    return plan


def _refuse_fixed(
    targets: dict, fixed_by: dict[str, int], layers: dict[str, Layer], where: str, verb: str
) -> None:
    """A shared or quantized weight is fixed on its codebook or grid: later steps that would
    move it are refused before anything runs."""
    for key in targets:
        if key in fixed_by:
            raise InputError(
                f"{where}: {verb} layer {layers[key].name!r}, already fixed on a codebook or "
                f"grid by steps[{fixed_by[key]}]; prune first, then share or quantize once"
            )


def resolve_layers(
    patterns: list[str],
    value: LayerValue,
    layers: dict[str, Layer],
    where: str,
    model_name: str = "the model",
) -> dict[str, float | int]:
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
# Handlers
# ---------------------------------------------------------------------------------------------


@register_handler(PruneConfig)
def _prune(state: CompressionState, cfg: PruneConfig, index: int, targets: dict) -> dict:
    weights = {k: state.layers[k].weight for k in targets}
    start = {k: float((w == 0).float().mean()) for k, w in weights.items()}
    threshold = (
        {k: magnitude_threshold(w, targets[k]) for k, w in weights.items()}
        if cfg.quality is not None
        else {}
    )
    final = (
        {k: sparsity_at_threshold(w, threshold[k]) for k, w in weights.items()}
        if cfg.quality is not None
        else {k: float(v) for k, v in targets.items()}
    )
    ramp = agp_sparsity if cfg.schedule == "agp" else linear_sparsity
    rounds = []
    for r in range(1, cfg.rounds + 1):
        with torch.no_grad():
            for key, w in weights.items():
                if cfg.quality is not None and cfg.schedule == "linear":
                    keep = magnitude_mask(w, threshold[key] * r / cfg.rounds)
                else:
                    keep = sparsity_mask(w, max(ramp(start[key], final[key], r, cfg.rounds), 0))
                old = state.masks.get(key)
                state.masks[key] = keep if old is None else keep & old
                apply_mask(w, state.masks[key])
        before = state.score().accuracy
        history = retrain(state, cfg.retrain, index, r)
        rounds.append({
            "round": r,
            "sparsity": {state.layers[k].name: 1 - float(m.float().mean())
                         for k, m in state.masks.items() if k in weights},
            "accuracy_before_retrain": before,
            "accuracy": state.score().accuracy if history else before,
            "epochs": len(history),
        })  # fmt: skip
        state.emit(
            ProgressEvent.of("round", r, cfg.rounds, index=index, type=cfg.type, **rounds[-1])
        )
    extra: dict = {"rounds": rounds}
    if threshold:
        extra["threshold"] = {state.layers[k].name: t for k, t in threshold.items()}
    return extra


@register_handler(StructuredConfig)
def _structured(state: CompressionState, cfg: StructuredConfig, index: int, targets: dict) -> dict:
    named = set(cfg.layers) | (set(cfg.fraction) if isinstance(cfg.fraction, dict) else set())
    fractions = {state.layers[key].name: float(f) for key, f in targets.items()}
    try:
        channels, skipped, changed = prune_channels(
            _net(state.model), fractions, cfg.norm, cfg.multiple, required=named
        )
    except InputError as exc:
        raise InputError(f"steps[{index}] (structured): {exc}") from None
    state.resized.extend(n for n in changed if n not in state.resized)
    before_retrain = state.score().accuracy
    history = retrain(state, cfg.retrain, index, 0)
    return {
        "channels": channels,
        "skipped": skipped,
        "accuracy_before_retrain": before_retrain,
        "epochs": len(history),
    }


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


@register_handler(ShareConfig)
def _share(state: CompressionState, cfg: ShareConfig, index: int, targets: dict) -> dict:
    for key, bits in targets.items():
        weight = state.layers[key].weight
        codebook, assignments = share_weights(weight, int(bits), cfg.iterations, cfg.init)
        fp16 = cfg.codebook == "float16"
        shared = SharedWeight(codebook, assignments, int(bits), cfg.centroid_update, fp16)
        project(weight, shared)
        state.shared[key] = shared
    before = state.score().accuracy
    history = retrain(state, cfg.retrain, index, 0)
    return {
        "accuracy_before_retrain": before,
        "epochs": len(history),
        "bits": {state.layers[k].name: int(b) for k, b in targets.items()},
    }


@register_handler(QuantizeConfig)
def _quantize(state: CompressionState, cfg: QuantizeConfig, index: int, targets: dict) -> dict:
    meta = state.meta
    pixels = calibration_pixels(state.data, meta, cfg.calibration_samples, state.recipe.seed)
    modules = {key: state.layers[key].module for key in targets}
    ranges = observe_input_ranges(state.model, modules, pixels.split(64))
    bits = {key: int(b) for key, b in targets.items()}
    fake = FakeQuant(modules, ranges, bits, cfg.activations)
    with fake:
        before = state.score().accuracy  # weights and activations fake-quantized
        history = retrain(state, cfg.retrain, index, 0)  # QAT when epochs > 0
        for key, b in bits.items():
            weight = state.layers[key].weight
            scale = weight_scale(weight, b)
            project_to_grid(weight, scale, b)
            state.grids[key] = (scale, b)
        after = state.score().accuracy
    state.int8 = {
        "activations": cfg.activations,
        "method": cfg.method,
        "calibration_samples": len(pixels),
    }
    return {
        "accuracy_before_retrain": before,
        "accuracy_fake_quant": after,  # torch emulation of int8 activations; the stage
        # measures the int8 ONNX model with ONNX Runtime
        "epochs": len(history),
        "weight_bits": {state.layers[k].name: b for k, b in bits.items()},
        "input_ranges": {state.layers[k].name: list(r) for k, r in ranges.items()},
    }


def calibration_pixels(data: Dataset, meta: ModelMeta, count: int, seed: int) -> torch.Tensor:
    """`count` training images, drawn with `seed`, as the model's pixels (N, C, S, S)."""
    total = len(data.train.labels)
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count]
    images = data.train.images[chosen.sort().values]
    return adapt(images, meta.channels, meta.input_size, meta.adapt_mode)


@register_handler(HuffmanConfig)
def _huffman(state: CompressionState, cfg: HuffmanConfig, index: int, targets: dict) -> dict:
    state.huffman = True
    state.index_bits.update({k: int(v) for k, v in targets.items()})
    if cfg.raw_dtype == "float16":
        state.raw_float16 = True
        with torch.no_grad():
            for key, tensor in state.model.state_dict().items():
                fixed = key in state.shared or key in state.grids
                if not fixed and tensor.is_floating_point():
                    tensor.copy_(tensor.half().float())  # state_dict tensors share storage
    return {}


# ---------------------------------------------------------------------------------------------
# Retraining, checks and the ladder
# ---------------------------------------------------------------------------------------------


def retrain(state: CompressionState, cfg: RetrainConfig, index: int, round_: int) -> list:
    """Retrain with the one trainer, hooks keeping masks and codebooks; early stop at the
    target accuracy (absolute, or the dense accuracy minus `target_drop`)."""
    if cfg.epochs == 0:
        return []
    target = cfg.target_accuracy
    if cfg.target_drop is not None:
        target = state.baseline - cfg.target_drop if state.baseline > cfg.target_drop else None
    meta = state.meta
    train_cfg = TrainConfig(
        model=meta.model,
        dataset=meta.dataset or state.data.name,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule,
        seed=state.recipe.seed * 1_000 + index * 10 + round_,
        adapt_mode=meta.adapt_mode,
        target_accuracy=target,
        max_train_samples=cfg.max_train_samples,
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
    )
    state.model.eval()
    return history


def _check_shared(state: CompressionState) -> None:
    """The contract with the .sdc writer: each shared weight is codebook[assignments] bitwise."""
    for key, shared in state.shared.items():
        weight = state.layers[key].weight.detach()
        if shared.codebook[0].item() != 0.0 or not torch.equal(
            weight.view(torch.int32), shared.dense().view(torch.int32)
        ):
            raise RuntimeError(f"{key}: weight drifted from codebook[assignments]")


def _grid_arrays(state: CompressionState, key: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(scale, levels, bits) of a quantized weight, checked: the weight must be exactly
    scale[c] * q, the contract with the .sdc writer."""
    scale, bits = state.grids[key]
    weight = state.layers[key].weight.detach()
    q = quantize_weight(weight, scale, bits)
    if not torch.equal(dequantize_weight(q, scale), weight):
        raise RuntimeError(f"{key}: weight drifted off its {bits}-bit grid")
    return scale.numpy().astype(np.float32), q.numpy(), bits


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
    """(total bits, per-layer details) of the model as it would be stored now: shared layers
    as codebook indices, pruned layers sparse with relative indices, the rest as float32."""
    per_layer, total = {}, 0
    for key, layer in state.layers.items():
        ib = state.index_bits.get(key, DEFAULT_INDEX_BITS[layer.kind])
        shared = state.shared.get(key)
        if shared is not None:
            values, vbits = shared.assignments.numpy(), shared.bits
            cbits = (16 if shared.fp16 else 32) * len(shared.codebook)
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
            total += 32 * tensor.numel()
    return total, per_layer
