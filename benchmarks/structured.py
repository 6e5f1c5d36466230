"""Structured pruning through residuals and concatenations, timed: dense fp32 vs structured-pruned
vs int8 vs structured + int8 at batch 1 with ONNX Runtime, for MobileNet v2 and SqueezeNet 1.1.

    flock /tmp/sigdl-cpu.lock python benchmarks/structured.py [--fraction 0.5] [--rounds 200]

Each model is the untrained zoo network at 224x224 with 1000 classes (seed 0): there is no
ImageNet on this machine, so this measures speed only, not accuracy. The structured variant
removes `--fraction` of the output channels of every layer that can shrink, by channel group on
the traced graph (`prune_channels`, what the `structured` step runs: residual stages lose the
same channels, each side of a fire module's concatenation its own), kept counts a multiple of
8; int8 is `sigdl.core.numerics.quantize_int8` (static QDQ, what the `quantize` step ships)
calibrated on uniform random pixels.

Timing is interleaved: all four sessions are open at once and every round runs one batch-1
query on each, in an order that rotates each round, so that a change in the machine's load
falls on every variant alike; the figures are the median (and p90) of the rounds, at 1 and 2
intra-op threads. Writes benchmarks/results/structured.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from common import ROOT, WORK, load, merge, write_table

sys.path.insert(0, str(ROOT))
from services.compression.prune import find_layers, multiply_adds, prune_channels
from services.retest.measure import open_session
from sigdl.core import checkpoint, numerics, onnx_io
from sigdl.core.exporting import zoo_meta

MODELS = ["mobilenet-v2", "squeezenet-1.1"]
THREADS = (1, 2)
WARMUP = 10
MULTIPLE = 8  # kept channel counts: a multiple of the vector width


def variants(name: str, fraction: float) -> list[dict]:
    """Export the dense and structured models and their int8 QDQ; count their MACs."""
    out = WORK / "structured" / name
    out.mkdir(parents=True, exist_ok=True)
    meta = zoo_meta(name, None, None, None)
    torch.manual_seed(0)
    model = checkpoint.build(meta).eval()
    probe = torch.rand(1, *meta.input_shape[1:])

    def stats(stem: str) -> dict:
        macs = sum(multiply_adds(model.net, probe).values())
        params = sum(p.numel() for p in model.net.parameters())
        onnx_io.export_onnx(model, out / f"{stem}.onnx", meta.input_shape)
        return {"macs": macs, "parameters": params}

    dense = stats("dense")
    fractions = {layer.name: fraction for layer in find_layers(model.net).values()}
    channels, skipped, _ = prune_channels(model.net, fractions, "l1", MULTIPLE)
    thin = stats("structured")
    calibration = np.random.default_rng(0).random((16, *meta.input_shape[1:]), dtype=np.float32)
    for stem in ("dense", "structured"):
        fp32 = (out / f"{stem}.onnx").read_bytes()
        (out / f"{stem}.int8.onnx").write_bytes(numerics.quantize_int8(fp32, calibration))
    groups = len({c.get("group", n) for n, c in channels.items()})
    how = f"{len(channels)} layers in {groups} groups at {fraction:.0%}; skipped: {sorted(skipped)}"
    rows = [
        {"variant": "dense fp32", "onnx": out / "dense.onnx", **dense},
        {"variant": "structured fp32", "onnx": out / "structured.onnx", **thin, "pruned": how},
        {"variant": "int8", "onnx": out / "dense.int8.onnx", **dense},
        {"variant": "structured+int8", "onnx": out / "structured.int8.onnx", **thin},
    ]
    for row in rows:
        row["bytes"] = row["onnx"].stat().st_size
        row["onnx"] = str(row["onnx"].relative_to(ROOT))
    return rows


def interleaved(paths: list[str], threads: int, rounds: int) -> list[np.ndarray]:
    """Milliseconds of `rounds` batch-1 queries per model, one query of each model per round
    (order rotated each round)."""
    sessions = [open_session((ROOT / p).read_bytes(), threads) for p in paths]
    for sess, feed in sessions:
        for _ in range(WARMUP):
            sess.run(None, feed)
    times = [[] for _ in paths]
    for r in range(rounds):
        for i in (np.arange(len(paths)) + r) % len(paths):
            sess, feed = sessions[i]
            t0 = time.perf_counter()
            sess.run(None, feed)
            times[i].append(time.perf_counter() - t0)
    return [np.asarray(t) * 1e3 for t in times]


def run(name: str, fraction: float, rounds: int) -> dict:
    rows = variants(name, fraction)
    for threads in THREADS:
        started = time.perf_counter()
        times = interleaved([r["onnx"] for r in rows], threads, rounds)
        for row, ms in zip(rows, times, strict=True):
            row.setdefault("latency", {})[str(threads)] = {
                "p50_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                "queries": len(ms),
            }  # fmt: skip
        p50 = {r["variant"]: round(r["latency"][str(threads)]["p50_ms"], 2) for r in rows}
        print(name, f"{threads}T", p50, f"{time.perf_counter() - started:.0f}s", flush=True)
    # the machine is shared: the load says how much to trust the timings
    return {"model": name, "fraction": fraction, "rounds": rounds, "variants": rows,
            "load_1min_after": os.getloadavg()[0]}  # fmt: skip


def table(doc: dict) -> None:
    lines = []
    for r in (doc["rows"][name] for name in MODELS if name in doc["rows"]):
        dense = r["variants"][0]
        for v in r["variants"]:
            cells = [r["model"], v["variant"], f"{v['macs'] / 1e6:.0f}", f"{v['parameters']:,}",
                     f"{v['bytes']:,}"]  # fmt: skip
            for t in map(str, THREADS):
                lat, base = v["latency"][t], dense["latency"][t]["p50_ms"]
                speedup = base / lat["p50_ms"]
                cells += [f"{lat['p50_ms']:.2f}", f"{lat['p90_ms']:.2f}", f"**{speedup:.2f}x**"]
            lines.append(cells)
    header = ["model", "variant", "MMACs", "parameters", "ONNX bytes"]
    for t in THREADS:
        header += [f"p50 ms ({t}T)", f"p90 ms ({t}T)", f"speedup ({t}T)"]
    first = next(iter(doc["rows"].values()))
    notes = (
        f"Batch 1, 224x224, ONNX Runtime CPU; the four variants of a model timed interleaved "
        f"({first['rounds']} rounds, one query each per round, order rotated, {WARMUP} warm-up "
        f"queries), p50/p90 of the rounds; speedup = dense fp32 p50 / variant p50 at the same "
        f"thread count. Structured: {first['fraction']:.0%} of the channels of every layer that "
        f"can shrink, by group (residual stages together, concatenation ranges apart), counts a "
        f"multiple of {MULTIPLE}; the logits (and MobileNet's depthwise convs, which follow "
        f"their producers) are not pruned alone. int8: static QDQ calibrated on random pixels. "
        f"Untrained weights, timed only: no ImageNet here, so no accuracy is claimed; a real "
        f"model is retrained after the structured step (its `retrain`). Pruned groups and the "
        f"machine load: structured.json. Measured with `flock /tmp/sigdl-cpu.lock python "
        f"benchmarks/structured.py`."
    )
    write_table("structured", "Structured pruning through residuals and concats: latency at "
                "batch 1", header, lines, notes)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=MODELS, help="models to (re)run")
    parser.add_argument("--fraction", type=float, default=0.5, help="channels removed per group")
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per thread count")
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    args = parser.parse_args()
    if not args.table:
        for name in args.only or MODELS:
            merge("structured", name, run(name, args.fraction, args.rounds))
    table(load("structured"))


if __name__ == "__main__":
    main()
