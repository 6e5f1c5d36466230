"""Accuracy of a PyTorch module or an ONNX model on a data-set split.

Both paths feed exactly the same pixels (`pixel_batches`), so their accuracies are comparable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sigdl.core import onnx_io
from sigdl.core.datasets import Split, adapt


@dataclass(frozen=True)
class Score:
    correct: int
    total: int
    loss: float  # mean cross-entropy

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def pixel_batches(
    split: Split,
    channels: int,
    size: int,
    mode: str,
    batch_size: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (pixels (B, C, S, S) float32 in [0, 1], labels (B,)) in the split's order."""
    for start in range(0, len(split.labels), batch_size):
        images = split.images[start : start + batch_size]
        yield adapt(images, channels, size, mode), split.labels[start : start + batch_size]


@torch.no_grad()
def score_torch(
    model: nn.Module,
    split: Split,
    channels: int,
    size: int,
    mode: str = "resize",
    batch_size: int = 512,
) -> Score:
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for pixels, labels in pixel_batches(split, channels, size, mode, batch_size):
        logits = model(pixels)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(1) == labels).sum())
    model.train(was_training)
    total = len(split.labels)
    return Score(correct, total, loss_sum / max(total, 1))


def score_onnx(
    path: str | Path,
    split: Split,
    mode: str = "resize",
    batch_size: int = 512,
    threads: int | None = None,
) -> Score:
    """Run the ONNX model with ONNX Runtime over the whole split."""
    sess = onnx_io.session(path, threads)
    channels, size, _ = onnx_io.input_shape(sess)
    correct, loss_sum = 0, 0.0
    for pixels, labels in pixel_batches(split, channels, size, mode, batch_size):
        logits = torch.from_numpy(onnx_io.predict(sess, pixels.numpy()))
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += int(np.sum(logits.argmax(1).numpy() == labels.numpy()))
    total = len(split.labels)
    return Score(correct, total, loss_sum / max(total, 1))
