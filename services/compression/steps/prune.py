"""The `prune` step: magnitude pruning in prune→retrain rounds (Han et al., NeurIPS 2015)."""

from __future__ import annotations

import torch

from services.compression.engine import (
    PLANNED,
    CompressionState,
    PlanContext,
    StepHandler,
    StepResult,
    Targets,
    end_round,
    register_handler,
    retrain,
)
from services.compression.prune import (
    Splicer,
    agp_sparsity,
    apply_mask,
    linear_sparsity,
    magnitude_mask,
    magnitude_threshold,
    sparsity_at_threshold,
    sparsity_mask,
)
from services.compression.recipe import PruneConfig


@register_handler
class PruneHandler(StepHandler):
    config = PruneConfig

    def plan(self, cfg: PruneConfig, index: int, ctx: PlanContext, where: str) -> Targets:
        value = cfg.quality if cfg.quality is not None else cfg.sparsity
        targets = ctx.resolve(cfg.layers, value, where)
        ctx.refuse_fixed(targets, where, "prunes")
        ctx.require_planned(targets, where, "sparsity")
        return targets

    def run(
        self, state: CompressionState, cfg: PruneConfig, index: int, targets: Targets
    ) -> StepResult:
        weights = {k: state.layers[k].weight for k in targets}
        start = {k: float((w == 0).float().mean()) for k, w in weights.items()}
        quality = cfg.quality is not None
        threshold = (
            {k: magnitude_threshold(w, targets[k]) for k, w in weights.items()} if quality else {}
        )
        final = (
            {k: sparsity_at_threshold(w, threshold[k]) for k, w in weights.items()}
            if quality
            else {k: float(state.plan[k]["sparsity"] if v == PLANNED else v)
                  for k, v in targets.items()}
        )  # fmt: skip
        ramp = agp_sparsity if cfg.schedule == "agp" else linear_sparsity
        splicer = Splicer(weights, state.masks) if cfg.splice else None
        rounds = []
        for r in range(1, cfg.rounds + 1):
            with torch.no_grad():
                for key, w in weights.items():
                    source = w if splicer is None else splicer.shadow[key]  # the mask's magnitudes
                    if quality and cfg.schedule == "linear":
                        keep = magnitude_mask(source, threshold[key] * r / cfg.rounds)
                    else:
                        sparsity = max(ramp(start[key], final[key], r, cfg.rounds), 0)
                        keep = sparsity_mask(source, sparsity)
                    old = state.masks.get(key)
                    state.masks[key] = keep if old is None or splicer else keep & old
                    if splicer is not None:  # a spliced weight comes back with its shadow value
                        w.copy_(source)
                    apply_mask(w, state.masks[key])
            before = state.score().accuracy
            state.pre_hooks.extend([splicer] if splicer else [])
            try:
                history = retrain(state, cfg.retrain, index, r)
            finally:
                state.pre_hooks[:] = [h for h in state.pre_hooks if h is not splicer]
            sparsity = {state.layers[k].name: 1 - float(m.float().mean())
                        for k, m in state.masks.items() if k in weights}  # fmt: skip
            rounds.append(end_round(state, cfg, index, r, sparsity, before, history))
        report: dict = {"rounds": rounds}
        if threshold:
            report["threshold"] = {state.layers[k].name: t for k, t in threshold.items()}
        return StepResult(report)
