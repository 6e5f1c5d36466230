"""`sigdl models export`: a zoo model (untrained) or a trained checkpoint to ONNX, verified.

An untrained zoo model is exported behind the usual normalization for its input (ImageNet's
mean and std for 3 channels, 0.5 / 0.5 otherwise), so its graph has the same contract as a
trained one: pixels in [0, 1] in, logits out. A checkpoint is checked against its model.json's
weights_sha256 and its `sigdl train` report (the artifact chain) as it is loaded, and the ONNX
model is never written over a file such a report records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sigdl.core import chain, checkpoint, onnx_io, zoo
from sigdl.core.checkpoint import ModelMeta, PixelModel

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def zoo_meta(
    name: str, input_size: int | None, channels: int | None, classes: int | None
) -> ModelMeta:
    spec = zoo.get_spec(name)
    c = channels or spec.channels
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else ([0.5] * c, [0.5] * c)
    return ModelMeta(
        model=spec.name,
        input_size=input_size or spec.input_size,
        channels=c,
        classes=classes or spec.classes,
        mean=mean,
        std=std,
    )


def load_for_export(
    name: str, input_size: int | None, channels: int | None, classes: int | None
) -> tuple[PixelModel, ModelMeta]:
    if Path(name).is_dir():
        return checkpoint.load_checkpoint(name)
    meta = zoo_meta(name, input_size, channels, classes)
    torch.manual_seed(0)
    return checkpoint.build(meta).eval(), meta


@torch.no_grad()
def export(
    name: str,
    onnx_path: str | Path,
    *,
    input_size: int | None = None,
    channels: int | None = None,
    classes: int | None = None,
) -> dict:
    """Export and check the ONNX model against PyTorch on random pixels; return a summary."""
    chain.check_not_recorded(onnx_path, "--onnx")
    model, meta = load_for_export(name, input_size, channels, classes)
    path = onnx_io.export_onnx(
        model, onnx_path, meta.input_shape, {"sigdl.model_json": meta.to_json()}
    )
    pixels = torch.rand(2, meta.channels, meta.input_size, meta.input_size)  # (2, C, H, W)
    expected = model(pixels).numpy()
    got = onnx_io.predict(onnx_io.session(path), pixels.numpy())
    return {
        "model": meta.model,
        "onnx": str(path),
        "bytes": path.stat().st_size,
        "sha256": chain.sha256_file(path),
        "input_shape": meta.input_shape,
        "parameters": zoo.count_parameters(model.net),
        "onnx_max_abs_diff": float(np.max(np.abs(expected - got))),
    }
