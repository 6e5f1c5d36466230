"""The `share` step: trained weight sharing, a k-means codebook per layer (Han et al., ICLR
2016); the weights stay `codebook[assignments]` through every later retraining and are stored
as `SharedTensor`s."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from services.compression.engine import (
    PLANNED,
    CompressionState,
    Hook,
    PlanContext,
    StepHandler,
    StepResult,
    Targets,
    register_handler,
    resolve_layers,
    retrain,
)
from services.compression.prune import Layer
from services.compression.recipe import ShareConfig
from services.compression.share import CentroidTrainer, SharedWeight, project, share_weights
from sigdl.core.sdc import SharedTensor


@dataclass
class SharedWeights:
    """The weights one share step put on codebooks (`FixedWeights`)."""

    layers: dict[str, Layer]  # the engine's (a later step may swap a layer's module)
    shared: dict[str, SharedWeight] = field(default_factory=dict)
    keeps_zeros: bool = True  # pruned weights are assignment 0, codebook[0] == 0.0
    biases: dict[str, ParamRef] = field(default_factory=dict)  # bias key -> the bias

    def keys(self) -> list[str]:
        return list(self.shared)

    def hook(self, keys: list[str]) -> Hook:
        return CentroidTrainer({**self.layers, **self.biases}, {k: self.shared[k] for k in keys})

    def sdc_tensor(self, key: str, index_bits: int) -> SharedTensor:
        s = self.shared[key]
        weight = (self.biases.get(key) or self.layers[key]).weight.detach()
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
        ctx.require_planned(targets, where, "bits")
        if cfg.bias_bits is not None:  # its names and globs must match layers too
            ctx.resolve(cfg.layers, cfg.bias_bits, where)
        return targets

    def run(
        self, state: CompressionState, cfg: ShareConfig, index: int, targets: Targets
    ) -> StepResult:
        fixed = SharedWeights(state.layers)
        fp16 = cfg.codebook == "float16"
        bits = {k: int(state.plan[k]["bits"] if b == PLANNED else b) for k, b in targets.items()}
        for key, b in bits.items():
            fixed.shared[key] = share_param(state.layers[key].weight, b, cfg, fp16)
        bias_bits = {}
        if cfg.bias_bits is not None:
            where = f"steps[{index}] (share)"
            for key, b in resolve_layers(cfg.layers, cfg.bias_bits, state.layers, where).items():
                bias = state.layers[key].module.bias
                if key in bits and bias is not None:
                    bias_key = key.removesuffix("weight") + "bias"
                    fixed.biases[bias_key] = ParamRef(bias)
                    fixed.shared[bias_key] = share_param(bias, int(b), cfg, fp16)
                    bias_bits[state.layers[key].name] = int(b)
        # retraining keeps these on their codebooks from the start
        state.fixed.update(dict.fromkeys(fixed.keys(), fixed))
        before = state.score().accuracy
        history = retrain(state, cfg.retrain, index, 0)
        report = {
            "accuracy_before_retrain": before,
            "epochs": len(history),
            "bits": {state.layers[k].name: b for k, b in bits.items()},
        }
        if bias_bits:
            report["bias_bits"] = bias_bits
        return StepResult(report, fixed)


@dataclass(frozen=True)
class ParamRef:
    """A bias where the centroid trainer expects a `Layer`: it reads and writes `.weight`."""

    weight: nn.Parameter


def share_param(param: torch.Tensor, bits: int, cfg: ShareConfig, fp16: bool) -> SharedWeight:
    """Put `param` on a k-means codebook of 2**bits entries (entry 0 = 0.0) in place."""
    codebook, assignments = share_weights(param, bits, cfg.iterations, cfg.init)
    shared = SharedWeight(codebook, assignments, bits, cfg.centroid_update, fp16)
    project(param, shared)
    return shared
