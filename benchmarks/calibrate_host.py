"""Calibrate the `host` target's latency model from micro-benchmarks of single operators.

Each micro-benchmark is a one-node ONNX model of one operator class (conv of several shapes,
stem convs reading 1-3 channels, depthwise conv, gemm at batch 1, pooling, elementwise,
concat) run in ONNX Runtime at 1 and 2 intra-op threads with its per-node profiler on. The
node's own kernel time is the measurement: a one-node model also pays the layout reorders
ONNX Runtime adds at the graph's edges for its blocked NCHWc convolutions, which a node inside
a network does not (those reorders are timed as a class of their own, "reorder": a
network pays them where its layout changes). Per class a line  time = overhead + work / rate
is fitted (work: operations, convs counted on channels padded to ONNX Runtime's NCHWc blocks,
a broadcast op that runs on one of T threads counted T times, plus for convs
a cost per activation element; for gemm: bytes), giving the class's per-node overhead (at
least the dispatch cost), its efficiency (rate / peak), and for gemm the on-chip, cache and
DRAM bandwidths and the cache's effective size. Plain sessions give the session's fixed cost
(one Relu of one element) and the per-node dispatch cost (chains of 1 and 3 nearly free
Relus). Eleven reference workloads of 0.02-250 ms, timed like whole models, give the p90 curve
(p90 / median against the median), the p90 factor of DRAM-bound time, and the weight stall
(the share of weight streaming from DRAM that a conv's arithmetic does not hide).

Every probe is timed in several rounds, in a new shuffled order each round, and the times
are pooled: this shared VM's speed drifts by up to 1.5x for seconds to minutes at a time.
The zoo models are not used here; `benchmarks/emulation.py --part host` runs these same
probes interleaved with the zoo models and checks the fit against them.

    flock /tmp/sigdl-cpu.lock .venv/bin/python benchmarks/calibrate_host.py
    .venv/bin/python benchmarks/calibrate_host.py --refit   # refit the saved measurements

Writes benchmarks/results/calibration_host.json and the `calibrated:` block of
targets/host.yaml (between its BEGIN/END markers).
"""

from __future__ import annotations

import json
import random
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ROOT, machine
from services.retest.graph import analyze, apply_fusion
from services.retest.measure import node_kernels, open_session, query_times
from services.retest.predict import (
    channel_padding,
    layout_reorders,
    parallel_threads,
    predict_latency,
)

THREADS = (1, 2)
# Interleaved rounds: many short bursts per probe, so that every probe samples the VM's slow
# and fast spells in about the same proportion; each burst starts with >= 20 ms of warm-up
# (the previous probe left other weights in the caches and the thread pool asleep).
# 128 rounds: at 80, the p90 of the even and of the odd rounds of one run differed by more than
# 10% for one or two of the 12 (model, threads) pairs; the micro-benchmarks, whose medians
# settle sooner, run in every MICRO_EVERY-th round only (22 rounds)
ROUNDS = 128
MICRO_EVERY = 6
WARMUP_S = 0.02
REF_SECONDS, REF_QUERIES = 0.12, 2  # a burst of a reference workload (and of a zoo model)
CACHE_SPEEDUP = 1.5  # a gemv this much faster than DRAM streams from the cache
DISPATCH_CASE = "Relu 8x16"  # a node with almost no work
# written before each query of a "cold" probe: more than the L3 a model's other layers pass
# through the caches between two runs of one of its nodes (48 MB on the data sheet)
FLUSH_BYTES = 64 * 2**20
COLD_QUERIES = 3  # per burst of a cold probe (each query costs a flush)
CONV_CLASSES = ("conv", "pointwise", "conv_stem", "depthwise")  # fitted with activation cost
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


def cases() -> list[tuple[str, str, bytes]]:
    """(class, label, one-node ONNX model) of every micro-benchmark."""
    out = []
    # from 1.5-2.7 GFLOP layers (the largest a model runs) down to a few thousand MACs,
    # where a conv's fixed cost shows
    for c, size in [(64, 192), (96, 96), (384, 24), (32, 112), (64, 56), (128, 56), (256, 28),
                    (512, 14), (96, 27), (16, 16), (32, 8)]:  # fmt: skip
        out.append(("conv", f"conv3x3 {c}x{size}", conv_model(c, c, size, 3, 1, 1, 1)))
    for c_in, c_out, size in [
        (64, 64, 56),
        (128, 128, 28),
        (256, 256, 28),
        (512, 512, 14),
        (1024, 1024, 7),
        (256, 64, 28),
        (32, 128, 56),
        (64, 256, 56),
        (16, 32, 14),
    ]:
        out.append(("pointwise", f"conv1x1 {c_in}->{c_out}x{size}",
                    conv_model(c_in, c_out, size, 1, 1, 1, 1)))  # fmt: skip
    out.append(("conv", "conv5x5 48x27", conv_model(48, 48, 27, 5, 1, 1, 1)))
    out.append(("conv", "conv5x5 8x12", conv_model(8, 8, 12, 5, 1, 1, 1)))
    out.append(("conv", "conv3x3s2 64->128x56", conv_model(64, 128, 56, 3, 2, 1, 1)))
    for c_in, c_out, size, k, s in [
        (3, 32, 160, 3, 1),
        (3, 48, 192, 5, 2),
        (3, 64, 224, 7, 2),
        (3, 32, 224, 3, 2),
        (3, 48, 224, 9, 4),
        (1, 16, 32, 5, 1),
    ]:
        out.append(("conv_stem", f"stem {k}x{k}s{s} {c_in}->{c_out}x{size}",
                    conv_model(c_in, c_out, size, k, s, 1, 1)))  # fmt: skip
    for c, size, s in [
        (32, 112, 1),
        (128, 56, 1),
        (256, 28, 1),
        (512, 14, 1),
        (64, 112, 2),
        (256, 56, 2),
        (64, 7, 1),
    ]:
        out.append(("depthwise", f"dw3x3s{s} {c}x{size}", conv_model(c, c, size, 3, s, c, 1)))
    # gemm at batch 1 reads each weight once: <= L2 (on chip), 2-16 MB (in the L3 cache, when
    # it holds them between queries) and >> L3 (DRAM)
    for k, n_out in [(256, 256), (512, 256), (256, 1024), (512, 512), (1024, 512),
                     (1024, 1024), (2048, 1024), (2048, 2048), (8192, 4096), (16384, 4096),
                     (4096, 8192)]:  # fmt: skip
        out.append(("gemm", f"gemv {k}x{n_out}", gemm_model(k, n_out)))
    for op, c, size, k, s in [
        ("MaxPool", 64, 112, 2, 2),
        ("MaxPool", 128, 56, 3, 2),
        ("MaxPool", 256, 28, 2, 2),
        ("MaxPool", 16, 24, 2, 2),
        ("GlobalAveragePool", 512, 14, 0, 0),
        ("GlobalAveragePool", 1024, 7, 0, 0),
    ]:
        label = f"{op} {k}x{k}s{s} {c}x{size}" if k else f"{op} {c}x{size}"
        out.append(("pool", label, pool_model(op, c, size, k, s)))
    for op, c, size in [
        ("Relu", 64, 112),
        ("Sub", 3, 224),
        ("Div", 3, 224),
        ("Sub", 4, 194),  # as many elements as 3x224 in 4 spans (see parallel_threads)
        ("Add", 128, 28),
        ("Relu", 8, 16),
        ("Mul", 256, 56),
    ]:
        out.append(("elementwise", f"{op} {c}x{size}", eltwise_model(op, c, size, 1)))
    for c, size in [(64, 56), (128, 28), (256, 13), (16, 32)]:
        out.append(("data", f"concat {c}x{size}", concat_model(c, size)))
    return out


@dataclass
class Probe:
    """One model timed at one thread count in every round."""

    key: str
    model: bytes
    threads: int
    min_queries: int = 5
    min_seconds: float = 0.03
    max_queries: int = 100_000
    profiled: bool = False  # record ONNX Runtime's per-node kernel times too
    every: int = 1  # timed in every `every`-th round only
    cold: bool = False  # the caches flushed before each query (untimed)


@dataclass
class Timings:
    """What `run_rounds` measured: per probe, the query times (ms) of each round, and for
    profiled probes each node's kernel times (us) pooled over the rounds."""

    times: dict[str, list[np.ndarray]]
    kernels: dict[str, dict[str, dict]]  # probe -> node name -> {"op": op type, "us": [...]}

    def pooled(self, key: str) -> np.ndarray:
        return np.concatenate(self.times[key])


def run_rounds(probes: list[Probe], rounds: int, seed: int = 0) -> Timings:
    """Time every probe in every round, the probes in a new shuffled order each round: this
    VM's speed drifts (by up to 1.5x, for seconds to minutes at a time), and interleaving
    gives every probe the same mix of fast and slow spells."""
    with tempfile.TemporaryDirectory(prefix="sigdl-calib-") as tmp:
        sessions = {
            p.key: open_session(p.model, p.threads,
                                profile_prefix=f"{tmp}/{i}" if p.profiled else None)
            for i, p in enumerate(probes)
        }  # fmt: skip
        times: dict[str, list[np.ndarray]] = {p.key: [] for p in probes}
        order = list(probes)
        for r in range(rounds):
            random.Random(seed + r).shuffle(order)
            for p in (p for p in order if r % p.every == 0):
                sess, feed = sessions[p.key]
                times[p.key].append(query_times(
                    sess, feed, warmup=1, warmup_seconds=WARMUP_S, min_queries=p.min_queries,
                    min_seconds=p.min_seconds, max_queries=p.max_queries,
                    before_each=flush_caches if p.cold else None))  # fmt: skip
            print(f"  round {r + 1}/{rounds} done", flush=True)
        kernels = {p.key: node_kernels(sessions[p.key][0].end_profiling())
                   for p in probes if p.profiled}  # fmt: skip
    return Timings(times, kernels)


_FLUSH: list[np.ndarray] = []


def flush_caches() -> None:
    """Evict the caches: read and write FLUSH_BYTES of memory no model uses."""
    if not _FLUSH:
        _FLUSH.append(np.zeros(FLUSH_BYTES // 8))
    np.add(_FLUSH[0], 1.0, out=_FLUSH[0])


def calibration_probes() -> list[Probe]:
    """Per thread count: the session's fixed cost (one Relu of one element), the per-node
    dispatch cost (chains of 1 and 3 nearly free Relus), and every case three times:
    profiled, for its node's kernel time with the caches as the query before left them (a
    network small enough to stay in the caches), profiled with the caches flushed before each
    query (a node in a larger network, whose other layers evict its buffers and weights), and
    plain, for whole-query times without the profiler's cost."""
    probes = []
    for threads in THREADS:
        probes.append(Probe(f"fixed t{threads}", eltwise_model("Relu", 1, 1, 1), threads))
        for n in (1, 3):
            probes.append(Probe(f"dispatch t{threads} n{n}", eltwise_model("Relu", 8, 16, n),
                                threads))  # fmt: skip
        for klass, label, model in cases():
            probes.append(Probe(f"{label} t{threads}", model, threads, every=MICRO_EVERY))
            probes.append(Probe(f"{label} t{threads} profiled", model, threads, max_queries=100,
                                profiled=True, every=MICRO_EVERY))  # fmt: skip
            if klass != "gemm":  # gemm takes its whole plain query (see rows_from)
                probes.append(Probe(f"{label} t{threads} cold", model, threads, COLD_QUERIES,
                                    0.0, profiled=True, every=MICRO_EVERY, cold=True))  # fmt: skip
        for label, model in references():
            probes.append(Probe(f"{label} t{threads}", model, threads, REF_QUERIES, REF_SECONDS))
    return probes


def references() -> list[tuple[str, bytes]]:
    """Workloads timed like a whole model (bursts of REF_SECONDS), shortest first: one of
    ~0.02 ms, then compute-, cache- and DRAM-bound ones of 0.2-250 ms (one thread). The p90 /
    median ratios of the DRAM-bound ones give the DRAM factor, the others the p90 curve."""
    return [
        ("ref gemv 512x512", gemm_model(512, 512)),
        ("ref conv1x1 128x28", conv_model(128, 128, 28, 1, 1, 1, 1)),
        ("ref gemv 2048x2048", gemm_model(2048, 2048)),
        ("ref 8 x dw3x3 128x56", conv_model(128, 128, 56, 3, 1, 128, 8)),
        ("ref conv3x3 64x56", conv_model(64, 64, 56, 3, 1, 1, 1)),
        ("ref gemv 8192x4096", gemm_model(8192, 4096)),
        ("ref 6 x conv1x1 1024x7", conv_model(1024, 1024, 7, 1, 1, 1, 6)),
        ("ref 8 x conv3x3 128x28", conv_model(128, 128, 28, 3, 1, 1, 8)),
        ("ref gemv 16384x4096", gemm_model(16384, 4096)),
        ("ref 8 x conv3x3 128x56", conv_model(128, 128, 56, 3, 1, 1, 8)),
        ("ref 8 x conv3x3 128x112", conv_model(128, 128, 112, 3, 1, 1, 8)),
    ]


# chains of 8 convs: the conv class's per-operation rate inside a network (see fit_classes)
CHAIN_REFERENCES = ("ref 8 x conv3x3 128x28", "ref 8 x conv3x3 128x56", "ref 8 x conv3x3 128x112")
# compute-bound convs whose weights (25 MB) stream from DRAM each query: how much of that
# streaming the arithmetic does not hide (the weight stall)
STALL_REFERENCE = "ref 6 x conv1x1 1024x7"
# the references that stream their weights from DRAM (>> the cache): the p90 / median of
# DRAM-bound time, which other tenants' memory traffic gives a tail of its own
DRAM_REFERENCES = ("ref gemv 8192x4096", "ref gemv 16384x4096")


def rows_from(timings: Timings) -> tuple[list[dict], dict[int, dict]]:
    """Per case and thread count: the whole query's pooled median and p90, and the node's own
    time; per thread count the session's fixed cost and the per-node dispatch cost (ms).

    A node's own time is its profiled kernel time above that of a nearly free node (which is
    mostly the profiler's own cost), plus the dispatch cost; "node_cold_ms" the same with the
    caches flushed before each query. It leaves out the layout reorders ONNX Runtime adds at a
    one-node conv model's edges for its NCHWc convolutions: each of those is a row of class
    "reorder" of its own (the reorders predict.layout_reorders says the model has, matched by
    kind to the profiled ones). Gemm (no reorders; kernels of a few microseconds, which the
    profiler's cost would swamp) takes its whole query time less the session's fixed cost."""
    session = {}
    for t in THREADS:
        one, three = (float(np.median(timings.pooled(f"dispatch t{t} n{n}"))) for n in (1, 3))
        fixed = float(np.median(timings.pooled(f"fixed t{t}")))
        refs = {}  # (median ms, p90 / median) of each reference
        for label, _ in references():
            ms = timings.pooled(f"{label} t{t}")
            refs[label] = (float(np.median(ms)), float(np.percentile(ms, 90) / np.median(ms)))
        session[t] = {"fixed_ms": fixed,
                      "dispatch_ms": max((three - one) / 2, 0.0), "references": refs,
                      **p90_model(refs)}  # fmt: skip

    def kernel_ms(key: str, reorder: str | None = None) -> float:
        """The kernels' time (ms) of the probe's nodes, or of its `reorder` kind only."""

        def counted(op: str) -> bool:
            return op == reorder if reorder else not op.startswith("Reorder")

        return sum(float(np.median(n["us"])) for n in timings.kernels[key].values()
                   if counted(n["op"])) / 1e3  # fmt: skip

    def node_ms(label: str, threads: int, variant: str, reorder: str | None = None) -> float:
        # the profiler reports whole microseconds: a kernel can read below the nearly free
        # one, and a node never costs less than its dispatch
        nearly_free = kernel_ms(f"{DISPATCH_CASE} t{threads} {variant}")
        node = max(kernel_ms(f"{label} t{threads} {variant}", reorder) - nearly_free, 0.0)
        return max(node + session[threads]["dispatch_ms"], 1e-4)

    rows = []
    for threads in THREADS:
        for klass, label, model in cases():
            queries = timings.pooled(f"{label} t{threads}")
            t1, p90 = float(np.median(queries)), float(np.percentile(queries, 90))
            if klass == "gemm":
                hot = cold = max(t1 - session[threads]["fixed_ms"], 1e-4)
            else:
                hot, cold = (node_ms(label, threads, v) for v in ("profiled", "cold"))
            rows.append({"class": klass, "case": label, "threads": threads,
                         **work_of(model, klass, threads), "node_ms": hot, "node_cold_ms": cold,
                         "t1_ms": t1, "t1_p90_ms": p90, "queries": len(queries)})  # fmt: skip
            if klass not in CONV_CLASSES:
                continue
            ops = {n["op"] for n in timings.kernels[f"{label} t{threads} profiled"].values()}
            for node in reorders_of(model):
                if node.op_type in ops:
                    hot, cold = (node_ms(label, threads, v, node.op_type)
                                 for v in ("profiled", "cold"))  # fmt: skip
                    rows.append({"class": "reorder", "case": f"{label} {node.op_type}",
                                 "threads": threads, "work": float(node.ops),
                                 "acts": float(node.in_elems + node.out_elems), "node_ms": hot,
                                 "node_cold_ms": cold})  # fmt: skip
    return rows, session


def reorders_of(model: bytes) -> list:
    """The layout reorders the latency model says ONNX Runtime adds to `model`."""
    latency_model = host_latency_model()
    graph = analyze(onnx.load_from_string(model))
    apply_fusion(graph.nodes, latency_model.get("fuses", []))
    return layout_reorders(graph, latency_model.get("channel_block"))


def p90_model(refs: dict[str, tuple[float, float]]) -> dict:
    """The p90 curve and DRAM factor from the references' (median ms, p90 / median).

    Curve, over the references not bound by DRAM: the shortest one; the middle ones, whose
    ratios differ mostly by chance (each is the 90th percentile of a few dozen bursts): their
    median, flat over the times they span; the longest one (~0.2 s), whose queries average
    the VM's short stalls away. Flat beyond its ends. DRAM factor: the median ratio of the
    DRAM-bound references (absent when none was measured), and the geometric mean of their
    medians, the query time it was measured at (predict.p90_ms shrinks it for longer ones)."""
    compute = sorted(tuple(v) for label, v in refs.items() if label not in DRAM_REFERENCES)
    middle = float(np.median([ratio for _, ratio in compute[1:-1]]))
    points = [compute[0], (compute[1][0], middle), (compute[-2][0], middle), compute[-1]]
    out: dict = {"p90_curve": [[round(ms, 4), round(ratio, 3)] for ms, ratio in points]}
    dram = [refs[label] for label in DRAM_REFERENCES if label in refs]
    if dram:
        lengths, ratios = zip(*dram, strict=True)
        out["p90_dram_factor"] = round(float(np.median(ratios)), 3)
        out["p90_dram_ms"] = round(float(np.exp(np.mean(np.log(lengths)))), 4)
    return out


def host_latency_model() -> dict:
    """The host profile's latency model as written (channel block, broadcast spans)."""
    return yaml.safe_load(HOST_YAML.read_text())["latency_model"]


def work_of(model: bytes, klass: str, threads: int = 1) -> dict[str, float]:
    """The fit's x values for the class's nodes at `threads`. "work": operations, with the
    channels a blocked conv pads and, for a node that runs on fewer threads, scaled by how
    many fewer (as the prediction counts them); bytes for gemm. "acts": activation
    elements read and written, the second x for convolutions (a conv's loads, stores and
    layout work per element, which a stem reading 3 channels or a depthwise conv pays far
    more of per operation than a wide conv does)."""
    nodes = [n for n in analyze(onnx.load_from_string(model)).nodes if n.op_class == klass]
    acts = float(sum(n.in_elems + n.out_elems for n in nodes))
    if klass == "gemm":
        work = sum(4 * (n.weight_elems + n.in_elems + n.out_elems) for n in nodes)
    else:
        latency = host_latency_model()
        params = {"threads": threads, **latency}
        work = sum(n.total_ops * channel_padding(n, latency.get("channel_block"))
                   * threads / parallel_threads(n, params) for n in nodes)  # fmt: skip
    return {"work": float(work), "acts": acts}


def fit_conv(rows: list[dict], floor_ms: float) -> tuple[float, float, float]:
    """(intercept ms, ms per operation, ms per activation element) of
    time = intercept + ops x b + activation elements x c,  least relative error, with the
    intercept at least `floor_ms`, b > 0 and c >= 0: of the fits meeting those bounds (all
    three free; intercept pinned; c dropped; both) the one with the least error."""
    x = np.array([[1.0, r["work"], r["acts"]] for r in rows])
    t = np.array([r["node_ms"] for r in rows])
    best = None
    for pinned in (False, True):
        for with_acts in (True, False):
            cols = [c for c in (0, 1, 2) if not (pinned and c == 0) and (with_acts or c != 2)]
            target = t - (floor_ms if pinned else 0.0)
            coef, *_ = np.linalg.lstsq(x[:, cols] / t[:, None], target / t, rcond=None)
            params = dict.fromkeys((0, 1, 2), 0.0) | dict(zip(cols, coef, strict=True))
            if pinned:
                params[0] = floor_ms
            a, b, c = params[0], params[1], params[2]
            if a < floor_ms - 1e-12 or b <= 0 or c < 0:
                continue
            error = float(np.sum(((x @ np.array([a, b, c])) / t - 1) ** 2))
            if best is None or error < best[0]:
                best = (error, (float(a), float(b), float(c)))
    if best is None:  # no feasible fit: the plain line
        a, b = fit_line(rows, floor_ms)
        return a, b, 0.0
    return best[1]


def fit_line(rows: list[dict], floor_ms: float, relative: bool = True) -> tuple[float, float]:
    """(intercept ms, slope ms per unit of work) of  time = intercept + work x slope: least
    relative error (or least squares), the intercept at least `floor_ms` (the dispatch cost
    of a node with almost no work) and the slope positive."""
    x = np.array([r["work"] for r in rows])
    t = np.array([r["node_ms"] for r in rows])
    w = 1 / t if relative else np.ones_like(t)
    (a, b), *_ = np.linalg.lstsq(np.stack([w, x * w], axis=1), t * w, rcond=None)
    if a < floor_ms or b <= 0:  # pin the intercept at the floor, fit the slope alone
        a = floor_ms
        b = float(np.sum(w * w * x * (t - a)) / np.sum(w * w * x * x))
    return float(a), float(b)


def fit_bandwidth(rows: list[dict], intercept_ms: float) -> float:
    """Bytes per second of  time = intercept + bytes / bandwidth, least squares: the cases
    moving the most bytes, where the bandwidth shows most clearly, weigh the most."""
    x = np.array([r["work"] for r in rows])
    t = np.array([r["node_ms"] for r in rows]) - intercept_ms
    return float(np.sum(x * x) / np.sum(x * t)) * 1e3


def cache_level(gemm: list[dict], onchip_bytes: float, cache_bytes: float, dram_bps: float,
                dispatch: float) -> tuple[float, float | None]:  # fmt: skip
    """The shared cache's effective size (bytes) and bandwidth: the gemv cases above the
    on-chip size that still stream at >= CACHE_SPEEDUP x DRAM bandwidth, smallest first (the
    cache is shared with other data and, on a VM, other tenants: its effective size is
    measured, not read off the data sheet). (0, None) when none does."""
    cached = []
    for r in sorted((r for r in gemm if onchip_bytes < r["work"] <= cache_bytes),
                    key=lambda r: r["work"]):  # fmt: skip
        if r["work"] / max(r["node_ms"] - dispatch, 1e-6) * 1e3 < CACHE_SPEEDUP * dram_bps:
            break
        cached.append(r)
    if not cached:
        return 0, None
    return max(r["work"] for r in cached), fit_bandwidth(cached, dispatch)


def chain_rows(session: dict) -> list[dict]:
    """One conv of each chained reference (8 identical 3x3 convs, each reading what the one
    before wrote, as in a network; timed in every round): its work, and its time as the
    chain's median less the session's fixed cost, over 8 (the two layout reorders at the
    chain's ends take under 1% of it)."""
    rows = []
    for label, model in references():
        if label in CHAIN_REFERENCES and label in session["references"]:
            per_node = {key: value / 8 for key, value in work_of(model, "conv").items()}
            ms = (session["references"][label][0] - session["fixed_ms"]) / 8
            rows.append({"case": label, **per_node, "node_ms": ms})
    return rows


def calibrate(rows: list[dict], session: dict, threads: int, peak_gops_per_core: float,
              onchip_bytes: float, cache_bytes: float) -> dict:  # fmt: skip
    """One thread count's calibrated block (efficiency, overheads, bandwidths, p90 model)."""
    dispatch = session["dispatch_ms"]
    chains = chain_rows(session)
    eff, overhead, per_act = fit_classes(rows, dispatch, threads, peak_gops_per_core, chains)
    gemm = [r for r in rows if r["class"] == "gemm"]
    # gemm: a fixed cost per node, then bytes at the bandwidth of where the weights sit
    a_gemm, b_on = fit_line([r for r in gemm if r["work"] <= onchip_bytes], dispatch, False)
    onchip_bps = 1e3 / b_on  # b: ms per byte
    # beyond the data sheet's cache size, weights come from DRAM even when hot
    dram_bps = fit_bandwidth([r for r in gemm if r["work"] > cache_bytes], a_gemm)
    cached_bytes, cache_bps = cache_level(gemm, onchip_bytes, cache_bytes, dram_bps, a_gemm)
    eff["gemm"] = eff["conv"]  # the same SGEMM kernels; at batch 1 gemm is bandwidth-bound
    overhead["gemm"] = round(a_gemm * 1e3, 2)
    block = {
        "efficiency": eff, "overhead_us": overhead, "activation_ns": per_act,
        "onchip_bandwidth_gbs": round(onchip_bps / 1e9, 2),
        "bandwidth_gbs": round(dram_bps / 1e9, 2),
        "cache_kb": round(cached_bytes / 1024),
    }  # fmt: skip
    if cache_bps:
        block["cache_bandwidth_gbs"] = round(cache_bps / 1e9, 2)
    if all("node_cold_ms" in r for r in rows):  # runs before the cold probes have none
        cold = [{**r, "node_ms": r["node_cold_ms"]} for r in rows]
        fitted = fit_classes(cold, dispatch, threads, peak_gops_per_core, chains)
        block["cold"] = dict(zip(("efficiency", "overhead_us", "activation_ns"), fitted,
                                 strict=True))  # fmt: skip
    block["p90_curve"] = session["p90_curve"]
    for key in ("p90_dram_factor", "p90_dram_ms"):
        if key in session:
            block[key] = session[key]
    if STALL_REFERENCE in session["references"]:
        block["weight_stall"] = weight_stall(block, session, threads)
    block["fixed_overhead_us"] = round(session["fixed_ms"] * 1e3, 2)
    # ONNX Runtime dispatches a Flatten or Reshape like any node: a nearly free node's cost
    block["free_node_us"] = round(dispatch * 1e3, 2)
    return block


def fit_classes(
    rows: list[dict], dispatch: float, threads: int, peak_gops_per_core: float, chains: list[dict]
) -> tuple[dict, dict, dict]:
    """Per class but gemm: efficiency (of peak), overhead (us) and, for convolutions, the
    per-activation-element cost (ns) of the rows' node times. The conv class's rate per
    operation is then scaled to the median of the `chains` (chain_rows): at two threads
    one-node convs of 0.9-2.7 GFLOP ran at 203-228 Gop/s, the same convs chained at
    222-245 Gop/s, and VGG-16's in the network as fast as the chains."""
    peak = peak_gops_per_core * threads * 1e9  # ops/s
    eff, overhead, per_act = {}, {}, {}
    for klass in (*CONV_CLASSES, "pool", "elementwise", "data", "reorder"):
        measured = [r for r in rows if r["class"] == klass]
        if not measured:  # runs before the reorder rows have none
            continue
        if klass in CONV_CLASSES:
            a, b, c = fit_conv(measured, dispatch)  # b: ms per op, c: ms per element
            if klass == "conv" and chains:
                b *= float(np.median([(r["node_ms"] - a - c * r["acts"]) / (b * r["work"])
                                      for r in chains]))  # fmt: skip
            per_act[klass] = round(c * 1e6, 5)  # ns
        else:
            a, b = fit_line(measured, dispatch)
        # a class whose nodes cost no more than their overhead reaches peak (capped)
        eff[klass] = round(min((1e3 / b) / peak, 1.0), 5) if b > 0 else 1.0
        overhead[klass] = round(a * 1e3, 2)
    return eff, overhead, per_act


def weight_stall(block: dict, session: dict, threads: int) -> float:
    """The weight stall that makes the stall reference's predicted median its measured one:
    the prediction is linear in the stall, so two predictions (stall 0 and 1) give it,
    clipped to [0, 1]."""
    profile = yaml.safe_load(HOST_YAML.read_text())
    model = dict(references())[STALL_REFERENCE]
    times = []
    for stall in (0.0, 1.0):
        profile["latency_model"]["calibrated"] = {str(threads): {**block, "weight_stall": stall}}
        times.append(predict_latency(analyze(onnx.load_from_string(model)), profile, "fp32",
                                     threads)["latency_ms"])  # fmt: skip
    measured = session["references"][STALL_REFERENCE][0]
    if times[1] <= times[0]:
        return 0.0
    return round(float(np.clip((measured - times[0]) / (times[1] - times[0]), 0.0, 1.0)), 3)


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


def fit(rows: list[dict], session: dict[int, dict]) -> dict:
    """The calibrated block per thread count."""
    profile = yaml.safe_load(HOST_YAML.read_text())
    peak_per_core = profile["compute"]["peak_gops"]["fp32"] / profile["compute"]["cores"]
    onchip, cache = (profile["memory"][key] * 1024 for key in ("onchip_kb", "cache_kb"))
    block = {}
    for t in THREADS:
        measured = [r for r in rows if r["threads"] == t]
        block[str(t)] = calibrate(measured, session[t], t, peak_per_core, onchip, cache)
    return block


def save(rows: list[dict], session: dict[int, dict], rounds: int) -> dict:
    """Fit, write results/calibration_host.json and the host profile's calibrated block."""
    block = fit(rows, session)
    doc = {"machine": machine(), "rounds": rounds, "session": session, "calibrated": block,
           "rows": rows}  # fmt: skip
    (RESULTS / "calibration_host.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_host_yaml(block)
    return block


def load_saved() -> tuple[list[dict], dict[int, dict], int]:
    """The measurements of the last run (results/calibration_host.json), with each case's
    work and the p90 model recomputed as this code counts them."""
    doc = json.loads((RESULTS / "calibration_host.json").read_text())
    work = {(label, t): work_of(model, klass, t) for klass, label, model in cases()
            for t in THREADS}  # fmt: skip
    rows = [{**row, **work.get((row["case"], row["threads"]), {})} for row in doc["rows"]]
    session = {}
    for t, values in doc["session"].items():
        refs = {label: tuple(v) for label, v in values["references"].items()}
        session[int(t)] = {**values, **p90_model(refs)}
    return rows, session, doc["rounds"]


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--refit",
        action="store_true",
        help="refit from results/calibration_host.json without measuring",
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds")
    args = parser.parse_args()
    if args.refit:
        rows, session, rounds = load_saved()
    else:
        rows, session = rows_from(run_rounds(calibration_probes(), args.rounds))
        rounds = args.rounds
    print(json.dumps(save(rows, session, rounds), indent=2))


if __name__ == "__main__":
    main()
