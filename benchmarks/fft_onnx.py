"""LeNet-5's convolutions through ONNX Runtime's DFT operator vs its direct Conv, on MNIST.

    SIGDL_DATA=../shared/datasets flock /tmp/sigdl-cpu.lock .venv/bin/python benchmarks/fft_onnx.py

Takes the dense LeNet-5 `model.onnx` of `benchmarks/baselines.py` (and, where
`benchmarks/fft_prune.py` has run, the decoded model.onnx of `fft-prune-lenet-5`), rewrites its
convolutions with `services.compression.fft_onnx.fft_conv_onnx` (DFT nodes, opset 20), and
measures under ONNX Runtime (CPU): test accuracy of both on the full MNIST test set, the largest
logit difference and how many predictions differ, the file sizes, and batch-1 latency (the
median of interleaved runs, 1 thread, reported as a ratio). Writes
benchmarks/results/fft_onnx.{json,md}. The default decoded model.onnx stays direct Conv.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from common import ROOT, WORK, merge, write_table

from services.compression.fft_onnx import fft_conv_onnx
from sigdl.core import onnx_io
from sigdl.core.datasets import load_dataset
from sigdl.core.evaluation import pixel_batches, score_onnx

MODELS = {
    "lenet-5 dense": WORK / "baselines" / "lenet-5-mnist" / "model.onnx",
    "lenet-5 fft-prune-lenet-5": WORK / "fft_prune" / "fft-prune-lenet-5" / "model.onnx",
}
ROUNDS = 300  # batch-1 runs per model, interleaved


def logits(path: Path, split) -> np.ndarray:
    sess = onnx_io.session(path, threads=1)
    return np.concatenate(
        [onnx_io.predict(sess, p.numpy()) for p, _ in pixel_batches(split, 1, 28, "resize", 512)]
    )


def latency(paths: list[Path], image: np.ndarray) -> list[float]:
    """Median batch-1 seconds of each model, the models alternating run by run."""
    sessions = [onnx_io.session(p, threads=1) for p in paths]
    for sess in sessions:  # warm-up
        onnx_io.predict(sess, image)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(ROUNDS):
        for sess, spent in zip(sessions, times, strict=True):
            start = time.perf_counter()
            onnx_io.predict(sess, image)
            spent.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def run(name: str, direct: Path) -> dict:
    started = time.perf_counter()
    out = WORK / "fft_onnx" / name.replace(" ", "-")
    out.mkdir(parents=True, exist_ok=True)
    fft_bytes, layers = fft_conv_onnx(direct.read_bytes())
    fft = out / "model.fft.onnx"
    fft.write_bytes(fft_bytes)
    test = load_dataset("mnist").test
    a, b = logits(direct, test), logits(fft, test)
    scores = [score_onnx(p, test, "resize", threads=1).accuracy for p in (direct, fft)]
    image = np.asarray(next(iter(pixel_batches(test, 1, 28, "resize", 1)))[0].numpy())
    seconds = latency([direct, fft], image)
    return {
        "model": name, "direct": str(direct.relative_to(ROOT)), "fft": str(fft.relative_to(ROOT)),
        "layers": layers, "direct_accuracy": scores[0], "fft_accuracy": scores[1],
        "max_abs_logit_diff": float(np.abs(a - b).max()),
        "max_abs_logit": float(np.abs(a).max()),
        "predictions_differing": int((a.argmax(1) != b.argmax(1)).sum()),
        "test_samples": len(test.labels),
        "direct_bytes": direct.stat().st_size, "fft_bytes": fft.stat().st_size,
        "direct_batch1_s": seconds[0], "fft_batch1_s": seconds[1],
        "fft_over_direct": seconds[1] / seconds[0], "wall_s": time.perf_counter() - started,
    }  # fmt: skip


def table(doc: dict) -> None:
    rows = [
        [
            r["model"], ", ".join(f"{k} grid {v['grid']}" for k, v in r["layers"].items()),
            f"{100 * r['direct_accuracy']:.2f}%", f"{100 * r['fft_accuracy']:.2f}%",
            f"{r['max_abs_logit_diff']:.2e} (of {r['max_abs_logit']:.1f})",
            f"{r['predictions_differing']} / {r['test_samples']:,}",
            f"{r['direct_bytes']:,} -> {r['fft_bytes']:,}",
            f"{1e6 * r['direct_batch1_s']:.0f} / {1e6 * r['fft_batch1_s']:.0f}",
            f"{r['fft_over_direct']:.2f}x",
        ]
        for r in doc["rows"].values()
    ]  # fmt: skip
    notes = (
        f"Machine: {doc['machine']}. ONNX Runtime CPU, 1 thread; latency: median of {ROUNDS} "
        "interleaved batch-1 runs each. The DFT model is `fft_conv_onnx` of the direct one "
        "(one-sided real DFT along W, complex DFT along H, per-bin MatMuls against the "
        "precomputed kernel spectra, inverse DFTs, Slice, Add; opset 20). Run: "
        "`SIGDL_DATA=../shared/datasets flock /tmp/sigdl-cpu.lock .venv/bin/python "
        "benchmarks/fft_onnx.py`."
    )
    write_table(
        "fft_onnx", "Convolutions through ONNX Runtime's DFT operator vs direct Conv (MNIST)",
        ["model", "convs rewritten", "direct acc (ORT)", "DFT acc (ORT)", "max logit difference",
         "predictions differing", "file bytes (direct -> DFT)", "batch-1 us (direct / DFT)",
         "DFT / direct time"],
        rows, notes,
    )  # fmt: skip


def main() -> None:
    doc = None
    for name, path in MODELS.items():
        if not path.is_file():
            print(f"{name}: {path} missing, skipped", flush=True)
            continue
        row = run(name, path)
        print(
            f"{name}: acc {100 * row['direct_accuracy']:.2f}% -> {100 * row['fft_accuracy']:.2f}%,"
            f" max logit diff {row['max_abs_logit_diff']:.2e}, time x{row['fft_over_direct']:.2f}",
            flush=True,
        )
        doc = merge("fft_onnx", name, row)
    if doc is not None:
        table(doc)


if __name__ == "__main__":
    main()
