"""Fixed-point quantization primitives: symmetric per-channel weight grids, calibrated
activation ranges, and fake quantization for quantization-aware training (QAT).

Pure `@torch.no_grad()` functions (torchao's `choose_qparams_affine` / `quantize_affine`
pattern) apart from `FakeQuant`, which swaps the forward of the quantized modules while
training. The integer model itself is ONNX QDQ, written by `sigdl.core.numerics.quantize_int8` with
the weight scales chosen here, so the grid trained here is the grid ONNX Runtime runs.

    scale = weight_scale(layer.weight, bits=8)            # (C_out,)
    q = quantize_weight(layer.weight, scale, bits=8)      # int8, zero point 0
    with FakeQuant(modules, ranges, bits, "affine"):      # QAT: fit(...) sees int8 numerics
        fit(model, ...)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


def levels(bits: int) -> int:
    """The largest level of a symmetric `bits` grid: weights take -L..L (zero point 0)."""
    return 2 ** (bits - 1) - 1


@torch.no_grad()
def weight_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """One scale per output channel (axis 0): max |w| / L, so the largest weight is a level.
    An all-zero channel (pruned away) gets scale 1: every level multiplies 0."""
    peak = weight.detach().abs().reshape(weight.shape[0], -1).amax(1)  # (C_out,)
    return torch.where(peak > 0, peak / levels(bits), torch.ones_like(peak)).float()


def _channel(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scale.reshape(-1, *([1] * (like.ndim - 1)))  # (C_out, 1, ...) broadcasts on axis 0


@torch.no_grad()
def quantize_weight(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 levels of `weight` on the grid `scale` (round to nearest, clamp to -L..L)."""
    limit = levels(bits)
    return torch.clamp(torch.round(weight / _channel(scale, weight)), -limit, limit).to(torch.int8)


@torch.no_grad()
def dequantize_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 `scale[c] * q`: one product per value, as the .sdc reader computes it."""
    return _channel(scale.float(), q) * q.float()


@torch.no_grad()
def project_to_grid(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> None:
    """Move `weight` in place onto its grid: exactly `scale[c] * q`, what the .sdc stores."""
    weight.copy_(dequantize_weight(quantize_weight(weight, scale, bits), scale))


def fake_quant_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """`weight` rounded onto its per-channel grid in the forward pass, with a straight-through
    gradient in the backward (the scale follows the weights as they train)."""
    scale = weight_scale(weight, bits)
    zero = torch.zeros(len(scale), dtype=torch.int32)
    limit = levels(bits)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -limit, limit)


@dataclass(frozen=True)
class ActivationQuant:
    """8-bit quantization of one tensor: q = round(x / scale) + zero_point in [qmin, qmax]."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @classmethod
    def from_range(cls, low: float, high: float, scheme: str) -> ActivationQuant:
        """affine: uint8 over [min(low, 0), max(high, 0)], so 0 is exact; symmetric: int8
        with zero point 0 over [-max|x|, max|x|] (ONNX Runtime's conventions)."""
        low, high = min(low, 0.0), max(high, 0.0)
        if scheme == "symmetric":
            peak = max(abs(low), abs(high)) or 1.0
            return cls(peak / 127, 0, -128, 127)
        span = (high - low) or 1.0
        scale = span / 255
        return cls(scale, round(-low / scale), 0, 255)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point, self.qmin, self.qmax
        )


@torch.no_grad()
def observe_input_ranges(
    model: nn.Module, modules: Mapping[str, nn.Module], batches: Iterable[torch.Tensor]
) -> dict[str, tuple[float, float]]:
    """(min, max) of the input each module sees over `batches` of pixels (calibration)."""
    ranges: dict[str, tuple[float, float]] = {}

    def watch(key: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            low, high = float(x.min()), float(x.max())
            old = ranges.get(key, (low, high))
            ranges[key] = (min(old[0], low), max(old[1], high))

        return hook

    handles = [m.register_forward_pre_hook(watch(k)) for k, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        for pixels in batches:
            model(pixels)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return ranges


def _quantized_forward(module: nn.Module, bits: int, act: ActivationQuant) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        w = fake_quant_weight(module.weight, bits)
        if isinstance(module, nn.Linear):
            return F.linear(act(x), w, module.bias)
        return module._conv_forward(act(x), w, module.bias)

    return forward


class FakeQuant:
    """Within the block, each module computes with its input activations and weights
    fake-quantized (int8 numerics in float arithmetic, straight-through gradients). The float
    weights stay the parameters, so the optimizer and the mask hooks see them as usual."""

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        ranges: Mapping[str, tuple[float, float]],
        bits: Mapping[str, int],
        scheme: str,
    ) -> None:
        self.modules = dict(modules)
        self.acts = {k: ActivationQuant.from_range(*ranges[k], scheme) for k in self.modules}
        self.bits = dict(bits)

    def __enter__(self) -> FakeQuant:
        for key, module in self.modules.items():
            # an instance attribute shadows the class's forward; deleting it restores it
            module.forward = _quantized_forward(module, self.bits[key], self.acts[key])
        return self

    def __exit__(self, *exc: object) -> None:
        for module in self.modules.values():
            del module.forward


class GridKeeper:
    """`fit(after_step=[...])` hook: keep quantized weights on their fixed grids while other
    layers retrain (a later step must not move them off the levels the .sdc stores)."""

    def __init__(self, weights: Mapping[str, tuple[nn.Parameter, torch.Tensor, int]]) -> None:
        self.weights = dict(weights)  # key -> (weight, scale (C_out,), bits)

    @torch.no_grad()
    def __call__(self, model: nn.Module | None = None) -> None:
        for weight, scale, bits in self.weights.values():
            project_to_grid(weight, scale, bits)
