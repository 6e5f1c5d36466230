"""Latency, power and memory of a model on a target, predicted from the target's profile.

Per node: time = overhead(class) + max(operations / (peak x efficiency(class)),
bytes moved / bandwidth), a roofline with a per-class efficiency and a per-layer overhead;
nodes the target fuses into their producer cost nothing. Weights are read from DRAM unless
the whole model's weights fit in on-chip memory; activations from on-chip memory when a
node's fit there. The sum plus a fixed
per-inference overhead is the latency; p90 = latency x the profile's p90 factor.

Power and energy are an estimate from the profile's power model: idle power over the
inference plus dynamic energy per operation and per DRAM byte, capped at the active power.

    report = predict(analyze(model), load_profile("host"), "fp32", threads=1)
"""

from __future__ import annotations

from services.retest.graph import Graph, Node, apply_fusion

BYTES = {"fp32": 4, "fp16": 2, "int8": 1}  # per weight and per activation element
LATENCY_KEYS = ("efficiency", "overhead_us", "bandwidth_gbs", "onchip_bandwidth_gbs",
                "bandwidth_efficiency", "p90_factor", "fixed_overhead_us")  # fmt: skip


def latency_params(profile: dict, threads: int | None) -> dict:
    """The latency model's parameters for `threads` (None: all cores).

    A thread count the profile was calibrated at takes the measured figures; any other scales
    the peak by threads / cores."""
    model = profile["latency_model"]
    cores = profile["compute"]["cores"]
    used = min(threads or cores, cores)
    params = {key: model.get(key) for key in LATENCY_KEYS}
    params["bandwidth_gbs"] = params["bandwidth_gbs"] or profile["memory"]["bandwidth_gbs"]
    params["onchip_bandwidth_gbs"] = params["onchip_bandwidth_gbs"] or params["bandwidth_gbs"]
    params["p90_factor"] = params["p90_factor"] or 1.0
    params["fixed_overhead_us"] = params["fixed_overhead_us"] or 0.0
    params["core_share"] = used / cores
    calibrated = model.get("calibrated", {}).get(str(used))
    if calibrated:
        for key, value in calibrated.items():
            params[key] = {**params[key], **value} if isinstance(value, dict) else value
    params["threads"] = used
    return params


def node_bytes(node: Node, precision: str) -> int:
    """Weights, activations read and written, at the precision's element size."""
    return (node.weight_elems + node.in_elems + node.out_elems) * BYTES[precision]


def node_time_s(
    node: Node, profile: dict, params: dict, precision: str, weights_resident: bool
) -> tuple[float, int]:
    """(seconds, bytes read or written in DRAM) for one node.

    Weights stay on chip between queries only when the whole model's weights fit there (a
    network streams every layer's weights each query); a node's activations are on chip when
    they fit."""
    if node.op_class == "free" or node.fused_into:
        return 0.0, 0
    peak = profile["compute"]["peak_gops"][precision] * 1e9 * params["core_share"]
    efficiency = params["efficiency"].get(node.op_class, 0.05)
    efficiency *= profile["latency_model"].get("precision_efficiency", {}).get(precision, 1.0)
    compute = node.total_ops / (peak * efficiency)
    size = BYTES[precision]
    weights, activations = node.weight_elems * size, (node.in_elems + node.out_elems) * size
    onchip = profile["memory"]["onchip_kb"] * 1024
    dram = (0 if weights_resident else weights) + (0 if activations <= onchip else activations)
    scale = 1e9 * params["bandwidth_efficiency"]
    memory = dram / (params["bandwidth_gbs"] * scale)
    memory += (weights + activations - dram) / (params["onchip_bandwidth_gbs"] * scale)
    overhead = params["overhead_us"].get(node.op_class, 0.0) * 1e-6
    return overhead + max(compute, memory), dram


def predict_latency(graph: Graph, profile: dict, precision: str, threads: int | None) -> dict:
    """End-to-end latency, p90 and fps, with the per-node breakdown."""
    params = latency_params(profile, threads)
    apply_fusion(graph.nodes, profile["latency_model"].get("fuses", []))
    resident = graph.weight_elems * BYTES[precision] <= profile["memory"]["onchip_kb"] * 1024
    layers, dram_bytes, total = [], 0, 0.0
    for node in graph.nodes:
        seconds, dram = node_time_s(node, profile, params, precision, resident)
        total += seconds
        dram_bytes += dram
        if node.op_class != "free":
            layers.append({
                "name": node.name, "op": node.op_type, "class": node.op_class,
                "macs": node.macs, "ops": node.total_ops, "bytes": node_bytes(node, precision),
                "fused_into": node.fused_into, "ms": seconds * 1e3,
            })  # fmt: skip
    total += params["fixed_overhead_us"] * 1e-6
    latency_ms = total * 1e3
    return {
        "latency_ms": latency_ms,
        "p90_latency_ms": latency_ms * params["p90_factor"],
        "fps": 1e3 / latency_ms if latency_ms else float("inf"),
        "threads": params["threads"],
        "dram_bytes": dram_bytes,
        "layers": layers,
    }


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
