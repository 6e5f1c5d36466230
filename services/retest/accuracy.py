"""Test-set accuracy of a deployable model with ONNX Runtime, sharded over worker processes.

The test set is cut into chunks of whole batches; each worker process runs its own ORT
session over the chunks it is handed and returns the predicted classes, which are put back in
test-set order. Every batch holds the same images whatever the number of workers, so the
predictions, and hence the accuracy, are identical to a single process's.

    result = sharded_accuracy(Path("model.onnx"), "mnist", workers=2)
"""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import onnx
import torch

from sigdl.core import onnx_io
from sigdl.core.datasets import Dataset, Split, load_dataset
from sigdl.core.errors import InputError
from sigdl.core.evaluation import pixel_batches
from sigdl.core.events import EventFn, ProgressEvent

BATCH = 256  # images per ORT call; chunk boundaries are multiples of it
CHUNK_BATCHES = 8  # batches per chunk handed to a worker (progress granularity)


def _chunks(total: int, workers: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of whole batches: at least one per worker."""
    batches = math.ceil(total / BATCH)
    per_chunk = max(1, min(CHUNK_BATCHES, math.ceil(batches / workers)))
    starts = range(0, batches, per_chunk)
    return [(b * BATCH, min((b + per_chunk) * BATCH, total)) for b in starts]


def _logits(sess, pixels: np.ndarray) -> np.ndarray:
    """Logits of a batch of pixels; a model exported with a fixed batch of B gets B images
    per call (the last call padded with zeros, whose logits are dropped)."""
    batch = sess.get_inputs()[0].shape[0]
    if not isinstance(batch, int) or batch == len(pixels):
        return onnx_io.predict(sess, pixels)
    parts = []
    for start in range(0, len(pixels), batch):
        part = pixels[start : start + batch]
        pad = np.zeros((batch - len(part), *part.shape[1:]), np.float32)
        parts.append(onnx_io.predict(sess, np.concatenate([part, pad]))[: len(part)])
    return np.concatenate(parts)


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """A graph input's or output's shape, a symbolic dimension as its name (or "?")."""
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in shape.dim]


def check_pixel_model(model: bytes, dataset: Dataset) -> None:
    """InputError unless `model` takes what scoring on `dataset` feeds it (ARCHITECTURE.md's
    deployable model): one float32 NCHW input with fixed C and a square H x W, and logits
    (N, K) out with a class for each of the data set's labels."""
    proto = onnx.load_from_string(model)
    weights = {init.name for init in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in weights]
    if len(inputs) != 1:
        names = [v.name for v in inputs]
        raise InputError(
            f"model inputs {names!r}: scoring on {dataset.name!r} needs a model "
            "with one input (float32 NCHW pixels in [0, 1])"
        )
    value, dims = inputs[0], _dims(inputs[0])
    elem = value.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(elem).lower()
        raise InputError(
            f"model input {value.name!r} is {kind}: scoring on {dataset.name!r} "
            "needs float32 NCHW pixels in [0, 1] (pixel / 255)"
        )
    fixed = len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[1:])
    if not fixed or dims[2] != dims[3]:
        nhwc = fixed and dims[3] in (1, 3) and dims[1] not in (1, 3)
        layout = " (channels last, NHWC)" if nhwc else ""
        raise InputError(
            f"model input {value.name!r} of shape {dims}{layout}: scoring on "
            f"{dataset.name!r} needs NCHW pixels with fixed C and square H x W; "
            "retest it without --dataset for latency, memory and operators"
        )
    out = proto.graph.output[0]
    logits, classes = _dims(out), len(dataset.classes)
    if len(logits) != 2 or not isinstance(logits[1], int) or logits[1] < classes:
        raise InputError(
            f"model output {out.name!r} of shape {logits}: scoring on "
            f"{dataset.name!r} needs logits (N, K) with K >= its {classes} "
            "classes"
        )


def score_chunk(
    model_path: str, dataset: str, data_dir: str | None, mode: str, start: int, stop: int,
    threads: int,
) -> tuple[int, np.ndarray, float]:  # fmt: skip
    """(start, predicted classes, summed cross-entropy) of test images [start, stop)."""
    test = load_dataset(dataset, data_dir).test
    part = Split(test.images[start:stop], test.labels[start:stop])
    sess = onnx_io.session(model_path, threads)
    channels, size, _ = onnx_io.input_shape(sess)
    preds, loss = [], 0.0
    for pixels, labels in pixel_batches(part, channels, size, mode, BATCH):
        logits = torch.from_numpy(_logits(sess, pixels.numpy()))
        loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        preds.append(logits.argmax(1).numpy())
    return start, np.concatenate(preds), loss


def sharded_accuracy(
    model_path: Path,
    dataset: str,
    *,
    data_dir: str | None = None,
    mode: str = "resize",
    workers: int = 1,
    threads: int = 1,
    on_event: EventFn | None = None,
    label: str = "",
) -> dict:
    """Accuracy over the whole test set; `workers` > 1 runs the chunks in spawned processes."""
    labels = load_dataset(dataset, data_dir).test.labels.numpy()
    chunks = _chunks(len(labels), workers)
    args = [(str(model_path), dataset, data_dir, mode, a, b, threads) for a, b in chunks]
    results: dict[int, tuple[np.ndarray, float]] = {}

    def record(start: int, preds: np.ndarray, loss: float) -> None:
        results[start] = (preds, loss)
        done = sum(len(p) for p, _ in results.values())
        if on_event:
            on_event(ProgressEvent.of("accuracy", done, len(labels), label=label))

    if workers == 1:
        for a in args:
            record(*score_chunk(*a))
    else:  # spawn: a forked ORT/torch thread pool can deadlock the child
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for future in as_completed([pool.submit(score_chunk, *a) for a in args]):
                record(*future.result())
    preds = np.concatenate([results[s][0] for s in sorted(results)])
    correct = int(np.sum(preds == labels))
    return {
        "accuracy": correct / len(labels), "correct": correct, "total": len(labels),
        "loss": sum(loss for _, loss in results.values()) / len(labels),
        "workers": workers, "threads_per_worker": threads,
        "predictions": preds,
    }  # fmt: skip
