"""The `fft-conv` step: compute eligible convolutions in the frequency domain where a cost rule
measured on this machine says it pays.

A 2-D convolution (cross-correlation, as `F.conv2d`) of an (H, W) input with a (kh, kw) kernel
is, for every output position, `irfft2(rfft2(x) * conj(rfft2(w)))` on an FFT grid at least as
large as the padded input (circular correlation equals the linear one there), summed over input
channels in the frequency domain, cropped and subsampled for stride. The kernel spectra are
computed once per weight version in eval mode (precomputed) and differentiably in training, so
retraining after the step goes through the FFT path too.

Eligible: `nn.Conv2d` with groups 1 and dilation 1 and zero padding. The cost rule compares
`direct_flops * DIRECT_SECONDS_PER_FLOP` with `fft_flops * FFT_SECONDS_PER_FLOP` for the layer's
kernel size, spatial size, channels and the recipe's `batch`; the two constants were measured on
the build machine with `benchmarks/fft_conv.py` (which also reports where the rule was wrong).

The weights do not change: the `.sdc` stores them as before, and the decoded `model.onnx` is the
zoo model with direct `Conv` nodes, equal to the FFT model within float tolerance (the
documented fallback: ONNX Runtime's DFT operator is not reached by torch's TorchScript exporter,
and the dynamo exporter needs onnxscript, which is not installed). Instead,
`services/compression/fft_onnx.py` rewrites a model.onnx's Conv nodes onto ONNX's `DFT`
operator (opset 20); that runs under ONNX Runtime and equals the direct model within float
tolerance (benchmarks/fft_onnx.py).

    steps:
      - type: fft-conv
        layers: [conv]   # the convolutions to consider
        mode: auto       # auto: the cost rule decides per layer | always
        batch: 1         # the batch the rule decides for (latency: 1)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from services.compression.engine import (
    CompressionState,
    PlanContext,
    StepHandler,
    StepResult,
    Targets,
    register_handler,
    retrain,
)
from services.compression.recipe import (
    RetrainConfig,
    StepConfig,
    check_all,
    check_patterns,
    register_step,
    retrain_config,
)
from sigdl.core.errors import InputError

FFT_MODES = ("auto", "always")
# Seconds per flop of each path on the build machine (2 shared x86 cores, torch 2.13 CPU,
# oneDNN direct convolution), the medians benchmarks/fft_conv.py fitted over LeNet-5, AlexNet
# and VGG-16 shapes at batch 1 and 32 (results/fft_conv.md). FFT flops cost ~24x more here:
# the transforms and the complex per-bin products are memory-bound where oneDNN is not.
DIRECT_SECONDS_PER_FLOP = 5.8e-12
FFT_SECONDS_PER_FLOP = 1.37e-10


@register_step
@dataclass
class FFTConvConfig(StepConfig):
    """Frequency-domain convolution for the selected conv layers where it pays."""

    type: ClassVar[str] = "fft-conv"
    layers: list[str] = field(default_factory=lambda: ["conv"])  # names/globs/kinds
    mode: str = "auto"  # auto: the measured cost rule decides per layer | always
    batch: int = 1  # the batch size the cost rule decides for
    retrain: RetrainConfig = field(default_factory=lambda: RetrainConfig(epochs=0))

    def __post_init__(self) -> None:
        self.layers = check_patterns(self.layers, "layers")
        check_all([
            (self.mode in FFT_MODES, "mode", self.mode, f"one of {', '.join(FFT_MODES)}"),
            (isinstance(self.batch, int) and not isinstance(self.batch, bool)
             and self.batch >= 1, "batch", self.batch, "an integer >= 1"),
        ])  # fmt: skip
        self.retrain = retrain_config(self.retrain)


# ---------------------------------------------------------------------------------------------
# The frequency-domain convolution and its cost rule
# ---------------------------------------------------------------------------------------------


def fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c 7^d >= n (pocketfft's fast sizes)."""
    size = n
    while True:
        m = size
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return size
        size += 1


def fft_conv2d(
    x: torch.Tensor,  # (B, C, H, W)
    weight: torch.Tensor,  # (O, C, kh, kw)
    bias: torch.Tensor | None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    spectrum: torch.Tensor | None = None,  # kernel_spectrum(weight, grid), if precomputed
) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride, padding)` computed with real FFTs."""
    if padding != (0, 0):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    _, _, h, w = x.shape
    kh, kw = weight.shape[-2:]
    grid = (fft_size(h), fft_size(w))
    if spectrum is None:
        spectrum = kernel_spectrum(weight, grid)
    b, c = x.shape[:2]
    xs = torch.fft.rfft2(x, s=grid)  # (B, C, Nh, Nf), Nf = Nw//2+1
    nh, nf = xs.shape[-2:]
    # the channel sum is one complex matrix product per frequency bin: a batched GEMM
    ys = torch.bmm(xs.permute(2, 3, 0, 1).reshape(nh * nf, b, c), spectrum)  # (bins, B, O)
    ys = ys.view(nh, nf, b, -1).permute(2, 3, 0, 1)  # (B, O, Nh, Nf)
    y = torch.fft.irfft2(ys, s=grid)[..., : h - kh + 1 : stride[0], : w - kw + 1 : stride[1]]
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def kernel_spectrum(weight: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """conj(rfft2(weight)) on `grid` (correlation, as F.conv2d), laid out (bins, C, O) for the
    per-bin matrix product."""
    o, c = weight.shape[:2]
    spectrum = torch.fft.rfft2(weight, s=grid).conj()  # (O, C, Nh, Nf)
    return spectrum.permute(2, 3, 1, 0).reshape(-1, c, o).contiguous()  # (bins, C, O)


class FFTConv2d(nn.Conv2d):
    """An `nn.Conv2d` (same parameters, same state_dict) computed in the frequency domain."""

    _cache: tuple | None = None  # (weight version, grid, spectrum) in eval mode

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> FFTConv2d:
        """A module sharing `conv`'s parameters (an optimizer over either trains both)."""
        out = cls.__new__(cls)
        out.__dict__ = conv.__dict__.copy()
        out._parameters = conv._parameters  # the same Parameter objects, by the same names
        out._cache = None
        return out

    def _conv_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        h, w = (x.shape[-2] + 2 * self.padding[0], x.shape[-1] + 2 * self.padding[1])
        grid = (fft_size(h), fft_size(w))
        spectrum = None
        if not torch.is_grad_enabled() or not weight.requires_grad:
            key = (weight._version, id(weight), grid)
            if self._cache is None or self._cache[0] != key:
                with torch.no_grad():
                    self._cache = (key, kernel_spectrum(weight, grid))
            spectrum = self._cache[1]
        return fft_conv2d(x, weight, bias, self.stride, self.padding, spectrum)


def eligible(conv: nn.Module) -> str | None:
    """Why `conv` cannot run as FFTConv2d, or None when it can."""
    if not isinstance(conv, nn.Conv2d):
        return "is not a 2-D convolution"
    if conv.groups != 1 or conv.dilation != (1, 1):
        return f"has groups={conv.groups}, dilation={conv.dilation} (FFT needs 1, 1)"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"has padding {conv.padding!r} ({conv.padding_mode}); FFT needs explicit zeros"
    return None


@dataclass(frozen=True)
class ConvShape:
    """What the cost rule reads of one convolution at one batch."""

    batch: int
    channels: int  # input channels
    filters: int  # output channels
    size: tuple[int, int]  # input (H, W), padding included
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)

    @property
    def out(self) -> tuple[int, int]:
        (h, w), (kh, kw), (sh, sw) = self.size, self.kernel, self.stride
        return ((h - kh) // sh + 1, (w - kw) // sw + 1)

    def direct_flops(self) -> float:
        ho, wo = self.out
        kh, kw = self.kernel
        return 2.0 * self.batch * self.filters * self.channels * ho * wo * kh * kw

    def fft_flops(self) -> float:
        nh, nw = fft_size(self.size[0]), fft_size(self.size[1])
        bins = nh * (nw // 2 + 1)
        transform = 2.5 * nh * nw * math.log2(nh * nw)  # one real 2-D FFT, ~half a complex one
        transforms = self.batch * (self.channels + self.filters) * transform
        products = 8.0 * self.batch * self.filters * self.channels * bins  # complex MACs
        return transforms + products

    def predicted_seconds(self) -> dict[str, float]:
        return {
            "direct": self.direct_flops() * DIRECT_SECONDS_PER_FLOP,
            "fft": self.fft_flops() * FFT_SECONDS_PER_FLOP,
        }

    def fft_pays(self) -> bool:
        """The cost rule: FFT where its predicted time on this machine is below direct's."""
        t = self.predicted_seconds()
        return t["fft"] < t["direct"]


def conv_shape(conv: nn.Conv2d, size: tuple[int, int], batch: int) -> ConvShape:
    """The rule's view of `conv` fed an unpadded (H, W) input."""
    padded = (size[0] + 2 * conv.padding[0], size[1] + 2 * conv.padding[1])
    return ConvShape(
        batch, conv.in_channels, conv.out_channels, padded, conv.kernel_size, conv.stride
    )


def input_sizes(model: nn.Module, convs: dict[str, nn.Module], shape: tuple) -> dict:
    """The (H, W) each of `convs` sees, from one forward pass of a zero input of `shape`."""
    sizes, handles = {}, []
    for key, conv in convs.items():
        hook = (lambda k: lambda m, args: sizes.__setitem__(k, tuple(args[0].shape[-2:])))(key)
        handles.append(conv.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape[1:]))
    finally:
        for handle in handles:
            handle.remove()
    return sizes


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------


@register_handler
class FFTConvHandler(StepHandler):
    config = FFTConvConfig
    changes_weights = False  # only the computation changes

    def plan(self, cfg: FFTConvConfig, index: int, ctx: PlanContext, where: str) -> Targets:
        targets = ctx.resolve(cfg.layers, 1, where)
        named = set(cfg.layers) - {"*", "conv", "fc"}
        for key in list(targets):
            layer = ctx.layers[key]
            why = eligible(layer.module)
            if why is not None:
                if layer.name in named:
                    raise InputError(f"{where}: layer {layer.name!r} {why}")
                del targets[key]
        return targets

    def run(
        self, state: CompressionState, cfg: FFTConvConfig, index: int, targets: Targets
    ) -> StepResult:
        convs = {key: state.layers[key].module for key in targets}
        sizes = input_sizes(state.model, convs, state.meta.input_shape)
        net = state.model.net if hasattr(state.model, "net") else state.model
        modules = dict(net.named_modules())
        choices = {}
        for key, conv in convs.items():
            layer = state.layers[key]
            shape = conv_shape(conv, sizes[key], cfg.batch)
            use_fft = cfg.mode == "always" or shape.fft_pays()
            choices[layer.name] = {
                "fft": use_fft,
                "input": list(sizes[key]),
                "predicted_seconds": shape.predicted_seconds(),
            }
            if use_fft and not isinstance(conv, FFTConv2d):
                fft = FFTConv2d.from_conv(conv)
                parent, _, attr = layer.name.rpartition(".")
                setattr(modules[parent] if parent else net, attr, fft)
                state.layers[key] = dataclasses.replace(layer, module=fft)
        before = state.score().accuracy
        history = retrain(state, cfg.retrain, index, 0)
        report = {"fft": choices, "accuracy_before_retrain": before, "epochs": len(history)}
        fields = {"fft_layers": sorted(n for n, c in choices.items() if c["fft"])}
        return StepResult(report, fields=fields)
