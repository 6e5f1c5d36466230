"""Micro-benchmarks of single operators for the host calibration: the ONNX models, the probes,
the interleaved timing rounds and the rows the fit reads (services/retest/fit.py).

Each micro-benchmark is a one-node ONNX model of one operator class (conv of several shapes,
stem convs reading 1-3 channels, depthwise conv, gemm at batch 1, pooling, elementwise,
concat, and the DFTs of the `fft-conv` rewrite, services/compression/fft_onnx.py) run in ONNX
Runtime at 1 and 2 intra-op threads with its per-node profiler on. The
node's own kernel time is the measurement: a one-node model also pays the layout reorders
ONNX Runtime adds at the graph's edges for its blocked NCHWc convolutions, which a node inside
a network does not (those reorders are timed as a class of their own, "reorder"). Plain
sessions give the session's fixed cost (one Relu of one element) and the per-node dispatch
cost (chains of 1 and 3 nearly free Relus). Eleven reference workloads of 0.02-250 ms, timed
like whole models, give the p90 curve, the p90 factor of DRAM-bound time and the weight stall.

Every probe is timed in several rounds, in a new shuffled order each round, and the times
are pooled: a shared VM's speed drifts by up to 1.5x for seconds to minutes at a time.

    timings = run_rounds(calibration_probes(), rounds=24)
    rows, session = rows_from(timings, profile["latency_model"])
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.retest.graph import analyze, apply_fusion
from services.retest.measure import node_kernels, open_session, query_times
from services.retest.predict import channel_padding, layout_reorders, parallel_threads
from sigdl.core.errors import InputError

THREADS = (1, 2)  # intra-op thread counts calibrated by default

# Interleaved rounds: many short bursts per probe, so that every probe samples the VM's slow
# and fast spells in about the same proportion; each burst starts with >= 20 ms of warm-up
# (the previous probe left other weights in the caches and the thread pool asleep).
# 128 rounds (benchmarks/calibrate_host.py): at 80, the p90 of the even and of the odd rounds of
# one run differed by more than 10% for one or two of the 12 (model, threads) pairs; the
# micro-benchmarks, whose medians settle sooner, run in every MICRO_EVERY-th round only
# (22 rounds)
ROUNDS = 128
MICRO_EVERY = 6
WARMUP_S = 0.02
REF_SECONDS, REF_QUERIES = 0.12, 2  # a burst of a reference workload (and of a zoo model)
DISPATCH_CASE = "Relu 8x16"  # a node with almost no work
# written before each query of a "cold" probe: more than the L3 a model's other layers pass
# through the caches between two runs of one of its nodes (48 MB on the data sheet)
FLUSH_BYTES = 64 * 2**20
COLD_QUERIES = 3  # per burst of a cold probe (each query costs a flush)
CONV_CLASSES = ("conv", "pointwise", "conv_stem", "depthwise")  # have layout reorders
# fitted with a cost per activation element as well as per operation (fit.fit_conv): a conv's
# loads, stores and layout work; a DFT's per-transform setup (ORT's Bluestein allocates and
# clears two buffers per transform)
PER_ELEMENT_CLASSES = (*CONV_CLASSES, "dft")
RNG = np.random.default_rng(0)


def _model(
    nodes: list, inits: list, in_shape: list[int], out_shape: list[int], opset: int = 17
) -> bytes:
    graph = helper.make_graph(
        nodes, "micro",
        [helper.make_tensor_value_info("x0", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 20 else 9
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


def dft_model(shape: list[int], n: int, axis: int, onesided: bool, inverse: bool) -> bytes:
    """One opset-20 DFT node of length `n` along `axis` of `shape` (last axis: 1 for a real
    input, 2 for a complex one), as the fft-conv rewrite writes them."""
    node = helper.make_node("DFT", ["x0", "n", "axis"], ["y"], onesided=int(onesided),
                            inverse=int(inverse))  # fmt: skip
    inits = [numpy_helper.from_array(np.array(v, np.int64), name)
             for name, v in (("n", n), ("axis", axis))]  # fmt: skip
    out = list(shape)
    out[axis] = n // 2 + 1 if onesided and not inverse else n
    out[-1] = 1 if onesided and inverse else 2
    return _model([node], inits, list(shape), out, opset=20)


# The DFTs of the fft-conv rewrite (fft_onnx.py) of LeNet-5's convolutions (grids 28x28 and
# 12x12: Bluestein lengths) and of a 64-channel conv on a 32x32 grid (a power of two): per
# layer a one-sided real DFT along W, a complex one along H, the inverse along H and the
# one-sided inverse along W (a real output), on (B, C, H, W, 1 or 2)
DFT_CASES = [
    ("rfft W", [1, 1, 28, 28, 1], 28, 3, True, False),
    ("fft H", [1, 1, 28, 15, 2], 28, 2, False, False),
    ("ifft H", [1, 20, 28, 15, 2], 28, 2, False, True),
    ("irfft W", [1, 20, 28, 15, 2], 28, 3, True, True),
    ("rfft W", [1, 20, 12, 12, 1], 12, 3, True, False),
    ("fft H", [1, 20, 12, 7, 2], 12, 2, False, False),
    ("ifft H", [1, 50, 12, 7, 2], 12, 2, False, True),
    ("irfft W", [1, 50, 12, 7, 2], 12, 3, True, True),
    ("rfft W", [1, 64, 32, 32, 1], 32, 3, True, False),
    ("ifft H", [1, 64, 32, 17, 2], 32, 2, False, True),
    ("irfft W", [1, 64, 32, 17, 2], 32, 3, True, True),
]


# the classes cases() has micro-benchmarks of
CASE_CLASSES = (
    "conv", "pointwise", "conv_stem", "depthwise", "gemm", "pool", "elementwise", "data", "dft",
)  # fmt: skip


def cases(only: str | None = None) -> list[tuple[str, str, bytes]]:
    """(class, label, one-node ONNX model) of every micro-benchmark, or of class `only`'s
    (without building the others' models: the large gemv weights take seconds)."""
    out = []

    def add(klass: str, label: str, build: Callable[..., bytes], *args) -> None:
        if only is None or klass == only:
            out.append((klass, label, build(*args)))

    # from 1.5-2.7 GFLOP layers (the largest a model runs) down to a few thousand MACs,
    # where a conv's fixed cost shows
    for c, size in [(64, 192), (96, 96), (384, 24), (32, 112), (64, 56), (128, 56), (256, 28),
                    (512, 14), (96, 27), (16, 16), (32, 8)]:  # fmt: skip
        add("conv", f"conv3x3 {c}x{size}", conv_model, c, c, size, 3, 1, 1, 1)
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
        label = f"conv1x1 {c_in}->{c_out}x{size}"
        add("pointwise", label, conv_model, c_in, c_out, size, 1, 1, 1, 1)
    add("conv", "conv5x5 48x27", conv_model, 48, 48, 27, 5, 1, 1, 1)
    add("conv", "conv5x5 8x12", conv_model, 8, 8, 12, 5, 1, 1, 1)
    add("conv", "conv3x3s2 64->128x56", conv_model, 64, 128, 56, 3, 2, 1, 1)
    for c_in, c_out, size, k, s in [
        (3, 32, 160, 3, 1),
        (3, 48, 192, 5, 2),
        (3, 64, 224, 7, 2),
        (3, 32, 224, 3, 2),
        (3, 48, 224, 9, 4),
        (1, 16, 32, 5, 1),
    ]:
        label = f"stem {k}x{k}s{s} {c_in}->{c_out}x{size}"
        add("conv_stem", label, conv_model, c_in, c_out, size, k, s, 1, 1)
    for c, size, s in [
        (32, 112, 1),
        (128, 56, 1),
        (256, 28, 1),
        (512, 14, 1),
        (64, 112, 2),
        (256, 56, 2),
        (64, 7, 1),
    ]:
        add("depthwise", f"dw3x3s{s} {c}x{size}", conv_model, c, c, size, 3, s, c, 1)
    # gemm at batch 1 reads each weight once: <= L2 (on chip), 2-16 MB (in the L3 cache, when
    # it holds them between queries) and >> L3 (DRAM)
    for k, n_out in [(256, 256), (512, 256), (256, 1024), (512, 512), (1024, 512),
                     (1024, 1024), (2048, 1024), (2048, 2048), (8192, 4096), (16384, 4096),
                     (4096, 8192)]:  # fmt: skip
        add("gemm", f"gemv {k}x{n_out}", gemm_model, k, n_out)
    for op, c, size, k, s in [
        ("MaxPool", 64, 112, 2, 2),
        ("MaxPool", 128, 56, 3, 2),
        ("MaxPool", 256, 28, 2, 2),
        ("MaxPool", 16, 24, 2, 2),
        ("GlobalAveragePool", 512, 14, 0, 0),
        ("GlobalAveragePool", 1024, 7, 0, 0),
    ]:
        label = f"{op} {k}x{k}s{s} {c}x{size}" if k else f"{op} {c}x{size}"
        add("pool", label, pool_model, op, c, size, k, s)
    for op, c, size in [
        ("Relu", 64, 112),
        ("Sub", 3, 224),
        ("Div", 3, 224),
        ("Sub", 4, 194),  # as many elements as 3x224 in 4 spans (see parallel_threads)
        ("Add", 128, 28),
        ("Relu", 8, 16),
        ("Mul", 256, 56),
    ]:
        add("elementwise", f"{op} {c}x{size}", eltwise_model, op, c, size, 1)
    for c, size in [(64, 56), (128, 28), (256, 13), (16, 32)]:
        add("data", f"concat {c}x{size}", concat_model, c, size)
    for name, shape, n, axis, onesided, inverse in DFT_CASES:
        label = f"dft {name} {'x'.join(map(str, shape[1:-1]))} n{n}"
        add("dft", label, dft_model, shape, n, axis, onesided, inverse)
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


def run_rounds(
    probes: list[Probe],
    rounds: int,
    seed: int = 0,
    on_round: Callable[[int, int], None] | None = None,
) -> Timings:
    """Time every probe in every round, the probes in a new shuffled order each round: this
    VM's speed drifts (by up to 1.5x, for seconds to minutes at a time), and interleaving
    gives every probe the same mix of fast and slow spells. `on_round(done, rounds)` is
    called after each round (progress)."""
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
            if on_round is not None:
                on_round(r + 1, rounds)
        kernels = {p.key: node_kernels(sessions[p.key][0].end_profiling())
                   for p in probes if p.profiled}  # fmt: skip
    return Timings(times, kernels)


_FLUSH: list[np.ndarray] = []


def flush_caches() -> None:
    """Evict the caches: read and write FLUSH_BYTES of memory no model uses."""
    if not _FLUSH:
        _FLUSH.append(np.zeros(FLUSH_BYTES // 8))
    np.add(_FLUSH[0], 1.0, out=_FLUSH[0])


def calibration_probes(
    threads_list: tuple[int, ...] = THREADS, micro_every: int = MICRO_EVERY
) -> list[Probe]:
    """Per thread count: the session's fixed cost (one Relu of one element), the per-node
    dispatch cost (chains of 1 and 3 nearly free Relus), and every case three times:
    profiled, for its node's kernel time with the caches as the query before left them (a
    network small enough to stay in the caches), profiled with the caches flushed before each
    query (a node in a larger network, whose other layers evict its buffers and weights), and
    plain, for whole-query times without the profiler's cost. The micro-benchmarks run in
    every `micro_every`-th round only."""
    probes = []
    for threads in threads_list:
        probes += session_probes(threads)
        for klass, label, model in cases():
            probes += case_probes(klass, label, model, threads, micro_every)
        for label, model in references():
            probes.append(Probe(f"{label} t{threads}", model, threads, REF_QUERIES, REF_SECONDS))
    return probes


def session_probes(threads: int) -> list[Probe]:
    """The session's fixed cost (one Relu of one element) and the per-node dispatch cost
    (chains of 1 and 3 nearly free Relus) at `threads`."""
    probes = [Probe(f"fixed t{threads}", eltwise_model("Relu", 1, 1, 1), threads)]
    for n in (1, 3):
        probes.append(Probe(f"dispatch t{threads} n{n}", eltwise_model("Relu", 8, 16, n), threads))
    return probes


def case_probes(klass: str, label: str, model: bytes, threads: int, every: int) -> list[Probe]:
    """One case plain, profiled, and (but gemm) profiled with the caches flushed."""
    probes = [
        Probe(f"{label} t{threads}", model, threads, every=every),
        Probe(f"{label} t{threads} profiled", model, threads, max_queries=100, profiled=True,
              every=every),
    ]  # fmt: skip
    if klass != "gemm":  # gemm takes its whole plain query (see rows_from)
        probes.append(Probe(f"{label} t{threads} cold", model, threads, COLD_QUERIES, 0.0,
                            profiled=True, every=every, cold=True))  # fmt: skip
    return probes


def class_probes(klass: str, threads_list: tuple[int, ...] = THREADS) -> list[Probe]:
    """What measuring one class's cases alone needs (class_rows): per thread count the
    session probes, the nearly free node's (DISPATCH_CASE) and the class's cases, every round."""
    chosen = cases(klass)
    if not chosen:
        known = ", ".join(CASE_CLASSES)
        raise InputError(f"class {klass!r} has no micro-benchmarks: expected one of {known}")
    if klass != "elementwise":
        chosen += [case for case in cases("elementwise") if case[1] == DISPATCH_CASE]
    probes = []
    for threads in threads_list:
        probes += session_probes(threads)
        for k, label, model in chosen:
            probes += case_probes(k, label, model, threads, 1)
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


def dispatch_figures(timings: Timings, threads: int) -> dict[str, float]:
    """The session's fixed cost and the per-node dispatch cost (ms) at `threads`."""
    one, three = (float(np.median(timings.pooled(f"dispatch t{threads} n{n}"))) for n in (1, 3))
    fixed = float(np.median(timings.pooled(f"fixed t{threads}")))
    return {"fixed_ms": fixed, "dispatch_ms": max((three - one) / 2, 0.0)}


def rows_from(
    timings: Timings, latency_model: dict, threads_list: tuple[int, ...] = THREADS
) -> tuple[list[dict], dict[int, dict]]:
    """Per case and thread count: the whole query's pooled median and p90, and the node's own
    time; per thread count the session's fixed cost and the per-node dispatch cost (ms).

    A node's own time is its profiled kernel time above that of a nearly free node (which is
    mostly the profiler's own cost), plus the dispatch cost; "node_cold_ms" the same with the
    caches flushed before each query. It leaves out the layout reorders ONNX Runtime adds at a
    one-node conv model's edges for its NCHWc convolutions: each of those is a row of class
    "reorder" of its own (the reorders predict.layout_reorders says the model has, matched by
    kind to the profiled ones). Gemm (no reorders; kernels of a few microseconds, which the
    profiler's cost would swamp) takes its whole query time less the session's fixed cost.
    `latency_model`: the host profile's (channel block, broadcast spans, fusions)."""
    session = {}
    for t in threads_list:
        refs = {}  # (median ms, p90 / median) of each reference
        for label, _ in references():
            ms = timings.pooled(f"{label} t{t}")
            refs[label] = (float(np.median(ms)), float(np.percentile(ms, 90) / np.median(ms)))
        session[t] = {**dispatch_figures(timings, t), "references": refs, **p90_model(refs)}
    rows = []
    for threads in threads_list:
        for klass, label, model in cases():
            rows += case_rows(timings, session[threads], klass, label, model, threads,
                              latency_model)  # fmt: skip
    return rows, session


def class_rows(
    timings: Timings, klass: str, latency_model: dict, threads_list: tuple[int, ...] = THREADS
) -> list[dict]:
    """rows_from's rows of one class's cases, measured alone (class_probes), against the
    dispatch cost measured with them."""
    rows = []
    for threads in threads_list:
        session = dispatch_figures(timings, threads)
        for k, label, model in cases(klass):
            rows += case_rows(timings, session, k, label, model, threads, latency_model)
    return rows


def _kernel_ms(timings: Timings, key: str, reorder: str | None = None) -> float:
    """The kernels' time (ms) of the probe's nodes, or of its `reorder` kind only."""

    def counted(op: str) -> bool:
        return op == reorder if reorder else not op.startswith("Reorder")

    return sum(float(np.median(n["us"])) for n in timings.kernels[key].values()
               if counted(n["op"])) / 1e3  # fmt: skip


def _node_ms(
    timings: Timings, dispatch_ms: float, key: str, threads: int, variant: str,
    reorder: str | None = None,
) -> float:  # fmt: skip
    # the profiler reports whole microseconds: a kernel can read below the nearly free
    # one, and a node never costs less than its dispatch
    nearly_free = _kernel_ms(timings, f"{DISPATCH_CASE} t{threads} {variant}")
    node = max(_kernel_ms(timings, f"{key} t{threads} {variant}", reorder) - nearly_free, 0.0)
    return max(node + dispatch_ms, 1e-4)


def case_rows(
    timings: Timings, session: dict, klass: str, label: str, model: bytes, threads: int,
    latency_model: dict,
) -> list[dict]:  # fmt: skip
    """The row of one case at `threads` (and of a conv case, one per layout reorder)."""
    queries = timings.pooled(f"{label} t{threads}")
    t1, p90 = float(np.median(queries)), float(np.percentile(queries, 90))
    dispatch = session["dispatch_ms"]
    if klass == "gemm":
        hot = cold = max(t1 - session["fixed_ms"], 1e-4)
    else:
        hot, cold = (_node_ms(timings, dispatch, label, threads, v) for v in ("profiled", "cold"))
    rows = [{"class": klass, "case": label, "threads": threads,
             **work_of(model, klass, latency_model, threads), "node_ms": hot,
             "node_cold_ms": cold, "t1_ms": t1, "t1_p90_ms": p90,
             "queries": len(queries)}]  # fmt: skip
    if klass not in CONV_CLASSES:
        return rows
    ops = {n["op"] for n in timings.kernels[f"{label} t{threads} profiled"].values()}
    for node in reorders_of(model, latency_model):
        if node.op_type in ops:
            hot, cold = (_node_ms(timings, dispatch, label, threads, v, node.op_type)
                         for v in ("profiled", "cold"))  # fmt: skip
            rows.append({"class": "reorder", "case": f"{label} {node.op_type}",
                         "threads": threads, "work": float(node.ops),
                         "acts": float(node.in_elems + node.out_elems), "node_ms": hot,
                         "node_cold_ms": cold})  # fmt: skip
    return rows


def reorders_of(model: bytes, latency_model: dict) -> list:
    """The layout reorders `latency_model` says ONNX Runtime adds to `model`."""
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


def work_of(model: bytes, klass: str, latency_model: dict, threads: int = 1) -> dict[str, float]:
    """The fit's x values for the class's nodes at `threads`, as the host profile's
    `latency_model` counts them (channel block, broadcast spans). "work": operations, with the
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
        latency = latency_model
        params = {"threads": threads, **latency}
        work = sum(n.total_ops * channel_padding(n, latency.get("channel_block"))
                   * threads / parallel_threads(n, params) for n in nodes)  # fmt: skip
    return {"work": float(work), "acts": acts}
