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
import torch

from sigdl.core import onnx_io
from sigdl.core.datasets import Split, load_dataset
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
        logits = torch.from_numpy(onnx_io.predict(sess, pixels.numpy()))
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
