"""LeNet-5's convolutions through ONNX Runtime's DFT operator vs its direct Conv, on MNIST.

    SIGDL_DATA=../shared/datasets flock /tmp/sigdl-cpu.lock .venv/bin/python benchmarks/fft_onnx.py

Takes the dense LeNet-5 `model.onnx` of `benchmarks/baselines.py` (and, where
`benchmarks/fft_prune.py` has run, the decoded model.onnx of `fft-prune-lenet-5`), rewrites its
convolutions with `services.compression.fft_onnx.fft_conv_onnx` (DFT nodes, opset 20), and
measures under ONNX Runtime (CPU): test accuracy of both on the full MNIST test set, the largest
logit difference and how many predictions differ, the file sizes, and the latency of both at
batch 1 (1 and 2 threads) and batch 32 (1 thread), the two models' queries interleaved, beside
the retest latency model's prediction for each (services/retest/predict.py with the shipped
host profile, whose `dft` figures the host calibration fits: benchmarks/calibrate_host.py
--add-class dft), and per op type the predicted time against ONNX Runtime's profiled kernel
times. Writes benchmarks/results/fft_onnx.{json,md}. The default decoded model.onnx stays
direct Conv.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from common import ROOT, WORK, merge, write_table

import targets
from services.compression.fft_onnx import fft_conv_onnx
from services.retest.graph import analyze
from services.retest.measure import node_kernels
from services.retest.predict import predict_latency
from sigdl.core import onnx_io
from sigdl.core.datasets import load_dataset
from sigdl.core.evaluation import pixel_batches, score_onnx

MODELS = {
    "lenet-5 dense": WORK / "baselines" / "lenet-5-mnist" / "model.onnx",
    "lenet-5 fft-prune-lenet-5": WORK / "fft_prune" / "fft-prune-lenet-5" / "model.onnx",
}
ROUNDS = 300  # batch-1 runs per model, interleaved
# (batch, intra-op threads) the latency is measured and predicted at, and the interleaved
# runs per model at each batch (a batch-32 query of the DFT model takes ~0.1 s)
CONFIGS = [(1, 1), (1, 2), (32, 1)]
CONFIG_ROUNDS = {1: ROUNDS, 32: 40}
PROFILED_QUERIES = 100  # queries of the per-node profile (batch 1, 1 thread)


def logits(path: Path, split) -> np.ndarray:
    sess = onnx_io.session(path, threads=1)
    return np.concatenate(
        [onnx_io.predict(sess, p.numpy()) for p, _ in pixel_batches(split, 1, 28, "resize", 512)]
    )


def latency(
    paths: list[Path], images: np.ndarray, threads: int = 1, rounds: int = ROUNDS
) -> list[float]:
    """Median seconds of a query of `images` on each model, the models alternating run by
    run."""
    sessions = [onnx_io.session(p, threads=threads) for p in paths]
    for sess in sessions:  # warm-up
        onnx_io.predict(sess, images)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for sess, spent in zip(sessions, times, strict=True):
            start = time.perf_counter()
            onnx_io.predict(sess, images)
            spent.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def with_batch(path: Path, batch: int) -> onnx.ModelProto:
    """The model with its input's and output's batch axis fixed at `batch` (what the latency
    model analyzes: its shapes are at the batch the model was exported with)."""
    model = onnx.load(path)
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = batch
    return model


def predicted(path: Path, batch: int, threads: int, profile: dict) -> dict:
    """The latency model's prediction (ms) and its per-op-type breakdown (ms)."""
    report = predict_latency(analyze(with_batch(path, batch)), profile, "fp32", threads)
    per_op: dict[str, float] = {}
    for layer in report["layers"]:
        per_op[layer["op"]] = per_op.get(layer["op"], 0.0) + layer["ms"]
    return {"ms": report["latency_ms"], "per_op_ms": per_op}


def profiled_per_op(path: Path, image: np.ndarray) -> dict[str, float]:
    """ONNX Runtime's per-node kernel times (median over PROFILED_QUERIES batch-1 queries, 1
    thread), summed per op type (ms); layout reorders under their own names."""
    with tempfile.TemporaryDirectory(prefix="sigdl-fft-prof-") as tmp:
        sess = onnx_io.session_from_bytes(path.read_bytes(), 1, f"{tmp}/p")
        for _ in range(PROFILED_QUERIES):
            onnx_io.predict(sess, image)
        nodes = node_kernels(sess.end_profiling())
    per_op: dict[str, float] = {}
    for node in nodes.values():  # FusedGemm: a Gemm with its Relu, as the prediction fuses it
        op = node["op"].removeprefix("Fused")
        per_op[op] = per_op.get(op, 0.0) + float(np.median(node["us"])) / 1e3
    return per_op


def latency_rows(direct: Path, fft: Path, test) -> dict:
    """Per (batch, threads): measured (interleaved) and predicted ms of both models."""
    profile = targets.load_file(targets.HERE / "host.yaml")  # the shipped one, not a user's
    images = next(iter(pixel_batches(test, 1, 28, "resize", 32)))[0].numpy()  # (32, 1, 28, 28)
    out = {}
    for batch, threads in CONFIGS:
        measured = latency([direct, fft], images[:batch], threads, CONFIG_ROUNDS[batch])
        row = {"batch": batch, "threads": threads, "rounds": CONFIG_ROUNDS[batch]}
        for name, path, seconds in (("direct", direct, measured[0]), ("fft", fft, measured[1])):
            guess = predicted(path, batch, threads, profile)
            row[name] = {"measured_ms": seconds * 1e3, "predicted_ms": guess["ms"],
                         "predicted_over_measured": guess["ms"] / (seconds * 1e3),
                         "predicted_per_op_ms": guess["per_op_ms"]}  # fmt: skip
        row["fft_over_direct_measured"] = measured[1] / measured[0]
        row["fft_over_direct_predicted"] = (
            row["fft"]["predicted_ms"] / row["direct"]["predicted_ms"]
        )
        out[f"b{batch} t{threads}"] = row
    out["b1 t1"]["fft"]["profiled_per_op_ms"] = profiled_per_op(fft, images[:1])
    out["b1 t1"]["direct"]["profiled_per_op_ms"] = profiled_per_op(direct, images[:1])
    return out


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
    timed = latency_rows(direct, fft, test)
    seconds = [timed["b1 t1"][name]["measured_ms"] / 1e3 for name in ("direct", "fft")]
    return {
        "model": name, "direct": str(direct.relative_to(ROOT)), "fft": str(fft.relative_to(ROOT)),
        "layers": layers, "direct_accuracy": scores[0], "fft_accuracy": scores[1],
        "max_abs_logit_diff": float(np.abs(a - b).max()),
        "max_abs_logit": float(np.abs(a).max()),
        "predictions_differing": int((a.argmax(1) != b.argmax(1)).sum()),
        "test_samples": len(test.labels),
        "direct_bytes": direct.stat().st_size, "fft_bytes": fft.stat().st_size,
        "direct_batch1_s": seconds[0], "fft_batch1_s": seconds[1],
        "fft_over_direct": seconds[1] / seconds[0], "latency": timed,
        "wall_s": time.perf_counter() - started,
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
    notes += (
        "\n\n## Latency predicted by the retest latency model against ONNX Runtime\n\n"
        f"Measured: median of interleaved queries ({CONFIG_ROUNDS[1]} per model at batch 1, "
        f"{CONFIG_ROUNDS[32]} at batch 32), the direct and the DFT model alternating. Predicted: "
        "`services.retest.predict.predict_latency` with the shipped host profile (its DFT nodes "
        "priced with the `dft` class's calibrated efficiency, overhead and per-element cost), "
        "on the model with its batch axis fixed. pred/meas: predicted over measured.\n\n"
        + latency_table(doc)
        + "\n\nPer op type, the DFT model at batch 1, 1 thread: ONNX Runtime's profiled kernel "
        f"times (median of {PROFILED_QUERIES} queries per node, summed) against the prediction "
        "(the profile of a session adds its own cost to each kernel, which the calibration "
        "subtracts as the nearly free node's).\n\n" + per_op_table(doc)
    )
    write_table(
        "fft_onnx", "Convolutions through ONNX Runtime's DFT operator vs direct Conv (MNIST)",
        ["model", "convs rewritten", "direct acc (ORT)", "DFT acc (ORT)", "max logit difference",
         "predictions differing", "file bytes (direct -> DFT)", "batch-1 us (direct / DFT)",
         "DFT / direct time"],
        rows, notes,
    )  # fmt: skip


def latency_table(doc: dict) -> str:
    """Predicted against measured latency per model, batch and thread count (markdown)."""
    lines = [
        "| model | batch | threads | direct measured / predicted ms (pred/meas) "
        "| DFT measured / predicted ms (pred/meas) | DFT / direct measured | predicted |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"].values():
        for row in r.get("latency", {}).values():
            d, f = row["direct"], row["fft"]
            lines.append(
                f"| {r['model']} | {row['batch']} | {row['threads']} "
                f"| {d['measured_ms']:.3f} / {d['predicted_ms']:.3f} "
                f"({d['predicted_over_measured']:.2f}) "
                f"| {f['measured_ms']:.3f} / {f['predicted_ms']:.3f} "
                f"({f['predicted_over_measured']:.2f}) "
                f"| {row['fft_over_direct_measured']:.1f}x "
                f"| {row['fft_over_direct_predicted']:.1f}x |"
            )
    return "\n".join(lines)


def per_op_table(doc: dict) -> str:
    """Per op type of the DFT model at batch 1, 1 thread: predicted against ONNX Runtime's
    profiled kernel time (markdown)."""
    lines = ["| model | op | profiled ms | predicted ms | pred/prof |", "|---|---|---|---|---|"]
    for r in doc["rows"].values():
        fft = r.get("latency", {}).get("b1 t1", {}).get("fft")
        if not fft:
            continue
        prof, pred = fft["profiled_per_op_ms"], fft["predicted_per_op_ms"]
        for op in sorted(set(prof) | set(pred), key=lambda o: -prof.get(o, 0.0)):
            a, b = prof.get(op, 0.0), pred.get(op, 0.0)
            ratio = f"{b / a:.2f}" if a else "-"
            lines.append(f"| {r['model']} | {op} | {a:.4f} | {b:.4f} | {ratio} |")
    return "\n".join(lines)


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
