"""The `huffman` step: a flag for the `.sdc` writer (Huffman-code the index streams, relative
indices in `index_bits`) and optionally float16 storage of the tensors no step fixed."""

from __future__ import annotations

import torch

from services.compression.engine import (
    CompressionState,
    PlanContext,
    StepHandler,
    StepResult,
    Targets,
    register_handler,
)
from services.compression.recipe import HuffmanConfig


@register_handler
class HuffmanHandler(StepHandler):
    config = HuffmanConfig
    changes_weights = False  # a later structured step may still run (it rarely should)

    def plan(self, cfg: HuffmanConfig, index: int, ctx: PlanContext, where: str) -> Targets:
        return ctx.resolve(["*"], cfg.index_bits, where)

    def run(
        self, state: CompressionState, cfg: HuffmanConfig, index: int, targets: Targets
    ) -> StepResult:
        state.huffman = True
        state.index_bits.update({k: int(v) for k, v in targets.items()})
        if cfg.raw_dtype == "float16":
            state.raw_float16 = True
            with torch.no_grad():
                for key, tensor in state.model.state_dict().items():
                    if key not in state.fixed and tensor.is_floating_point():
                        tensor.copy_(tensor.half().float())  # state_dict tensors share storage
        return StepResult()
