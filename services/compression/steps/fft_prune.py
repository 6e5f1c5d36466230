"""The `fft-prune` step: frequency-domain pruning of convolution kernels, kept sparse through
retraining and stored sparse in the `.sdc`.

Each selected kernel (kh, kw) is taken to its orthonormal 2-D DCT-II (`sigdl.core.spectral`),
the smallest-magnitude coefficients of the layer are zeroed to the layer's target sparsity in
`rounds` prune->retrain rounds (the `prune` step's `linear` / `agp` schedules), and after every
optimizer step the spectrum's mask is re-applied: W <- idct2(M * dct2(W)). With SGD this is
exactly SGD on the kept coefficients: the DCT is orthogonal, so the mask is an orthogonal
projection, which commutes with momentum and weight decay (Adam's per-weight scaling does not:
there it is a projected step). With `bits`, the kept coefficients then go on a k-means codebook
of 2**bits entries (entry 0 = the pruned 0.0) whose centroids retrain by the summed moves of
their members (Deep Compression's grouped gradient, taken in the frequency domain), so a later
Huffman step codes them like shared weights. The `.sdc` stores the coefficients (`dct2`
encoding: kept values or codebook indices, with relative positions); decoding runs the same
`idct2`, so the decoded model.onnx is an ordinary Conv with the trained weights bit for bit.

What it follows:
- Liu, Xu, Peng, Xiong, "Frequency-Domain Dynamic Pruning for Convolutional Neural Networks",
  NeurIPS 2018, pp. 1043-1053: the 2-D DCT of each filter, coefficients pruned by magnitude and
  retrained (they report 8.4x compression and 9.2x theoretical speed-up on ResNet-110, CIFAR-10;
  https://papers.nips.cc/paper/7382). Not followed: their masks are dynamic (a pruned
  coefficient may come back) and their frequency bands get separate rates; here the masks only
  shrink, as the `prune` step's (Han et al., NeurIPS 2015), and one magnitude threshold per
  layer over the orthonormal spectrum already spares the low band where the energy is.
- Wang, Xu, You, Tao, Xu, "CNNpack: Packing Convolutional Neural Networks in the Frequency
  Domain", NIPS 2016: DCT coefficients of filters, low-energy ones discarded, the rest quantized
  with k-means and Huffman-coded (their cluster-center/residual split is not used here).

DCT-II rather than the DFT: a kh x kw kernel has exactly kh x kw real DCT coefficients, while
`rfft2` gives kh x (kw//2 + 1) complex ones (30 reals for a 5x5 kernel's 25) whose Hermitian
pairs (column 0, and column kw/2 for even kw) must be masked together or `irfft2` silently
drops half of a pruned pair; a kept complex coefficient also costs two stored values. The DCT
is real, orthonormal (zeroing the smallest |X| is the least L2 change for the count kept) and
compacts smooth kernels' energy better, which is why both papers above use it. The step name
keeps the issue's `fft-prune` (the frequency-domain family of the `fft-conv` step). Note that a
kernel's sparse spectrum at its own size does not make the `fft-conv` step's spectra (on the
padded input's grid) sparse: this step saves storage, not FFT work.

    steps:
      - type: fft-prune
        layers: [conv]                        # 2-D convolutions only
        sparsity: {conv1: 0.5, conv2: 0.94}   # fraction of each layer's DCT coefficients zeroed
        rounds: 3
        schedule: agp
        retrain: {epochs: 2, lr: 0.01}
        bits: 5                               # optional: a 32-entry codebook of the kept ones
        codebook: float16
        share_retrain: {epochs: 2, lr: 0.001}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from services.compression.engine import (
    CompressionState,
    Hook,
    PlanContext,
    StepHandler,
    StepResult,
    Targets,
    end_round,
    register_handler,
    resolve_layers,
    retrain,
)
from services.compression.prune import Layer, agp_sparsity, linear_sparsity, sparsity_mask
from services.compression.recipe import (
    CENTROID_UPDATES,
    CODEBOOK_DTYPES,
    PRUNE_SCHEDULES,
    LayerValue,
    RetrainConfig,
    StepConfig,
    check_all,
    check_layer_value,
    check_patterns,
    pattern_matches,
    register_step,
    retrain_config,
)
from services.compression.share import share_weights
from sigdl.core import spectral
from sigdl.core.errors import InputError
from sigdl.core.sdc import SharedTensor, SpectralTensor


@register_step
@dataclass
class FFTPruneConfig(StepConfig):
    """Frequency-domain (DCT-II) pruning of conv kernels in prune->retrain rounds, masks on the
    spectra kept through retraining; optionally a k-means codebook of the kept coefficients."""

    type: ClassVar[str] = "fft-prune"
    layers: list[str] = field(default_factory=lambda: ["conv"])  # names/globs/kinds (Conv2d)
    sparsity: LayerValue | None = None  # fraction of each layer's DCT coefficients set to 0
    rounds: int = 1  # iterative prune->retrain rounds
    schedule: str = "linear"  # linear | agp: the per-round sparsities (as the prune step)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)  # after every round
    bits: LayerValue | None = None  # codebook index bits of the kept coefficients; None: float32
    codebook: str = "float32"  # float32 | float16: centroids kept representable in this dtype
    centroid_update: str = "sum"  # sum | mean of the member coefficients' moves
    share_retrain: RetrainConfig = field(default_factory=lambda: RetrainConfig(epochs=0))

    def __post_init__(self) -> None:
        self.layers = check_patterns(self.layers, "layers")
        if self.sparsity is None:
            raise InputError("sparsity=None: expected the fraction of DCT coefficients to zero")
        self.sparsity = check_layer_value(
            self.sparsity, "sparsity", float, lambda v: 0 <= v < 1, "a fraction in [0, 1)"
        )
        if self.bits is not None:
            self.bits = check_layer_value(
                self.bits, "bits", int, lambda v: 1 <= v <= 16, "an integer in 1..16"
            )
        check_all([
            (isinstance(self.rounds, int) and not isinstance(self.rounds, bool)
             and self.rounds >= 1, "rounds", self.rounds, "an integer >= 1"),
            (self.schedule in PRUNE_SCHEDULES, "schedule", self.schedule,
             f"one of {', '.join(PRUNE_SCHEDULES)}"),
            (self.codebook in CODEBOOK_DTYPES, "codebook", self.codebook,
             f"one of {', '.join(CODEBOOK_DTYPES)}"),
            (self.centroid_update in CENTROID_UPDATES, "centroid_update", self.centroid_update,
             f"one of {', '.join(CENTROID_UPDATES)}"),
        ])  # fmt: skip
        self.retrain = retrain_config(self.retrain)
        self.share_retrain = retrain_config(self.share_retrain)


# ---------------------------------------------------------------------------------------------
# One layer's spectrum and the hook that keeps it
# ---------------------------------------------------------------------------------------------


@dataclass
class Spectrum:
    """One conv weight's kept DCT-II coefficients; the weight is `idct2(coefficients)`."""

    keep: np.ndarray  # bool, the weight's shape (O, C, kh, kw): coefficients not pruned
    coefficients: np.ndarray  # float32, the weight's shape: 0.0 where pruned
    codebook: np.ndarray | None = None  # (2**bits,) float32, [0] == 0.0, once shared
    assignments: np.ndarray | None = None  # (n,) int64 into the codebook; 0 = pruned
    bits: int = 0  # codebook index bits (0: float32 coefficients)
    update: str = "sum"  # centroid update: sum | mean
    fp16: bool = False  # keep every centroid exactly representable in float16

    @classmethod
    def of(cls, weight: torch.Tensor) -> Spectrum:
        """The spectrum of `weight` with nothing pruned yet."""
        coefficients = spectral.dct2(weight.detach().cpu().numpy()).astype(np.float32)
        return cls(np.ones(coefficients.shape, dtype=bool), coefficients)

    @property
    def sparsity(self) -> float:
        return 1.0 - float(self.keep.mean())

    def prune(self, weight: torch.Tensor, sparsity: float) -> None:
        """Zero the smallest |coefficient| of `weight` to `sparsity` (never reviving one)."""
        moved = torch.from_numpy(spectral.dct2(weight.detach().cpu().numpy()))
        self.keep &= sparsity_mask(moved, sparsity).numpy()
        self.follow(weight)

    def share(self, weight: torch.Tensor, bits: int, update: str, fp16: bool) -> None:
        """Put the kept coefficients on a k-means codebook of 2**bits entries (entry 0: 0.0)."""
        coefficients = torch.from_numpy(self.coefficients)
        codebook, assignments = share_weights(coefficients, bits)
        self.codebook = _fp16_exact(codebook.numpy()) if fp16 else codebook.numpy()
        self.codebook[0] = 0.0
        self.assignments = assignments.flatten().numpy()
        self.keep = (self.assignments != 0).reshape(self.keep.shape)
        self.bits, self.update, self.fp16 = bits, update, fp16
        self.coefficients = self.codebook[self.assignments].reshape(self.keep.shape)
        _set(weight, spectral.idct2(self.coefficients))

    def follow(self, weight: torch.Tensor) -> None:
        """Fold the optimizer's move of `weight` into the kept coefficients (or, once shared,
        into their centroids: the summed or mean move of each centroid's members), then set
        the weight to exactly the kernels of those coefficients."""
        moved = spectral.dct2(weight.detach().cpu().numpy())  # float64, the weight's shape
        if self.codebook is None:
            self.coefficients = np.where(self.keep, moved, 0.0).astype(np.float32)
        else:
            flat, k = self.assignments, self.codebook.size
            delta = moved.reshape(-1) - self.codebook[flat]  # (n,) float64
            step = np.bincount(flat, weights=delta, minlength=k)  # (K,) summed per centroid
            if self.update == "mean":
                step /= np.maximum(np.bincount(flat, minlength=k), 1)
            codebook = (self.codebook + step).astype(np.float32)
            self.codebook = _fp16_exact(codebook) if self.fp16 else codebook
            self.codebook[0] = 0.0
            self.coefficients = self.codebook[flat].reshape(self.keep.shape)
        _set(weight, spectral.idct2(self.coefficients))

    def tensor(self, index_bits: int) -> SpectralTensor:
        """The weight as the `.sdc` stores it."""
        shared = None
        if self.codebook is not None:
            dtype = np.uint8 if self.bits <= 8 else np.uint16
            assignments = self.assignments.astype(dtype).reshape(self.keep.shape)
            shared = SharedTensor(self.codebook, assignments, index_bits, self.fp16)
        return SpectralTensor(self.coefficients, index_bits, shared)

    def by_frequency(self) -> list[list[float]]:
        """The fraction of kernels that keep each (k, l) coefficient: (kh, kw)."""
        kept = self.keep.reshape(-1, *self.keep.shape[-2:]).mean(0)
        return [[round(float(v), 4) for v in row] for row in kept]


def _fp16_exact(codebook: np.ndarray) -> np.ndarray:
    return codebook.astype(np.float16).astype(np.float32)


@torch.no_grad()
def _set(weight: torch.Tensor, value: np.ndarray) -> None:
    # copy_ bumps the parameter's version, so FFTConv2d's cached spectrum follows
    weight.copy_(torch.from_numpy(value).to(weight.device))


class SpectrumKeeper:
    """`fit(after_step=[...])` hook: after every optimizer step, put each weight back on its
    sparse spectrum (and its codebook, once shared)."""

    def __init__(self, pairs: list[tuple[torch.Tensor, Spectrum]]) -> None:
        self.pairs = pairs

    def __call__(self, model: nn.Module | None = None) -> None:
        for weight, spectrum in self.pairs:
            spectrum.follow(weight)


@dataclass
class SpectralWeights:
    """The weights one fft-prune step keeps on sparse spectra (`FixedWeights`)."""

    layers: dict[str, Layer]
    spectra: dict[str, Spectrum] = field(default_factory=dict)
    keeps_zeros: bool = True  # no spatial mask applies: the zeros are in the spectrum

    def keys(self) -> list[str]:
        return list(self.spectra)

    def hook(self, keys: list[str]) -> Hook:
        return SpectrumKeeper([(self.layers[k].weight, self.spectra[k]) for k in keys])

    def sdc_tensor(self, key: str, index_bits: int) -> SpectralTensor:
        tensor = self.spectra[key].tensor(index_bits)
        weight = self.layers[key].weight.detach().cpu().numpy()
        if not np.array_equal(weight.view(np.int32), tensor.values().view(np.int32)):
            raise RuntimeError(f"{key}: weight drifted from idct2(its kept coefficients)")
        return tensor

    def symbols(self, key: str) -> tuple[np.ndarray, int, int]:
        s = self.spectra[key]
        if s.codebook is None:  # float32 coefficients: their bits, nonzero where kept
            return s.coefficients.view(np.int32), 32, 0
        return s.assignments.reshape(s.keep.shape), s.bits, (16 if s.fp16 else 32) * s.codebook.size


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------


@register_handler
class FFTPruneHandler(StepHandler):
    config = FFTPruneConfig
    fixes_weights = True  # a later prune or share in the spatial domain would undo the spectra

    def plan(self, cfg: FFTPruneConfig, index: int, ctx: PlanContext, where: str) -> Targets:
        targets = ctx.resolve(cfg.layers, cfg.sparsity, where)
        if cfg.bits is not None:  # its names and globs must match layers too
            ctx.resolve(cfg.layers, cfg.bits, where)
        explicit = [p for p in cfg.layers if p not in ("*", "conv")]  # names, globs, "fc"
        for key in list(targets):
            layer = ctx.layers[key]
            if not isinstance(layer.module, nn.Conv2d):
                if any(pattern_matches(p, layer.name, layer.kind) for p in explicit):
                    raise InputError(
                        f"{where}: layer {layer.name!r} is not a 2-D convolution (no kernel "
                        "spectrum); prune it with a `prune` step"
                    )
                del targets[key]
        if not targets:
            raise InputError(f"{where}: layers {cfg.layers!r} select no 2-D convolution")
        ctx.refuse_fixed(targets, where, "frequency-prunes")
        return targets

    def run(
        self, state: CompressionState, cfg: FFTPruneConfig, index: int, targets: Targets
    ) -> StepResult:
        where = f"steps[{index}] (fft-prune)"
        for key in targets:
            if key in state.masks:
                raise InputError(
                    f"{where}: layer {state.layers[key].name!r} was pruned in the spatial "
                    "domain by an earlier step; prune a layer in one domain only"
                )
        fixed = SpectralWeights(dict(state.layers))
        for key in targets:
            fixed.spectra[key] = Spectrum.of(state.layers[key].weight)
        state.fixed.update(dict.fromkeys(fixed.keys(), fixed))  # retraining keeps the spectra
        names = {key: state.layers[key].name for key in targets}
        ramp = agp_sparsity if cfg.schedule == "agp" else linear_sparsity
        start = {k: s.sparsity for k, s in fixed.spectra.items()}
        rounds = []
        for r in range(1, cfg.rounds + 1):
            for key, spectrum in fixed.spectra.items():
                level = max(ramp(start[key], float(targets[key]), r, cfg.rounds), 0.0)
                spectrum.prune(state.layers[key].weight, level)
            before = state.score().accuracy
            history = retrain(state, cfg.retrain, index, r)
            sparsity = {names[k]: s.sparsity for k, s in fixed.spectra.items()}
            rounds.append(end_round(state, cfg, index, r, sparsity, before, history))
        report: dict = {"rounds": rounds}
        bits = self._share(state, cfg, fixed, names, where)
        if bits:
            before = state.score().accuracy
            history = retrain(state, cfg.share_retrain, index, cfg.rounds + 1)
            report |= {"bits": bits, "accuracy_before_share_retrain": before,
                       "share_epochs": len(history)}  # fmt: skip
        layers = {
            names[k]: {
                "sparsity": s.sparsity,
                "kept": int(s.keep.sum()),
                "of": int(s.keep.size),
                "bits": s.bits or None,
                "kept_by_frequency": s.by_frequency(),
            }
            for k, s in fixed.spectra.items()
        }
        report["spectra"] = layers
        spectral_fields = {**state.fields.get("spectral", {}), **layers}
        return StepResult(report, fixed, fields={"spectral": spectral_fields})

    @staticmethod
    def _share(
        state: CompressionState,
        cfg: FFTPruneConfig,
        fixed: SpectralWeights,
        names: dict[str, str],
        where: str,
    ) -> dict[str, int]:
        """Put the kept coefficients of the layers `bits` covers on codebooks."""
        if cfg.bits is None:
            return {}
        chosen = {}
        for key, b in resolve_layers(cfg.layers, cfg.bits, state.layers, where).items():
            if key in fixed.spectra:
                fixed.spectra[key].share(
                    state.layers[key].weight, int(b), cfg.centroid_update, cfg.codebook == "float16"
                )
                chosen[names[key]] = int(b)
        return chosen
