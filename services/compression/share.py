"""Trained weight sharing (Han, Mao, Dally, "Deep Compression", ICLR 2016): a per-layer 1-D
k-means codebook over the nonzero weights, then centroid retraining.

    codebook, assignments = share_weights(w, bits=5)     # w == codebook[assignments], bitwise
    trainer = CentroidTrainer(layers, {key: SharedWeight(codebook, assignments, 5)})
    fit(model, ..., after_step=[trainer])                 # still codebook[assignments] after

Codebook entry 0 is 0.0 and holds the pruned weights; entries 1..2**bits-1 are the centroids of
the nonzero weights. Assignments never change during retraining; only the centroids move.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from services.compression.prune import Layer
from sigdl.core.errors import InputError

# ---------------------------------------------------------------------------------------------
# Pure primitives
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def initial_centroids(values: torch.Tensor, k: int, init: str = "linear") -> torch.Tensor:
    """k starting centroids (float64, sorted): evenly spaced between min and max (`linear`, the
    paper's best), or at evenly spaced quantiles of the values (`density`)."""
    values = values.double()
    if init == "linear":
        return torch.linspace(float(values.min()), float(values.max()), k, dtype=torch.float64)
    if init == "density":
        levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        return torch.quantile(values, levels)
    raise InputError(f"init={init!r}: expected linear or density")


@torch.no_grad()
def nearest_centroid(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted `centroids` for each value (ties to the lower one)."""
    boundaries = (centroids[1:] + centroids[:-1]) / 2  # (k-1,) midpoints
    return torch.bucketize(values.to(centroids.dtype), boundaries)  # (n,) int64


@torch.no_grad()
def kmeans_1d(
    values: torch.Tensor, k: int, iterations: int = 30, init: str = "linear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's algorithm in one dimension: (centroids float32 (k,) sorted, labels int64 (n,)).

    Sums run in float64; an empty cluster keeps its centroid. Stops early when no label moves.
    The labels returned are the nearest float32 centroid of each value.
    """
    if k < 1:
        raise InputError(f"k={k}: expected at least one cluster")
    values = values.flatten()
    if values.numel() == 0:
        return torch.zeros(k, dtype=torch.float32), torch.zeros(0, dtype=torch.int64)
    x = values.double()  # (n,)
    centroids = initial_centroids(x, k, init)  # (k,)
    labels = nearest_centroid(x, centroids)
    for _ in range(iterations):
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids).sort().values
        moved = nearest_centroid(x, centroids)
        if torch.equal(moved, labels):
            break
        labels = moved
    centroids32 = centroids.float()
    return centroids32, nearest_centroid(values.float(), centroids32)


@torch.no_grad()
def share_weights(
    weight: torch.Tensor, bits: int, iterations: int = 30, init: str = "linear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codebook float32 (2**bits,) with codebook[0] = 0.0, assignments int64 like `weight`):
    zeros map to entry 0, nonzeros to the nearest of 2**bits - 1 k-means centroids."""
    flat = weight.detach().flatten().float()  # (n,)
    alive = flat != 0
    codebook = torch.zeros(2**bits, dtype=torch.float32)
    assignments = torch.zeros(flat.numel(), dtype=torch.int64)
    if alive.any():
        centroids, labels = kmeans_1d(flat[alive], 2**bits - 1, iterations, init)
        codebook[1:] = centroids
        assignments[alive] = labels + 1
    return codebook, assignments.view(weight.shape)


# ---------------------------------------------------------------------------------------------
# Shared layers and centroid retraining
# ---------------------------------------------------------------------------------------------


@dataclass
class SharedWeight:
    """One layer's codebook and fixed assignments; the weight is codebook[assignments]."""

    codebook: torch.Tensor  # (2**bits,) float32, codebook[0] == 0.0
    assignments: torch.Tensor  # int64, the weight's shape; 0 = pruned
    bits: int  # index bits: len(codebook) == 2**bits
    update: str = "sum"  # centroid update: sum (the paper's grouped gradient) | mean
    fp16: bool = False  # keep every centroid exactly representable in float16

    def __post_init__(self) -> None:
        if self.fp16:
            round_to_fp16(self.codebook)

    def dense(self) -> torch.Tensor:
        return self.codebook[self.assignments]  # same shape as the weight

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(codebook float32 (K,), assignments as the smallest unsigned dtype that holds K-1)."""
        dtype = np.uint8 if self.bits <= 8 else np.uint16
        return self.codebook.numpy().copy(), self.assignments.numpy().astype(dtype)


@torch.no_grad()
def round_to_fp16(codebook: torch.Tensor) -> None:
    """Round float32 centroids to the nearest float16 value, in place (still float32)."""
    codebook.copy_(codebook.half().float())


@torch.no_grad()
def project(weight: torch.Tensor, shared: SharedWeight) -> None:
    """Set the weight to exactly codebook[assignments]."""
    weight.copy_(shared.dense())


class CentroidTrainer:
    """`fit(after_step=[...])` hook: fold each optimizer step into the centroids.

    After a step every weight w_i has moved by d_i from its centroid; centroid k moves by the sum
    of d_i over its members (with SGD that is -lr x the summed gradient, the paper's update, and
    momentum stays linear), or by their mean. Then every weight is set back to its centroid, so
    the layer is codebook[assignments] bitwise after each step and entry 0 (pruned) stays 0.0.
    """

    def __init__(self, layers: dict[str, Layer], shared: dict[str, SharedWeight]) -> None:
        # Buffers are allocated once: a fresh large tensor per step costs more than the math.
        self.items = []
        for key, s in shared.items():
            flat = s.assignments.flatten()  # (n,)
            counts = torch.bincount(flat, minlength=len(s.codebook)).clamp_min(1).float()
            step = torch.zeros_like(s.codebook)  # (K,)
            buffer = torch.empty(flat.numel(), dtype=torch.float32)  # (n,)
            self.items.append((layers[key].weight, s, flat, counts, step, buffer))

    @torch.no_grad()
    def __call__(self, model: nn.Module | None = None) -> None:
        for weight, s, flat, counts, step, buffer in self.items:
            w = weight.view(-1)  # (n,), the parameter's storage
            torch.index_select(s.codebook, 0, flat, out=buffer)  # where each weight was
            torch.sub(w, buffer, out=buffer)  # how far the optimizer moved it
            step.zero_().index_add_(0, flat, buffer)  # summed per cluster
            if s.update == "mean":
                step.div_(counts)
            s.codebook.add_(step)
            if s.fp16:
                round_to_fp16(s.codebook)
            s.codebook[0] = 0.0
            torch.index_select(s.codebook, 0, flat, out=w)
