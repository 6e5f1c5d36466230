"""The `share` step: trained weight sharing, a k-means codebook per layer (Han et al., ICLR
2016); the weights stay `codebook[assignments]` through every later retraining and are stored
as `SharedTensor`s."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

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
from services.compression.recipe import ShareConfig
from services.compression.share import CentroidTrainer, SharedWeight, project, share_weights
from sigdl.core.sdc import SharedTensor


@dataclass
class SharedWeights:
    """The weights one share step put on codebooks (`FixedWeights`)."""

    layers: dict[str, Layer]
    shared: dict[str, SharedWeight] = field(default_factory=dict)
    keeps_zeros: bool = True  # pruned weights are assignment 0, codebook[0] == 0.0

    def keys(self) -> list[str]:
        return list(self.shared)

    def hook(self, keys: list[str]) -> Hook:
        return CentroidTrainer(self.layers, {k: self.shared[k] for k in keys})

    def sdc_tensor(self, key: str, index_bits: int) -> SharedTensor:
        s = self.shared[key]
        weight = self.layers[key].weight.detach()
        if s.codebook[0].item() != 0.0 or not torch.equal(
            weight.view(torch.int32), s.dense().view(torch.int32)
        ):
            raise RuntimeError(f"{key}: weight drifted from codebook[assignments]")
        codebook, assignments = s.to_numpy()
        return SharedTensor(codebook, assignments, index_bits, fp16_codebook=s.fp16)

    def symbols(self, key: str) -> tuple[np.ndarray, int, int]:
        s = self.shared[key]
        return s.assignments.numpy(), s.bits, (16 if s.fp16 else 32) * len(s.codebook)


@register_handler
class ShareHandler(StepHandler):
    config = ShareConfig
    fixes_weights = True

    def plan(self, cfg: ShareConfig, index: int, ctx: PlanContext, where: str) -> Targets:
        targets = ctx.resolve(cfg.layers, cfg.bits, where)
        ctx.refuse_fixed(targets, where, "shares", allow=("share",))
        return targets

    def run(
        self, state: CompressionState, cfg: ShareConfig, index: int, targets: Targets
    ) -> StepResult:
        fixed = SharedWeights(state.layers)
        for key, bits in targets.items():
            weight = state.layers[key].weight
            codebook, assignments = share_weights(weight, int(bits), cfg.iterations, cfg.init)
            fp16 = cfg.codebook == "float16"
            shared = SharedWeight(codebook, assignments, int(bits), cfg.centroid_update, fp16)
            project(weight, shared)
            fixed.shared[key] = shared
        # retraining keeps these on their codebooks from the start
        state.fixed.update(dict.fromkeys(fixed.keys(), fixed))
        before = state.score().accuracy
        history = retrain(state, cfg.retrain, index, 0)
        report = {
            "accuracy_before_retrain": before,
            "epochs": len(history),
            "bits": {state.layers[k].name: int(b) for k, b in targets.items()},
        }
        return StepResult(report, fixed)
