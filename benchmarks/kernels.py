"""Compressed-model kernels against the dense PyTorch equivalent, on this machine's CPU (or on
a GPU with --gpu), and where each starts to win; then a compressed retest against ONNX Runtime.

    flock /tmp/sigdl-cpu.lock python benchmarks/kernels.py [--gpu] [--table]

Every kernel runs through its own `benchmark(...)` (kernels/<name>.py): median seconds of the
kernel on NumPy (CPU path) or CuPy (--gpu) input, and of torch's dense op on the CPU, on a
LeNet-sized layer. "wins" is dense time / kernel time > 1. Sparsity sweeps give the density
below which the sparse kernel beats the dense GEMM. The retest rows score two LeNets trained
for a few epochs on `digits` and compressed here (pruned, shared, Huffman-coded .sdc) through
services/retest/compressed.py, next to ONNX Runtime on their decoded model.onnx.
Writes benchmarks/results/kernels.{json,md} (kernels-gpu.* with --gpu).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# one thread for NumPy's BLAS and for torch alike: on the 2 shared cores, thread pools that
# meet other work stall for milliseconds and make single calls bimodal
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import numpy as np
import torch
from common import ROOT, load, merge, write_table

sys.path.insert(0, str(ROOT))
from kernels import codebook_linear, fft_conv, huffman_decode, int8_gemm, sparse_linear
from services.compression.share import share_weights
from services.retest import compressed
from sigdl.core import onnx_io, sdc
from sigdl.core.checkpoint import build
from sigdl.core.datasets import load_dataset
from sigdl.core.evaluation import score_onnx
from sigdl.core.exporting import zoo_meta
from sigdl.core.training import TrainConfig, fit

DENSITIES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
BATCHES = (1, 16)
LAYER = (300, 784)  # LeNet-300-100's fc1
WIN = 1.05  # speedups up to this are ties


def row(kernel: str, case: str, result: dict, repeat_key: str = "dense_torch_s") -> dict:
    speedup = result[repeat_key] / result["kernel_s"]
    return {
        "kernel": kernel,
        "case": case,
        **result,
        "baseline_s": result[repeat_key],
        "speedup": speedup,
    }


def kernel_rows(xp: object) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for batch in BATCHES:
        for bits, label in ((None, "float CSR"), (5, "5-bit codebook CSR")):
            for density in DENSITIES:
                r = sparse_linear.benchmark(batch, LAYER, density, bits, xp)
                rows.append(row("sparse_linear", f"{label}, batch {batch}, density {density}", r))
        for bits in (2, 5, 8):
            r = codebook_linear.benchmark(batch, LAYER, bits, xp)
            rows.append(row("codebook_linear", f"{bits}-bit indices, batch {batch}", r))
        r = int8_gemm.benchmark(batch, LAYER, xp)
        rows.append(row("int8_gemm", f"uint8 x int8 -> uint8, batch {batch}", r))
    for size, channels, kernel in (
        (12, (20, 50), 5),
        (28, (1, 20), 5),
        (64, (8, 8), 3),
        (64, (8, 8), 7),
        (64, (8, 8), 11),
        (128, (4, 4), 15),
    ):
        r = fft_conv.benchmark(8, *channels, size, kernel, xp=xp)
        case = f"{channels[0]}->{channels[1]} ch, {size}x{size}, {kernel}x{kernel}, batch 8"
        rows.append(row("fft_conv", case, r))
    for count in (20_000, 200_000):
        r = huffman_decode.benchmark(count, 32, xp)
        rows.append(
            row(
                "huffman_decode",
                f"{count} symbols, 32 kinds (vs the .sdc reader)",
                r,
                "sdc_reader_s",
            )
        )
    return rows


def _candidate(name: str, plan: dict, data, folder: Path) -> Path:
    """Train a LeNet briefly on digits, prune and share it as `plan` says, write its .sdc."""
    torch.manual_seed(0)
    meta = zoo_meta(name, None, None, None)
    model = build(meta)
    cfg = TrainConfig(model=name, dataset="digits", epochs=3, lr=0.05, schedule="constant")
    fit(model, data.train, cfg, meta.channels, meta.input_size)
    tensors = {}
    for key, value in model.state_dict().items():
        layer = key.removeprefix("net.").rpartition(".")[0]
        if key.endswith(".weight") and layer in plan:
            kept, bits = plan[layer]
            cut = value.abs().flatten().quantile(1 - kept) if kept < 1 else -1.0
            codebook, assignments = share_weights(value * (value.abs() > cut), bits)
            tensors[key] = sdc.SharedTensor(codebook.numpy(), assignments.numpy(), 8)
        else:
            tensors[key] = value.detach()
    sdc.write_sdc(folder / "model.sdc", tensors, meta.to_json())
    decoded, _ = sdc.load_model(folder / "model.sdc")
    onnx_io.export_onnx(decoded, folder / "model.onnx", meta.input_shape)
    return folder / "model.sdc"


def retest_rows() -> list[dict]:
    data = load_dataset("digits")
    plans = {
        "lenet-300-100": {"fc1": (0.08, 5), "fc2": (0.09, 5), "fc3": (0.26, 5)},
        "lenet-5": {"conv1": (0.66, 6), "conv2": (0.12, 8), "fc1": (0.08, 5), "fc2": (0.19, 5)},
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="sigdl-kernels-") as tmp:
        paths = {}
        for name, plan in plans.items():
            (Path(tmp) / name).mkdir()
            paths[name] = _candidate(name, plan, data, Path(tmp) / name)
        for name, path in paths.items():
            started = time.perf_counter()
            ort = score_onnx(path.with_name("model.onnx"), data.test)
            ort_s = time.perf_counter() - started
            [ours] = compressed.score_candidates([path], "digits", device="cpu")
            rows.append(
                {
                    "kernel": "retest (compressed)",
                    "case": f"{name}, digits test",
                    "kernel_s": ours.decode_seconds + ours.score_seconds,
                    "baseline_s": ort_s,
                    "speedup": ort_s / (ours.decode_seconds + ours.score_seconds),
                    "accuracy": ours.accuracy,
                    "ort_accuracy": ort.accuracy,
                    "decode_s": ours.decode_seconds,
                }
            )
        four = [paths["lenet-5"], paths["lenet-300-100"]] * 2
        started = time.perf_counter()
        for p in four:
            compressed.score_candidates([p], "digits", device="cpu")
        one_by_one = time.perf_counter() - started
        started = time.perf_counter()
        compressed.score_candidates(four, "digits", device="cpu", workers=4)
        together = time.perf_counter() - started
        rows.append(
            {
                "kernel": "retest (compressed)",
                "case": "4 candidates: concurrent vs one after another (CPU threads)",
                "kernel_s": together,
                "baseline_s": one_by_one,
                "speedup": one_by_one / together,
            }
        )
    return rows


def wins_from(rows: list[dict]) -> list[str]:
    """Where each sparse sweep starts to win: the highest density with speedup > WIN (a ratio
    within 5% of 1 is a tie on this shared machine, not a win)."""
    notes = []
    for batch in BATCHES:
        for label in ("float CSR", "5-bit codebook CSR"):
            sweep = [
                r
                for r in rows
                if r["kernel"] == "sparse_linear"
                and r["case"].startswith(f"{label}, batch {batch},")
            ]
            winning = [float(r["case"].rsplit(" ", 1)[1]) for r in sweep if r["speedup"] > WIN]
            where = f"wins at density <= {max(winning)}" if winning else "never wins (down to 1%)"
            notes.append(f"sparse_linear {label}, batch {batch}: {where}")
    return notes


def table(name: str, title: str) -> None:
    doc = load(name)
    rows = list(doc["rows"].values())
    ms = "{:.3f}".format
    body = [
        [
            r["kernel"],
            r["case"],
            ms(r["kernel_s"] * 1e3),
            ms(r["baseline_s"] * 1e3),
            f"**{r['speedup']:.2f}x**" if r["speedup"] > WIN else f"{r['speedup']:.2f}x",
            f"{r['accuracy']:.4f} / {r['ort_accuracy']:.4f}" if "accuracy" in r else "",
        ]
        for r in rows
    ]
    m = doc["machine"]
    notes = "\n".join(f"- {n}" for n in wins_from(rows)) + (
        f"\n\nMachine: {m['cpus']} CPUs ({m['processor']}), Python {m['python']}; one thread "
        "for NumPy's BLAS and for torch; the machine is shared with other work. "
        "Baseline column: dense torch op (retest rows: "
        "ONNX Runtime on the decoded model.onnx; huffman rows: sigdl.core.huffman.decode; "
        "4-candidate row: the same four scored one after another).\n"
        "Command: `flock /tmp/sigdl-cpu.lock python benchmarks/kernels.py`"
    )
    header = ["kernel", "case", "kernel ms", "baseline ms", "speedup", "accuracy (ours / ORT)"]
    write_table(name, title, header, body, notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="run the kernels on CuPy arrays")
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    args = parser.parse_args()
    name = "kernels-gpu" if args.gpu else "kernels"
    if not args.table:
        if args.gpu:
            import cupy as xp
        else:
            xp = np
        rows = kernel_rows(xp) + ([] if args.gpu else retest_rows())
        for r in rows:
            merge(name, f"{r['kernel']}: {r['case']}", r)
    where = "a GPU (CuPy)" if args.gpu else "the CPU (NumPy paths)"
    table(name, f"Compressed-model kernels on {where} against dense PyTorch")


if __name__ == "__main__":
    main()
