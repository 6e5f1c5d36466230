"""Latency, power and memory of a model on a target, predicted from the target's profile.

Per node: time = overhead(class) + max(operations / (peak x efficiency(class)) + activation
elements x activation_ns(class), bytes moved / bandwidth), a roofline with a per-class
efficiency, a per-element cost where a profile measures one, and a per-layer overhead, plus
the profile's `weight_stall` share of weight streaming that the arithmetic does not hide;
nodes the target fuses into their producer cost nothing. Bytes move at the bandwidth of the
level they sit in: on-chip memory, a shared cache (when the profile has one), or DRAM.
Weights are on chip (or in the cache) only when the whole model's weights fit there; a
node's activations when they fit. The sum plus a fixed per-inference overhead is the
latency; p90 comes from the profile's p90 curve (p90 / median against the median) or its
factor and extra, and for time bound by DRAM traffic from its DRAM factor. A runtime that
computes convolutions in blocks of channels (`channel_block`) pays for the padded channels
and for the layout reorders between its blocked and plain nodes (class "reorder").
A profile's `cold` figures, measured with the caches flushed, apply to models too large to
stay in on-chip memory from one query to the next.

Power and energy are an estimate from the profile's power model: idle power over the
inference plus dynamic energy per operation and per DRAM byte, capped at the active power.

    report = predict(analyze(model), load_profile("host"), "fp32", threads=1)
"""

from __future__ import annotations

import numpy as np

from services.retest.graph import UNKNOWN, Graph, Node, apply_fusion

BYTES = {"fp32": 4, "fp16": 2, "int8": 1}  # per weight and per activation element
LATENCY_KEYS = (
    "efficiency", "overhead_us", "bandwidth_gbs", "onchip_bandwidth_gbs", "bandwidth_efficiency",
    "p90_factor", "p90_extra_us", "p90_curve", "fixed_overhead_us", "cache_bandwidth_gbs",
    "onchip_kb", "cache_kb", "p90_dram_factor", "p90_dram_ms", "channel_block", "activation_ns",
    "weight_stall", "cold", "free_node_us", "broadcast_spans_per_thread", "gemm_macs_per_thread",
    "precision_efficiency", "precision_class_efficiency", "host_copy_gbs", "conv_weight_factor",
    "half_rate_outputs", "non3x3_efficiency", "precision_activation_ns",
)  # fmt: skip
# classes whose efficiency grows with a node's outputs on a profile with `half_rate_outputs`:
# a GPU's thread blocks, a CPU's Winograd tiles need many outputs to reach their rate (not a
# batch-1 gemm: its few outputs each take a long dot product, and its weights bound it)
SATURATING_CLASSES = ("conv", "pointwise", "conv_stem", "depthwise")
DFT_CLASS = "dft"  # graph.py's class of ONNX's DFT
# A profile's figures fitted to published board latencies (`sigdl targets fit`) that
# replace its data-sheet ones: the latency parameters above, not the fit's bookkeeping
FITTED_BOOKKEEPING = ("interval", "residuals", "summary", "source", "runtime", "runtimes")
# the interval a prediction carries when its profile has no fit to take one from: x0.5 to x2
UNFITTED_INTERVAL = (0.5, 2.0)


def latency_params(profile: dict, threads: int | None) -> dict:
    """The latency model's parameters for `threads` (None: all cores).

    A thread count the profile was calibrated at takes the measured figures; any other scales
    the peak by threads / cores."""
    model = profile["latency_model"]
    cores = profile["compute"]["cores"]
    used = min(threads or cores, cores)
    params = {key: model.get(key) for key in LATENCY_KEYS}
    for key, value in model.get("fitted", {}).items():  # sigdl targets fit: over the data sheet
        if key not in FITTED_BOOKKEEPING:
            params[key] = {**(params[key] or {}), **value} if isinstance(value, dict) else value
    calibrated = model.get("calibrated", {}).get(str(used))
    if calibrated:
        for key, value in calibrated.items():
            params[key] = {**(params[key] or {}), **value} if isinstance(value, dict) else value
    memory = profile["memory"]
    defaults = {
        "bandwidth_gbs": memory["bandwidth_gbs"], "p90_factor": 1.0, "p90_extra_us": 0.0,
        "fixed_overhead_us": 0.0, "onchip_kb": memory["onchip_kb"],
        "cache_kb": memory.get("cache_kb", 0),
    }  # fmt: skip
    for key, value in defaults.items():
        params[key] = value if params[key] is None else params[key]
    params["onchip_bandwidth_gbs"] = params["onchip_bandwidth_gbs"] or params["bandwidth_gbs"]
    params["cache_bandwidth_gbs"] = params["cache_bandwidth_gbs"] or params["bandwidth_gbs"]
    params["core_share"] = used / cores
    params["threads"] = used
    return params


def in_network(graph: Graph, params: dict, precision: str) -> dict:
    """The parameters for `graph`'s nodes: a profile's `cold` figures (per-class efficiency,
    overhead and per-element cost measured with the caches flushed before each run) replace
    its others when the model's weights and activations exceed on-chip memory: between two
    runs of a node the other layers' data then passes through the caches and evicts its
    buffers and weights. A model that fits stays in the caches from query to query."""
    cold = params.get("cold")
    size = BYTES[precision]
    working_set = (graph.weight_elems + sum(graph.tensor_elems.values())) * size
    if not cold or working_set <= params["onchip_kb"] * 1024:
        return params
    return {**params, **{key: {**(params[key] or {}), **value} for key, value in cold.items()}}


def memory_level(nbytes: int, params: dict) -> str:
    """The fastest memory level `nbytes` fit in: "onchip", "cache" or "dram"."""
    if nbytes <= params["onchip_kb"] * 1024:
        return "onchip"
    return "cache" if nbytes <= params["cache_kb"] * 1024 else "dram"


def _bandwidth_gbs(level: str, params: dict) -> float:
    key = {"onchip": "onchip_bandwidth_gbs", "cache": "cache_bandwidth_gbs"}.get(level)
    return params[key] if key else params["bandwidth_gbs"]


def node_bytes(node: Node, precision: str) -> int:
    """Weights, activations read and written, at the precision's element size."""
    return (node.weight_elems + node.in_elems + node.out_elems) * BYTES[precision]


def channel_padding(node: Node, block: int | None) -> float:
    """How much more arithmetic a convolution does on a runtime that computes it in blocks of
    `block` channels (ONNX Runtime's NCHWc kernels: 16 fp32 lanes with AVX-512): output
    channels round up to whole blocks, and so do input channels when there is at least one
    block of them (fewer are read as they are, like an RGB stem's). 1 for other nodes."""
    grouped = node.attrs.get("group", 1) != 1
    if not block or node.op_type != "Conv" or grouped or len(node.weight_shape) < 2:
        return 1.0
    c_out, c_in = node.weight_shape[0], node.weight_shape[1]
    padding = -(-c_out // block) * block / c_out
    if c_in >= block:
        padding *= -(-c_in // block) * block / c_in
    return padding


def broadcast_spans(node: Node) -> int:
    """How many spans a runtime's broadcasting loop cuts an elementwise op's output into when
    it reads an initializer broadcast over its trailing axes: one per index of the axes before
    the trailing run over which the initializer is either constant or complete (Sub of a
    per-channel mean from an RGB image: 3 spans of 224 x 224). 1 when the run is the whole
    output (a scalar, or the same shape)."""
    out, theirs = node.in_shape, node.weight_shape
    if node.op_class != "elementwise" or not theirs or not out or len(theirs) > len(out):
        return 1
    theirs = [1] * (len(out) - len(theirs)) + list(theirs)
    axis, constant = len(out), None
    while axis > 0:
        if out[axis - 1] != 1:
            mode = theirs[axis - 1] == 1
            if constant is not None and mode != constant:
                break
            constant = mode
        axis -= 1
    return int(np.prod(out[:axis])) if axis else 1


def parallel_threads(node: Node, params: dict) -> int:
    """The threads a node runs on: all of them, except
    - a broadcast elementwise op with more than one span but fewer than the profile's
      `broadcast_spans_per_thread` per thread, which ONNX Runtime runs on one
      (benchmarks/calibrate_host.py: Sub of a 3-channel mean takes as long at 2 threads as at
      1; with 4 channels, as many elements, half as long);
    - a gemm, which gets one thread per `gemm_macs_per_thread` multiplies and one more (ONNX
      Runtime's MLAS: MLAS_SGEMM_THREAD_COMPLEXITY), up to all of them;
    - a DFT, whose kernel computes one transform after another on the calling thread (ONNX
      Runtime's onnxruntime/core/providers/cpu/signal/dft.cc has no thread pool; the host's
      DFT micro-benchmarks take as long at 2 threads as at 1)."""
    threads = params["threads"]
    if node.op_class == DFT_CLASS:
        return 1
    per_gemm_thread = params.get("gemm_macs_per_thread")
    if node.op_class == "gemm" and per_gemm_thread:
        return min(threads, node.macs // per_gemm_thread + 1)
    per_thread = params.get("broadcast_spans_per_thread")
    spans = broadcast_spans(node)
    return 1 if per_thread and 1 < spans < per_thread * threads else threads


# ops that stay in ONNX Runtime's blocked (NCHWc) layout when all their activation inputs are
# in it and their channels fill whole blocks (NchwcTransformer)
BLOCKED_FOLLOWERS = {
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Relu", "LeakyRelu",
    "Sigmoid", "Tanh", "HardSigmoid", "BatchNormalization", "Add", "Sum", "Concat",
}  # fmt: skip


def _runs_blocked(conv: Node, block: int) -> bool:
    """A conv the runtime computes in the blocked layout: group 1, or depthwise on whole
    blocks of channels."""
    group = conv.attrs.get("group", 1)
    if group == 1:
        return True
    c_out = conv.weight_shape[0] if conv.weight_shape else 0
    return conv.weight_shape[1:2] == [1] and group == c_out and c_out % block == 0


def layout_reorders(graph: Graph, block: int | None) -> list[Node]:
    """The layout reorders a runtime computing convolutions in blocks of `block` channels
    inserts (ONNX Runtime's NCHWc), as nodes of class "reorder" that copy their tensor once.
    A group-1 or depthwise conv runs blocked, reading fewer than `block` input channels as
    they are (an RGB stem) and any other plain input through a ReorderInput; a pool,
    activation, BatchNormalization, Add of two tensors or Concat stays blocked when all its
    inputs are and its channels fill whole blocks; any other reader of a blocked tensor, and
    a blocked graph output, gets it through a ReorderOutput. One reorder per tensor and kind,
    however many nodes read it. LeNet-5 (20 and 50 channels) pays three, a network of
    16-channel multiples one, before its classifier."""
    if not block:
        return []
    shapes = {n.outputs[0]: n.out_shape for n in graph.nodes if n.outputs}
    blocked: set[str] = set()
    read: set[str] = set()
    reorders: dict[tuple[str, str], Node] = {}

    def reorder(op: str, tensor: str) -> None:
        elems = graph.tensor_elems.get(tensor, 0)
        copy = Node(f"{op} {tensor}", op, "reorder", [tensor], [], ops=elems, in_elems=elems,
                    out_elems=elems)  # fmt: skip
        reorders.setdefault((op, tensor), copy)

    for node in graph.nodes:
        acts = [i for i in node.inputs if i in graph.tensor_elems]
        read.update(acts)
        out = node.outputs[0] if node.outputs else ""
        if node.fused_into:  # runs inside its producer, in its layout
            if any(i in blocked for i in acts):
                blocked.add(out)
            continue
        if node.op_type == "Conv" and len(node.out_shape) == 4 and _runs_blocked(node, block):
            c_in = node.in_shape[1] if len(node.in_shape) > 1 else 0
            reads_plain = node.attrs.get("group", 1) == 1 and c_in < block
            if acts and acts[0] not in blocked and not reads_plain:
                reorder("ReorderInput", acts[0])
            blocked.add(out)
            continue
        whole = all(len(shapes.get(i, [])) == 4 and shapes[i][1] % block == 0 for i in acts)
        constants = len(acts) < len([i for i in node.inputs if i])
        binary = node.op_type in ("Add", "Sum")
        if (node.op_type in BLOCKED_FOLLOWERS and acts and whole
                and all(i in blocked for i in acts) and not (binary and constants)):  # fmt: skip
            blocked.add(out)
            continue
        for tensor in acts:
            if tensor in blocked:
                reorder("ReorderOutput", tensor)
    for tensor in sorted(blocked - read):  # graph outputs
        reorder("ReorderOutput", tensor)
    return list(reorders.values())


def unknown_op_params(params: dict, op_class: str = UNKNOWN) -> dict:
    """The latency parameters an op the latency model does not know is costed with (graph.py's
    UNKNOWN_ESTIMATE), and a DFT on a profile without DFT figures (class_params): for
    `op_class`, the profile's lowest efficiency, highest per-node overhead and highest
    per-element cost of any class, so that its estimate errs on the slow side."""
    worst = {"efficiency": (min, 0.05), "overhead_us": (max, 0.0), "activation_ns": (max, 0.0)}
    out = dict(params)
    for key, (pick, default) in worst.items():
        values = list((params[key] or {}).values())
        out[key] = {**(params[key] or {}), op_class: pick(values) if values else default}
    return out


# A target whose profile has no DFT figure (every one but the host: no published latency of
# an ONNX DFT on these boards) prices a DFT node like an unknown op's arithmetic, at its
# slowest class's figures, on one core (parallel_threads). Why: the DFT kernels we found are
# scalar and single-threaded (ONNX Runtime's CPU kernel, onnxruntime/core/providers/cpu/
# signal/dft.cc: std::complex radix-2 or Bluestein loops, one transform after another, no
# thread pool), and on the host, where it is measured, the DFT is the slowest class of all
# (1.0% of a core's peak; the next slowest, the layout reorders, 1.5%).


def class_params(node: Node, params: dict) -> dict:
    """The parameters `node` is costed with: the profile's own, or the slowest class's figures
    for an op the model does not know and for a DFT on a profile without a DFT figure."""
    if node.op_class == UNKNOWN:
        return unknown_op_params(params)
    if node.op_class == DFT_CLASS and DFT_CLASS not in (params["efficiency"] or {}):
        return unknown_op_params(params, DFT_CLASS)
    return params


def is_3x3(node: Node) -> bool:
    """A conv with a 3x3 kernel: the size runtimes tune (and Winograd-transform) first."""
    return list(node.attrs.get("kernel_shape", node.weight_shape[2:])) == [3, 3]


def precision_factor(params: dict, precision: str, op_class: str) -> float:
    """The multiplier on a class's efficiency at `precision`: the profile's per-class figure
    (`precision_class_efficiency`, e.g. ncnn's int8 depthwise kernels slower than its fp32
    ones) where it has one, else its per-precision `precision_efficiency`, else 1."""
    by_class = (params.get("precision_class_efficiency") or {}).get(precision, {})
    if op_class in by_class:
        return by_class[op_class]
    return (params.get("precision_efficiency") or {}).get(precision, 1.0)


def host_copy_s(graph: Graph, params: dict, precision: str) -> float:
    """An accelerator's copies of the input to the device and of the outputs back, at the
    profile's `host_copy_gbs` (0 without one: a CPU target reads its input where it is)."""
    gbs = params.get("host_copy_gbs")
    if not gbs:
        return 0.0
    produced = {o for n in graph.nodes for o in n.outputs}
    read = {i for n in graph.nodes for i in n.inputs}
    outputs = [t for t in produced - read if t in graph.tensor_elems]
    elems = sum(graph.tensor_elems.get(t, 0) for t in [*graph.inputs, *outputs])
    return elems * BYTES[precision] / (gbs * 1e9)


def runtime_scale(profile: dict, runtime: str | None) -> float:
    """The fitted time factor of `runtime` against the profile's own (`latency_model.runtime`):
    1 for the profile's runtime, for None and for a runtime the fit has no figure of."""
    fitted = profile["latency_model"].get("fitted", {})
    return fitted.get("runtimes", {}).get(runtime or "", {}).get("time_scale", 1.0)


def latency_interval(profile: dict, latency_ms: float) -> tuple[list[float], str]:
    """([low, high] ms, where it comes from) around a predicted latency: the 80% interval of
    the fit's held-out (leave-one-out) residuals (published / predicted) on this target's
    calibration set, from `latency_model.fitted.interval` (services/retest/targetfit.py's
    `interval`); UNFITTED_INTERVAL without a fit."""
    fitted = profile["latency_model"].get("fitted", {})
    if "interval" in fitted:
        low, high = fitted["interval"]
        count = fitted.get("summary", {}).get("entries", 0)
        basis = f"80% interval from the fit's held-out residuals on {count} published figures"
    else:
        (low, high), basis = UNFITTED_INTERVAL, "no fit to published figures: x0.5 to x2"
    return [latency_ms * low, latency_ms * high], basis


def node_time_s(
    node: Node, profile: dict, params: dict, precision: str, weights_at: str
) -> tuple[float, int, bool]:
    """(seconds, bytes read or written in DRAM, whether DRAM traffic bounds it) for one node.

    Weights come from `weights_at`; a node's activations, just written by its producer, from
    the fastest level they fit in."""
    if node.fused_into:
        return 0.0, 0, False
    if node.op_class == "free":  # no arithmetic, no data moved: at most its dispatch
        return (params["free_node_us"] or 0.0) * 1e-6, 0, False
    peak = profile["compute"]["peak_gops"][precision] * 1e9 * params["core_share"]
    params = class_params(node, params)
    efficiency = params["efficiency"].get(node.op_class, 0.05) * precision_factor(
        params, precision, node.op_class
    )
    half = params.get("half_rate_outputs")
    if half and node.op_class in SATURATING_CLASSES:  # too few outputs to fill the device
        efficiency *= node.out_elems / (node.out_elems + half)
    if node.op_class == "conv" and not is_3x3(node):  # 5x5, 7x7, 11x11, 1x7, 7x1 kernels
        efficiency *= params.get("non3x3_efficiency") or 1.0
    ops = node.total_ops * channel_padding(node, params["channel_block"])
    compute = ops / (peak * efficiency) * params["threads"] / parallel_threads(node, params)
    # loads, stores and layout work per activation element the arithmetic does not cover
    per_element_ns = (params["activation_ns"] or {}).get(node.op_class, 0.0)
    if node.op_class in (*SATURATING_CLASSES, "gemm"):  # (re)quantizing around the node
        per_element_ns += (params.get("precision_activation_ns") or {}).get(precision, 0.0)
    compute += (node.in_elems + node.out_elems) * per_element_ns * 1e-9
    size = BYTES[precision]
    weights, activations = node.weight_elems * size, (node.in_elems + node.out_elems) * size
    if node.op_class == "conv":  # a runtime's pre-transformed kernels (Winograd) are larger
        weights *= params.get("conv_weight_factor") or 1.0
    acts_at = memory_level(activations, params)
    scale = 1e9 * params["bandwidth_efficiency"]
    weight_time = weights / (_bandwidth_gbs(weights_at, params) * scale)
    memory = weight_time + activations / (_bandwidth_gbs(acts_at, params) * scale)
    dram = (weights if weights_at == "dram" else 0) + (activations if acts_at == "dram" else 0)
    overhead = params["overhead_us"].get(node.op_class, 0.0) * 1e-6
    # weights streamed from beyond on-chip memory: the share of their time the runtime does
    # not hide behind the node's arithmetic
    streamed = 0.0 if weights_at == "onchip" else weight_time
    stall = (params["weight_stall"] or 0.0) * min(compute, streamed)
    return overhead + max(compute, memory) + stall, dram, dram > 0 and memory > compute


def predict_latency(
    graph: Graph, profile: dict, precision: str, threads: int | None, runtime: str | None = None
) -> dict:
    """End-to-end latency, p90 and fps, with the per-node breakdown and the latency's interval
    from the profile's fit. `runtime`: one the profile's fit has a time factor for (another
    runtime than the profile's own on the same board), else the profile's own."""
    params = in_network(graph, latency_params(profile, threads), precision)
    for node in graph.nodes:  # a graph predicted on another target keeps no fusion of its
        node.fused_into = None
    apply_fusion(graph.nodes, profile["latency_model"].get("fuses", []))
    # every query streams all the weights: they stay on chip (or in the shared cache) between
    # queries only when all of them fit there
    weights_at = memory_level(graph.weight_elems * BYTES[precision], params)
    layers, dram_bytes, total, dram_bound = [], 0, 0.0, 0.0
    fewer: dict[int, dict] = {}  # the parameters at fewer threads, for a gemm run on fewer
    for node in [*graph.nodes, *layout_reorders(graph, params["channel_block"])]:
        node_params, used = params, parallel_threads(node, params)
        if node.op_class == "gemm" and used < params["threads"]:
            if used not in fewer:
                fewer[used] = in_network(graph, latency_params(profile, used), precision)
            node_params = fewer[used]
        seconds, dram, bound = node_time_s(node, profile, node_params, precision, weights_at)
        total += seconds
        dram_bytes += dram
        dram_bound += seconds if bound else 0.0
        if node.op_class != "free":
            layers.append({
                "name": node.name, "op": node.op_type, "class": node.op_class,
                "macs": node.macs, "ops": node.total_ops, "bytes": node_bytes(node, precision),
                "fused_into": node.fused_into, "ms": seconds * 1e3,
            })  # fmt: skip
    total += params["fixed_overhead_us"] * 1e-6 + host_copy_s(graph, params, precision)
    scale = runtime_scale(profile, runtime)
    latency_ms = total * 1e3 * scale
    low_high, basis = latency_interval(profile, latency_ms)
    return {
        "latency_ms": latency_ms,
        "latency_ms_range": low_high,
        "latency_range_basis": basis,
        "fps_range": [1e3 / low_high[1], 1e3 / low_high[0]] if latency_ms else [0.0, 0.0],
        "p90_latency_ms": p90_ms(latency_ms, params, dram_bound * 1e3 * scale),
        "dram_bound_ms": dram_bound * 1e3,
        "fps": 1e3 / latency_ms if latency_ms else float("inf"),
        "threads": params["threads"],
        "dram_bytes": dram_bytes,
        "layers": layers,
    }


def p90_ms(latency_ms: float, params: dict, dram_bound_ms: float = 0.0) -> float:
    """The p90 latency: p90 / median from the profile's p90 curve (against the median,
    interpolated in log time, flat beyond its ends) when it has one, else its factor (plus
    its extra). Time bound by DRAM traffic takes the profile's `p90_dram_factor` instead when
    it has one: on a shared host, other tenants' traffic on the memory bus gives it a tail of
    its own. That factor was measured on queries of `p90_dram_ms`; a longer query averages
    more of the tail away, as the curve says for compute: the DRAM tail shrinks by the
    curve's (ratio - 1) at the query's time over that at `p90_dram_ms` (never grows)."""
    curve = params.get("p90_curve")
    if curve:
        ms, factors = zip(*sorted(curve), strict=True)

        def curve_at(t: float) -> float:
            return float(np.interp(np.log(t), np.log(ms), factors))

        factor, extra = curve_at(latency_ms), 0.0
    else:
        factor, extra = params["p90_factor"], params["p90_extra_us"] * 1e-3
    dram_factor = params.get("p90_dram_factor") or factor
    measured_at = params.get("p90_dram_ms")
    tail_there = curve_at(measured_at) - 1 if curve and measured_at else 0.0
    if tail_there > 0:
        dram_factor = 1 + (dram_factor - 1) * min(max(factor - 1, 0.0) / tail_there, 1.0)
    dram_bound_ms = min(dram_bound_ms, latency_ms)
    return (latency_ms - dram_bound_ms) * factor + dram_bound_ms * dram_factor + extra


def estimate_power(profile: dict, precision: str, ops: int, dram_bytes: int, ms: float) -> dict:
    """Average power (W) and energy per inference (mJ): an estimate from the power model."""
    power = profile["power"]
    seconds = ms * 1e-3
    dynamic_j = (ops * power["pj_per_op"].get(precision, max(power["pj_per_op"].values()))
                 + dram_bytes * power["pj_per_dram_byte"]) * 1e-12  # fmt: skip
    energy_j = power["idle_w"] * seconds + dynamic_j
    watts = energy_j / seconds if seconds else power["idle_w"]
    capped = watts > power["active_w"]
    if capped:  # the device cannot draw more than its cap: it would run slower instead
        watts, energy_j = power["active_w"], power["active_w"] * seconds
    return {"power_w": watts, "energy_mj": energy_j * 1e3, "capped_at_active_w": capped,
            "estimate": True, "model": power.get("note", "")}  # fmt: skip


def memory_use(graph: Graph, profile: dict, precision: str) -> dict:
    """Weights plus peak live activations against the target's RAM and on-chip memory."""
    size = BYTES[precision]
    weights = graph.weight_elems * size
    activations = graph.peak_activation_elems * size
    total = weights + activations
    ram = profile["memory"]["ram_mb"] * 2**20
    onchip = profile["memory"]["onchip_kb"] * 1024
    return {
        "weights_bytes": weights, "peak_activation_bytes": activations, "total_bytes": total,
        "memory_mb": total / 2**20, "ram_mb": profile["memory"]["ram_mb"],
        "onchip_kb": profile["memory"]["onchip_kb"], "fits_ram": total <= ram,
        "fits_onchip": total <= onchip, "activations_fit_onchip": activations <= onchip,
    }  # fmt: skip
