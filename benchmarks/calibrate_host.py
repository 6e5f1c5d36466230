"""Calibrate the `host` target's latency model from micro-benchmarks of single operators.

Each micro-benchmark is a tiny ONNX model of one operator class (conv of several shapes, stem
convs reading 1-3 channels, depthwise conv, gemm at batch 1, pooling, elementwise) timed in
ONNX Runtime at 1 and 2 intra-op threads (single-stream, median of many queries). Per class a
straight line  time = overhead + work / rate  is fitted (work: operations; for gemm: bytes),
giving the class's efficiency (rate / peak) and the on-chip and DRAM bandwidths; the per-node
overhead is the runtime's dispatch cost, timed on a chain of nodes with almost no work.
Measurements whose p90 is far above their median (another job took the core) are left out.
The zoo models are not used here; `benchmarks/emulation.py` checks the result against them.

Where ONNX Runtime runs convolutions in its blocked NCHWc layout it adds layout reorders at
the edges of the graph, which a node inside a real network does not pay. Shape-preserving
operators are therefore timed as chains of 1 and 3 copies, the difference being the per-node
time; the chains' remainders give the session's fixed cost plus the reorder cost per element,
which is then taken out of the single-node timings of the other operators.

    flock /tmp/sigdl-cpu.lock .venv/bin/python benchmarks/calibrate_host.py
    .venv/bin/python benchmarks/calibrate_host.py --refit   # refit the saved measurements

Writes benchmarks/results/calibration_host.json and the `calibrated:` block of
targets/host.yaml (between its BEGIN/END markers).
"""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ROOT, machine
from services.retest.graph import analyze
from services.retest.measure import single_stream

THREADS = (1, 2)
L3_BYTES = 48 * 2**20  # gemm weights beyond this come from DRAM even when hot
DISTURBED = 1.5  # p90 / median above this: the measurement shared the core with another job
DISPATCH_CASE = "Relu 8x16"  # a chain of nodes with almost no work: the per-node dispatch cost
RNG = np.random.default_rng(0)
HOST_YAML = ROOT / "targets" / "host.yaml"


def _model(nodes: list, inits: list, in_shape: list[int], out_shape: list[int]) -> bytes:
    graph = helper.make_graph(
        nodes, "micro",
        [helper.make_tensor_value_info("x0", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _init(name: str, shape: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.05).astype(np.float32), name)


def conv_model(c_in: int, c_out: int, size: int, k: int, stride: int, group: int, n: int):
    """`n` chained Conv+Relu nodes (n > 1 only when the conv keeps the shape)."""
    nodes, inits, c, s = [], [], c_in, size
    for i in range(n):
        pad = k // 2
        nodes.append(helper.make_node(
            "Conv", [f"x{2 * i}", f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[k, k],
            strides=[stride, stride], pads=[pad] * 4, group=group))  # fmt: skip
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"x{2 * i + 2}"]))
        inits += [_init(f"w{i}", [c_out, c // group, k, k]), _init(f"b{i}", [c_out])]
        c, s = c_out, (s + 2 * pad - k) // stride + 1
    return _model(nodes, inits, [1, c_in, size, size], [1, c, s, s])


def gemm_model(k: int, n: int) -> bytes:
    node = helper.make_node("Gemm", ["x0", "w", "b"], ["y"], transB=1)
    return _model([node], [_init("w", [n, k]), _init("b", [n])], [1, k], [1, n])


def pool_model(op: str, c: int, size: int, k: int, stride: int) -> bytes:
    if op == "GlobalAveragePool":
        node, out = helper.make_node(op, ["x0"], ["y"]), 1
    else:
        node = helper.make_node(op, ["x0"], ["y"], kernel_shape=[k, k], strides=[stride] * 2)
        out = (size - k) // stride + 1
    return _model([node], [], [1, c, size, size], [1, c, out, out])


def eltwise_model(op: str, c: int, size: int, n: int) -> bytes:
    """`n` chained elementwise nodes; binary ops take a per-channel constant (like Sub/Div)."""
    nodes, inits = [], []
    for i in range(n):
        if op == "Relu":
            nodes.append(helper.make_node(op, [f"x{i}"], [f"x{i + 1}"]))
        else:
            nodes.append(helper.make_node(op, [f"x{i}", f"k{i}"], [f"x{i + 1}"]))
            inits.append(numpy_helper.from_array(np.full([1, c, 1, 1], 0.5, np.float32), f"k{i}"))
    return _model(nodes, inits, [1, c, size, size], [1, c, size, size])


def concat_model(c: int, size: int) -> bytes:
    node = helper.make_node("Concat", ["x0", "x0"], ["y"], axis=1)
    return _model([node], [], [1, c, size, size], [1, 2 * c, size, size])


# (class, label, builder of the n-node model, chainable)
def cases() -> list[tuple[str, str, object, bool]]:
    out = []
    for c, size in [(32, 112), (64, 56), (128, 56), (256, 28), (512, 14), (96, 27)]:
        out.append(("conv", f"conv3x3 {c}x{size}", lambda n, c=c, s=size: conv_model(
            c, c, s, 3, 1, 1, n), True))  # fmt: skip
    for c_in, c_out, size in [
        (64, 64, 56),
        (128, 128, 28),
        (256, 256, 28),
        (512, 512, 14),
        (1024, 1024, 7),
        (256, 64, 28),
        (32, 128, 56),
        (64, 256, 56),
    ]:
        out.append(("pointwise", f"conv1x1 {c_in}->{c_out}x{size}", lambda n, a=c_in, b=c_out,
                    s=size: conv_model(a, b, s, 1, 1, 1, n), c_in == c_out))  # fmt: skip
    out.append(("conv", "conv5x5 48x27", lambda n: conv_model(48, 48, 27, 5, 1, 1, n), True))
    out.append(("conv", "conv3x3s2 64->128x56", lambda n: conv_model(64, 128, 56, 3, 2, 1, n),
                False))  # fmt: skip
    for c_in, c_out, size, k, s in [
        (3, 32, 160, 3, 1),
        (3, 48, 192, 5, 2),
        (3, 64, 224, 7, 2),
        (3, 32, 224, 3, 2),
        (3, 48, 224, 9, 4),
        (1, 16, 32, 5, 1),
    ]:
        out.append(("conv_stem", f"stem {k}x{k}s{s} {c_in}->{c_out}x{size}", lambda n, a=c_in,
                    b=c_out, z=size, k=k, s=s: conv_model(a, b, z, k, s, 1, n), False))  # fmt: skip
    for c, size, s in [
        (32, 112, 1),
        (128, 56, 1),
        (256, 28, 1),
        (512, 14, 1),
        (64, 112, 2),
        (256, 56, 2),
    ]:
        out.append(("depthwise", f"dw3x3s{s} {c}x{size}", lambda n, c=c, z=size, s=s: conv_model(
            c, c, z, 3, s, c, n), s == 1))  # fmt: skip
    # gemm at batch 1 reads its weights once: <= L2 (on chip) and >> L3 (DRAM)
    for k, n_out in [(256, 256), (512, 256), (256, 1024), (512, 512), (8192, 4096),
                     (16384, 4096), (4096, 8192)]:  # fmt: skip
        out.append(("gemm", f"gemv {k}x{n_out}", lambda n, k=k, m=n_out: gemm_model(k, m), False))
    for op, c, size, k, s in [
        ("MaxPool", 64, 112, 2, 2),
        ("MaxPool", 128, 56, 3, 2),
        ("MaxPool", 256, 28, 2, 2),
        ("MaxPool", 16, 24, 2, 2),
        ("GlobalAveragePool", 512, 14, 0, 0),
        ("GlobalAveragePool", 1024, 7, 0, 0),
    ]:
        out.append(("pool", f"{op} {k}x{k}s{s} {c}x{size}", lambda n, o=op, c=c, z=size, k=k,
                    s=s: pool_model(o, c, z, k, s), False))  # fmt: skip
    for op, c, size in [
        ("Relu", 64, 112),
        ("Sub", 3, 224),
        ("Div", 3, 224),
        ("Add", 128, 28),
        ("Relu", 8, 16),
        ("Mul", 256, 56),
    ]:
        out.append(("elementwise", f"{op} {c}x{size}", lambda n, o=op, c=c, z=size: eltwise_model(
            o, c, z, n), True))  # fmt: skip
    for c, size in [(64, 56), (128, 28), (256, 13), (16, 32)]:
        out.append(("data", f"concat {c}x{size}", lambda n, c=c, z=size: concat_model(c, z), False))
    return out


def time_ms(model: bytes, threads: int) -> tuple[float, float]:
    """(median, p90) ms of single-stream queries."""
    stats = single_stream(model, threads, warmup=10, min_queries=60, min_seconds=0.4)
    return stats.p50_ms, stats.p90_ms


def work_of(model: bytes, klass: str) -> float:
    """The fit's x: operations of the class's nodes (bytes for gemm)."""
    nodes = [n for n in analyze(onnx.load_from_string(model)).nodes if n.op_class == klass]
    if klass == "gemm":
        return float(sum(4 * (n.weight_elems + n.in_elems + n.out_elems) for n in nodes))
    return float(sum(n.total_ops for n in nodes))


def reorder_elems(model: bytes) -> int:
    """Elements ONNX Runtime reorders into / out of its NCHWc layout at the model's edges (read
    off its optimized graph): a node inside a network pays none of this."""
    with tempfile.TemporaryDirectory(prefix="sigdl-calib-") as tmp:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        ops = {node.op_type for node in onnx.load(opts.optimized_model_filepath).graph.node}
    graph = onnx.load_from_string(model).graph
    elems = [math.prod(d.dim_value for d in v.type.tensor_type.shape.dim)
             for v in (graph.input[0], graph.output[0])]  # fmt: skip
    return elems[0] * ("ReorderInput" in ops) + elems[1] * ("ReorderOutput" in ops)


def measure_cases(threads: int, fixed_ms: float) -> list[dict]:
    rows = []
    for klass, label, build, chainable in cases():
        one = build(1)
        t1, p90 = time_ms(one, threads)
        if chainable:  # per-node time from the difference of a 3-chain and a 1-chain
            t3, _ = time_ms(build(3), threads)
            per_node = (t3 - t1) / 2
        else:
            per_node = t1 - fixed_ms
        row = {"class": klass, "case": label, "threads": threads, "work": work_of(one, klass)}
        row.update(chained=chainable, reorder_elems=reorder_elems(one), t1_ms=t1,
                   node_ms=max(per_node, 1e-4), p90_over_p50=p90 / t1)  # fmt: skip
        rows.append(row)
        print(f"  t={threads} {klass:11} {label:28} {rows[-1]['node_ms']:.4f} ms", flush=True)
    return rows


def fit_slope(rows: list[dict], intercept_ms: float) -> float:
    """Slope (ms per unit of work) of  time = intercept + work x slope, least relative error.

    The intercept is not fitted: it is the runtime's per-node dispatch cost, measured once,
    because a free intercept fitted on a handful of noisy shapes swings to absurd values."""
    x = np.array([r["work"] for r in rows])
    t = np.array([r["node_ms"] for r in rows])
    return float(np.sum(x * (t - intercept_ms) / t**2) / np.sum(x**2 / t**2))


def undisturbed(rows: list[dict]) -> list[dict]:
    """Rows whose p90 stayed near their median: a far larger p90 means another process took
    the core during the measurement (the machine is shared)."""
    return [r for r in rows if r["p90_over_p50"] <= DISTURBED]


def remove_reorders(rows: list[dict], fixed_ms: float) -> float:
    """Take the NCHWc reorders out of single-node timings; return the reorder cost (ms/elem).

    A chained case's first-node time minus its per-node time is the session's fixed cost plus
    its reorders; a line through the origin over those gives the cost per reordered element."""
    chained = [r for r in undisturbed(rows) if r["chained"] and r["reorder_elems"]]
    x = np.array([r["reorder_elems"] for r in chained], dtype=float)
    y = np.array([r["t1_ms"] - r["node_ms"] - fixed_ms for r in chained])
    per_elem = float(np.sum(x * y) / np.sum(x * x))
    for r in rows:
        if not r["chained"]:
            r["node_ms"] = max(r["t1_ms"] - fixed_ms - r["reorder_elems"] * per_elem, 1e-4)
    return per_elem


def calibrate(rows: list[dict], threads: int, peak_gops_per_core: float, onchip_bytes: float):
    """One thread count's calibrated block (efficiency, overheads, bandwidths)."""
    peak = peak_gops_per_core * threads * 1e9  # ops/s
    # the dispatch case lasts ~1 us, where timer jitter alone spreads p90 from the median
    tiny = [r["node_ms"] for r in rows if r["case"] == DISPATCH_CASE]
    rows = undisturbed(rows)
    dispatch = float(np.median(tiny)) if tiny else 0.0
    eff = {}
    for klass in ("conv", "pointwise", "conv_stem", "depthwise", "pool", "elementwise", "data"):
        b = fit_slope([r for r in rows if r["class"] == klass], dispatch)
        # a class whose nodes are nearly free once the reorders are out can fit above peak,
        # which no node reaches
        eff[klass] = round(min((1e3 / b) / peak, 1.0), 5) if b > 0 else 1.0  # b: ms per op
    gemm = [r for r in rows if r["class"] == "gemm"]
    b_on = fit_slope([r for r in gemm if r["work"] <= onchip_bytes], dispatch)
    b_dram = fit_slope([r for r in gemm if r["work"] > L3_BYTES], dispatch)
    eff["gemm"] = eff["conv"]  # the same SGEMM kernels; at batch 1 gemm is bandwidth-bound
    return {
        "efficiency": eff, "overhead_us": {k: round(dispatch * 1e3, 2) for k in eff},
        "onchip_bandwidth_gbs": round(1e3 / b_on / 1e9, 2),  # b: ms per byte
        "bandwidth_gbs": round(1e3 / b_dram / 1e9, 2),
        "p90_factor": round(float(np.median([r["p90_over_p50"] for r in rows])), 3),
    }  # fmt: skip


def write_host_yaml(block: dict) -> None:
    """Replace the calibrated block of targets/host.yaml, keeping every comment."""
    text = HOST_YAML.read_text()
    lines = ["  calibrated:"]
    for threads, values in block.items():
        lines.append(f'    "{threads}":')
        for key, value in values.items():
            lines.append(f"      {key}: {json.dumps(value)}")
    new = re.sub(
        r"(  # BEGIN calibrated[^\n]*\n).*?(  # END calibrated)",
        lambda m: m.group(1) + "\n".join(lines) + "\n" + m.group(2), text, flags=re.S,
    )  # fmt: skip
    HOST_YAML.write_text(new)


def main() -> None:
    import argparse

    import yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--refit",
        action="store_true",
        help="refit from results/calibration_host.json without measuring",
    )
    args = parser.parse_args()
    profile = yaml.safe_load(HOST_YAML.read_text())
    peak_per_core = profile["compute"]["peak_gops"]["fp32"] / profile["compute"]["cores"]
    onchip = profile["memory"]["onchip_kb"] * 1024
    if args.refit:
        doc = json.loads((RESULTS / "calibration_host.json").read_text())
        rows, fixed = doc["rows"], {int(t): v / 1e3 for t, v in doc["fixed_overhead_us"].items()}
    else:
        rows, fixed = measure_all()
    if any("chained" not in r for r in rows):  # saved before these fields existed
        built = {label: (build(1), chain) for _, label, build, chain in cases()}
        for r in rows:
            r["chained"] = built[r["case"]][1]
            r["reorder_elems"] = reorder_elems(built[r["case"]][0])
    block, reorder = {}, {}
    for threads in THREADS:
        measured = [r for r in rows if r["threads"] == threads]
        reorder[threads] = remove_reorders(measured, fixed[threads])
        block[str(threads)] = calibrate(measured, threads, peak_per_core, onchip)
        block[str(threads)]["fixed_overhead_us"] = round(fixed[threads] * 1e3, 2)
    doc = {"machine": machine(), "fixed_overhead_us": {t: v * 1e3 for t, v in fixed.items()},
        "reorder_ns_per_elem": {t: v * 1e6 for t, v in reorder.items()},
           "calibrated": block, "rows": rows}  # fmt: skip
    (RESULTS / "calibration_host.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_host_yaml(block)
    print(json.dumps(block, indent=2))


def measure_all() -> tuple[list[dict], dict[int, float]]:
    """Every case at every thread count, and the session's fixed cost (ms) per thread count."""
    trivial = eltwise_model("Relu", 1, 1, 1)
    rows, fixed = [], {}
    for threads in THREADS:
        fixed[threads] = time_ms(trivial, threads)[0]
        print(f"threads {threads}: fixed session cost {fixed[threads] * 1e3:.1f} us", flush=True)
        rows += measure_cases(threads, fixed[threads])
    return rows, fixed


if __name__ == "__main__":
    main()
