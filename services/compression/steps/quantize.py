"""The `quantize` step: fixed-point weights on per-channel grids, 8-bit activations calibrated
on training images, optionally quantization-aware training; the weights are stored as
`Int8Tensor`s and the stage writes `model.int8.onnx` from the `int8` settings."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from services.compression.engine import (
    CompressionState,
    Hook,
    PlanContext,
    StepHandler,
    StepResult,
    Targets,
    register_handler,
    retrain,
)
from services.compression.prune import Layer
from services.compression.quantize import (
    FakeQuant,
    GridKeeper,
    dequantize_weight,
    observe_input_ranges,
    project_to_grid,
    quantize_weight,
    weight_scale,
)
from services.compression.recipe import QuantizeConfig
from sigdl.core.checkpoint import ModelMeta
from sigdl.core.datasets import Dataset, adapt
from sigdl.core.sdc import Int8Tensor


@dataclass
class GridWeights:
    """The weights one quantize step put on fixed grids (`FixedWeights`)."""

    layers: dict[str, Layer]
    grids: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)  # key ->
    # (scale (C_out,), bits)
    keeps_zeros: bool = False  # a pruned weight nudged by the optimizer could round off 0

    def keys(self) -> list[str]:
        return list(self.grids)

    def hook(self, keys: list[str]) -> Hook:
        return GridKeeper({k: (self.layers[k].weight, *self.grids[k]) for k in keys})

    def sdc_tensor(self, key: str, index_bits: int) -> Int8Tensor:
        scale, bits = self.grids[key]
        weight = self.layers[key].weight.detach()
        q = quantize_weight(weight, scale, bits)
        if not torch.equal(dequantize_weight(q, scale), weight):
            raise RuntimeError(f"{key}: weight drifted off its {bits}-bit grid")
        return Int8Tensor(scale.numpy(), q.numpy(), bits)

    def symbols(self, key: str) -> None:
        return None  # the ladder's estimate counts a quantized weight's float32 bits


@register_handler
class QuantizeHandler(StepHandler):
    config = QuantizeConfig
    fixes_weights = True

    def plan(self, cfg: QuantizeConfig, index: int, ctx: PlanContext, where: str) -> Targets:
        targets = ctx.resolve(cfg.layers, cfg.weight_bits, where)
        ctx.refuse_fixed(targets, where, "quantizes")
        return targets

    def run(
        self, state: CompressionState, cfg: QuantizeConfig, index: int, targets: Targets
    ) -> StepResult:
        seed, count = state.recipe.seed, cfg.calibration_samples
        pixels = calibration_pixels(state.data, state.meta, count, seed)
        modules: dict[str, nn.Module] = {key: state.layers[key].module for key in targets}
        ranges = observe_input_ranges(state.model, modules, pixels.split(64))
        bits = {key: int(b) for key, b in targets.items()}
        fixed = GridWeights(state.layers)
        with FakeQuant(modules, ranges, bits, cfg.activations):
            before = state.score().accuracy  # weights and activations fake-quantized
            history = retrain(state, cfg.retrain, index, 0)  # QAT when epochs > 0
            for key, b in bits.items():
                weight = state.layers[key].weight
                scale = weight_scale(weight, b)
                project_to_grid(weight, scale, b)
                fixed.grids[key] = (scale, b)
            after = state.score().accuracy
        int8 = {
            "activations": cfg.activations,
            "method": cfg.method,
            "calibration_samples": len(pixels),
        }
        report = {
            "accuracy_before_retrain": before,
            "accuracy_fake_quant": after,  # torch emulation of int8 activations; the stage
            # measures the int8 ONNX model with ONNX Runtime
            "epochs": len(history),
            "weight_bits": {state.layers[k].name: b for k, b in bits.items()},
            "input_ranges": {state.layers[k].name: list(r) for k, r in ranges.items()},
        }
        return StepResult(report, fixed, fields={"int8": int8})


def calibration_pixels(data: Dataset, meta: ModelMeta, count: int, seed: int) -> torch.Tensor:
    """`count` training images, drawn with `seed`, as the model's pixels (N, C, S, S)."""
    total = len(data.train.labels)
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count]
    images = data.train.images[chosen.sort().values]
    return adapt(images, meta.channels, meta.input_size, meta.adapt_mode)
