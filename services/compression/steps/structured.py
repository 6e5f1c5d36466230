"""The `structured` step: remove whole output channels (Li et al., ICLR 2017), then retrain."""

from __future__ import annotations

from services.compression.engine import (
    CompressionState,
    PlanContext,
    StepHandler,
    StepResult,
    Targets,
    register_handler,
    retrain,
)
from services.compression.prune import prune_channels
from services.compression.recipe import StructuredConfig
from sigdl.core.errors import InputError


@register_handler
class StructuredHandler(StepHandler):
    config = StructuredConfig
    changes_weights = False  # it changes shapes: it must come before the steps that do

    def plan(self, cfg: StructuredConfig, index: int, ctx: PlanContext, where: str) -> Targets:
        if ctx.changed_by is not None:
            raise InputError(
                f"{where}: changes layer shapes after steps[{ctx.changed_by}] pruned or shared; "
                "put structured steps first"
            )
        return ctx.resolve(cfg.layers, cfg.fraction, where)

    def run(
        self, state: CompressionState, cfg: StructuredConfig, index: int, targets: Targets
    ) -> StepResult:
        named = set(cfg.layers) | (set(cfg.fraction) if isinstance(cfg.fraction, dict) else set())
        fractions = {state.layers[key].name: float(f) for key, f in targets.items()}
        net = state.model.net if hasattr(state.model, "net") else state.model
        try:
            channels, skipped, changed = prune_channels(
                net, fractions, cfg.norm, cfg.multiple, required=named
            )
        except InputError as exc:
            raise InputError(f"steps[{index}] (structured): {exc}") from None
        resized = list(state.fields.get("resized", []))
        resized.extend(n for n in changed if n not in resized)
        before_retrain = state.score().accuracy
        history = retrain(state, cfg.retrain, index, 0)
        report = {
            "channels": channels,
            "skipped": skipped,
            "accuracy_before_retrain": before_retrain,
            "epochs": len(history),
        }
        return StepResult(report, fields={"resized": resized})
