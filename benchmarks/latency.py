"""Faster, not only smaller: dense fp32 vs structured-pruned vs int8 latency at batch 1 with
ONNX Runtime on this machine, for LeNet-5 (MNIST, with accuracy) and MobileNet v1/v2 (224x224).

    SIGDL_DATA=../shared/datasets python benchmarks/latency.py [--only lenet-5 mobilenet-v1 ...]

LeNet-5 variants come from the real CLI on the MNIST baseline of `benchmarks/baselines.py`:
`sigdl compress CKPT --recipe int8 | structured-lenet-5 | structured-int8-lenet-5`; accuracy is
the timed ONNX file under ONNX Runtime on the full test set. MobileNet has no data set here
(ImageNet-shaped), so it is timed only: the untrained zoo model, the same model with half of
the output channels of every conv that can shrink alone removed (`engine.prune_channels`), and
each quantized with `sigdl.core.numerics.quantize_int8` calibrated on uniform random pixels.

Latency is MLPerf single-stream style: one image per query, 20 warm-up queries, then queries
until 200 ran or 10 s passed; p50 and p90 of the per-query times, at 1 and 2 intra-op threads.
The whole run holds /tmp/sigdl-cpu.lock so no other measurement shares the 2 cores.
Writes benchmarks/results/latency.{json,md}.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from common import ROOT, WORK, load, merge, sigdl, write_table

sys.path.insert(0, str(ROOT))
from services.compression.engine import prune_channels
from services.compression.prune import find_layers
from services.retest.measure import single_stream
from sigdl.core import checkpoint, numerics, onnx_io
from sigdl.core.exporting import zoo_meta

MODELS = ["lenet-5", "mobilenet-v1", "mobilenet-v2"]
THREADS = (1, 2)
WARMUP, MAX_QUERIES, MAX_SECONDS = 20, 200, 10.0
LENET_RECIPES = {
    "int8": "int8",
    "structured": "structured-lenet-5",
    "structured+int8": "structured-int8-lenet-5",
}


@contextmanager
def cpu_lock():
    with open("/tmp/sigdl-cpu.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def timed(path: Path, threads: int) -> dict:
    """Single-stream latency (ms) of one image at a time: p50, p90, mean, queries."""
    # min_queries=1: stop at MAX_QUERIES or after MAX_SECONDS, whichever comes first
    stats = single_stream(
        path.read_bytes(), threads, warmup=WARMUP, min_queries=1, min_seconds=MAX_SECONDS,
        max_queries=MAX_QUERIES,
    )  # fmt: skip
    keep = ("p50_ms", "p90_ms", "mean_ms", "queries")
    return {k: v for k, v in stats.to_json().items() if k in keep}


def lenet_variants() -> list[dict]:
    ckpt = WORK / "baselines" / "lenet-5-mnist"
    if not (ckpt / "model.json").is_file():
        raise SystemExit(f"no baseline checkpoint at {ckpt}: run benchmarks/baselines.py first")
    dense_acc = json.loads((ckpt / "report.json").read_text())["metrics"]["onnx_test_accuracy"]
    rows = [{"variant": "dense fp32", "onnx": ckpt / "model.onnx", "accuracy": dense_acc,
             "command": f"sigdl train --model lenet-5 --dataset mnist --out {ckpt}"}]  # fmt: skip
    for variant, recipe in LENET_RECIPES.items():
        out = WORK / "latency" / f"lenet-5-{recipe}"
        args = ["compress", str(ckpt), "--recipe", recipe, "--out", str(out)]
        report = sigdl(*args, env={"SIGDL_HOME": str(WORK / "home")})
        m, int8 = report["metrics"], "int8" in variant
        command = "sigdl " + " ".join(args)
        if variant == "structured+int8":
            rows.append({"variant": "structured fp32 (QAT grid)", "onnx": out / "model.onnx",
                         "accuracy": m["onnx_test_accuracy"], "command": command})  # fmt: skip
        rows.append({
            "variant": variant if int8 else f"{variant} fp32",
            "onnx": out / ("model.int8.onnx" if int8 else "model.onnx"),
            "accuracy": m["int8_onnx_test_accuracy" if int8 else "onnx_test_accuracy"],
            "command": command,
        })  # fmt: skip
    return rows


def mobilenet_variants(name: str) -> list[dict]:
    """Untrained dense / channel-pruned exports and their int8 QDQ (timed only)."""
    out = WORK / "latency" / name
    out.mkdir(parents=True, exist_ok=True)
    meta = zoo_meta(name, None, None, None)
    torch.manual_seed(0)
    model = checkpoint.build(meta).eval()
    onnx_io.export_onnx(model, out / "dense.onnx", meta.input_shape)
    fractions = {layer.name: 0.5 for layer in find_layers(model).values() if layer.kind == "conv"}
    channels, _, _ = prune_channels(model.net, fractions)
    onnx_io.export_onnx(model, out / "structured.onnx", meta.input_shape)
    calibration = np.random.default_rng(0).random((32, *meta.input_shape[1:]), dtype=np.float32)
    for stem in ("dense", "structured"):
        fp32 = (out / f"{stem}.onnx").read_bytes()
        (out / f"{stem}.int8.onnx").write_bytes(numerics.quantize_int8(fp32, calibration))
    shrunk = f"{len(channels)} convs halved"
    how = "python benchmarks/latency.py (untrained, no data set here)"
    return [
        {"variant": "dense fp32", "onnx": out / "dense.onnx", "command": how},
        {"variant": f"structured fp32 ({shrunk})", "onnx": out / "structured.onnx", "command": how},
        {"variant": "int8", "onnx": out / "dense.int8.onnx", "command": how},
        {"variant": "structured+int8", "onnx": out / "structured.int8.onnx", "command": how},
    ]


def run(model: str, retime: bool) -> dict:
    if retime:  # time the ONNX files of the last run again (e.g. on a quieter machine)
        variants = load("latency")["rows"][model]["variants"]
    else:
        variants = lenet_variants() if model == "lenet-5" else mobilenet_variants(model)
    for v in variants:
        v["onnx"] = str((ROOT / v["onnx"]).resolve().relative_to(ROOT))  # stored relative
        v["bytes"] = (ROOT / v["onnx"]).stat().st_size
        v["latency"] = {str(t): timed(ROOT / v["onnx"], t) for t in THREADS}
        print(model, v["variant"], {t: round(x["p50_ms"], 3) for t, x in v["latency"].items()})
    # the machine is shared: the load says how much to trust the timings
    return {"model": model, "variants": variants, "load_1min_after": os.getloadavg()[0]}


def table(doc: dict) -> None:
    rows = []
    for r in doc["rows"].values():
        dense = r["variants"][0]["latency"]
        for v in r["variants"]:
            acc = v.get("accuracy")
            cells = [r["model"], v["variant"], f"{acc * 100:.2f}%" if acc else "n/a",
                     f"{v['bytes']:,}"]  # fmt: skip
            for t in map(str, THREADS):
                lat = v["latency"][t]
                speedup = dense[t]["p50_ms"] / lat["p50_ms"]
                cells += [f"{lat['p50_ms']:.3f}", f"{lat['p90_ms']:.3f}", f"**{speedup:.2f}x**"]
            rows.append(cells)
    header = ["model", "variant", "accuracy", "ONNX bytes"]
    for t in THREADS:
        header += [f"p50 ms ({t}T)", f"p90 ms ({t}T)", f"speedup ({t}T)"]
    notes = (
        "Batch 1, ONNX Runtime CPU, single-stream (20 warm-up queries, then up to 200 queries or "
        "10 s); speedup is dense fp32 p50 / variant p50 at the same thread count. LeNet-5: "
        "MNIST test accuracy of the timed ONNX file. MobileNet: untrained, timed only (no "
        "ImageNet here). Commands: see latency.json. Measured with `SIGDL_DATA=../shared/datasets "
        "python benchmarks/latency.py`."
    )
    write_table("latency", "Latency at batch 1: dense vs structured-pruned vs int8", header,
                rows, notes)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=MODELS, help="models to (re)run")
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    parser.add_argument("--retime", action="store_true", help="time the last run's files again")
    args = parser.parse_args()
    if not args.table:
        with cpu_lock():
            for model in args.only or MODELS:
                merge("latency", model, run(model, args.retime))
    table(load("latency"))


if __name__ == "__main__":
    main()
