"""An x86 target emulated on the host: measured on pinned host cores, scaled to the target.

A `cpu-limited` target (the Atom x5-E39x0 profiles) runs the deployable model in ONNX Runtime
on min(target threads, host CPUs) host cores (`measure.pinned_single_stream`: the affinity set,
as many intra-op threads, the affinity restored after) and multiplies the measured times by a
host-to-target factor. The factor is the profile's fitted one (`emulation.host_factor.fitted`,
from published measurements of that board, written by `sigdl targets fit`) where it has one;
otherwise it comes from the two profiles' data-sheet figures, at the n pinned cores:

    factor = (1 - s - o) x R_host / R_target + s x B_host / B_target + o x f_host / f_target

    R: per-core rate at the precision = peak_gops / cores x the profile's conv efficiency
       (the host's as calibrated at n threads: the rate of the machine its measured_on names)
    B: memory bandwidth_gbs x bandwidth_efficiency (the host's: as calibrated)
    f: clock_ghz; the per-node and per-inference dispatch is scalar code, not SIMD arithmetic
    s: the share of the host profile's predicted time that DRAM traffic bounds
    o: the share that is per-node and per-inference overhead (overhead_us, fixed_overhead_us)

A target with more cores than the host has CPUs (x5-E3940: 4 on a 2-core host) is measured on
all of them, and the scaled time is multiplied by the latency model's time on the target at
its thread count over that at the pinned count: the modelled parallel scaling.

    block = measured_and_scaled(graph, deployable, load_profile("atom-x5-e3940"), "fp32", 4)
"""

from __future__ import annotations

from services.retest.graph import Graph, Node
from services.retest.measure import LatencyStats, pinned_single_stream
from services.retest.predict import (
    class_params,
    in_network,
    latency_interval,
    latency_params,
    layout_reorders,
    precision_factor,
    predict_latency,
)
from sigdl.core.errors import InputError

MEASURED_AND_SCALED = "measured-and-scaled"
MODELLED = "modelled"
MEASURED = "measured"
# single-stream timing of the pinned measurement (as the host target's own)
TIMING = {"min_queries": 30, "min_seconds": 1.0, "max_queries": 2000}


def host_factor_spec(profile: dict) -> dict:
    """The profile's `emulation.host_factor`; InputError for a profile measured on the host
    without one."""
    spec = profile["emulation"].get("host_factor")
    if spec is None:
        raise InputError(
            f"target {profile['name']!r}: emulation.host_factor is missing: a cpu-limited "
            "target needs its factor_basis (and fitted: null)"
        )
    return spec


def per_core_rate_gops(profile: dict, precision: str, threads: int) -> float:
    """Per-core arithmetic rate (G op/s) at `precision` on `threads` cores: the data sheet's
    peak per core (clock x SIMD lanes x flop per lane per cycle) x the conv efficiency the
    profile has at that thread count (measured on the host, estimated on a board)."""
    if precision not in profile["compute"]["peak_gops"]:
        known = ", ".join(profile["compute"]["peak_gops"])
        raise InputError(
            f"precision {precision!r}: target {profile['name']!r} has no peak figure for it "
            f"(it has {known})"
        )
    params = latency_params(profile, threads)
    peak = profile["compute"]["peak_gops"][precision] / profile["compute"]["cores"]
    return peak * params["efficiency"]["conv"] * precision_factor(params, precision, "conv")


def memory_gbs(profile: dict, threads: int) -> float:
    """Usable memory bandwidth: the profile's (calibrated on the host) x its efficiency."""
    params = latency_params(profile, threads)
    return params["bandwidth_gbs"] * params["bandwidth_efficiency"]


def host_to_target(
    target: dict, host: dict, precision: str, threads: int, dram_share: float,
    overhead_share: float = 0.0,
) -> dict:  # fmt: skip
    """The factor from a time on `threads` pinned host cores to the target's time on as many
    cores: the profile's fitted one, else the data-sheet blend (module docstring) of the
    host time's shares bound by DRAM traffic and spent in dispatch overhead."""
    if not (0.0 <= dram_share <= 1.0 and 0.0 <= overhead_share <= 1.0 - dram_share + 1e-9):
        raise InputError(f"dram_share={dram_share}, overhead_share={overhead_share}: expected "
                         "fractions in [0, 1] that sum to at most 1")  # fmt: skip
    spec = host_factor_spec(target)
    if spec["fitted"] is not None:
        fitted = spec["fitted"]
        return {"factor": fitted["factor"], "factor_basis": f"fitted ({fitted['source']})"}
    compute = per_core_rate_gops(host, precision, threads) / per_core_rate_gops(
        target, precision, threads
    )
    memory = memory_gbs(host, threads) / memory_gbs(target, threads)
    clock = host["compute"]["clock_ghz"] / target["compute"]["clock_ghz"]
    arithmetic = max(1.0 - dram_share - overhead_share, 0.0)
    return {
        "factor": arithmetic * compute + dram_share * memory + overhead_share * clock,
        "factor_basis": spec["factor_basis"], "compute_factor": compute,
        "memory_factor": memory, "clock_factor": clock, "dram_share": dram_share,
        "overhead_share": overhead_share,
    }  # fmt: skip


def overhead_ms(graph: Graph, profile: dict, precision: str, threads: int) -> float:
    """The per-node and per-inference overhead in the profile's predicted time of `graph`
    (after predict_latency has marked the nodes the profile fuses): dispatch, not arithmetic."""
    params = in_network(graph, latency_params(profile, threads), precision)
    nodes: list[Node] = [*graph.nodes, *layout_reorders(graph, params["channel_block"])]
    total_us = params["fixed_overhead_us"]
    for node in nodes:
        if node.fused_into:
            continue
        if node.op_class == "free":
            total_us += params["free_node_us"] or 0.0
        else:
            total_us += class_params(node, params)["overhead_us"].get(node.op_class, 0.0)
    return total_us * 1e-3


def measured_and_scaled(
    graph: Graph,
    deployable: bytes,
    target: dict,
    host: dict,
    precision: str,
    threads: int,
) -> dict:
    """The target's latency from `deployable` measured on the host's pinned cores and scaled
    (module docstring), with every step's figure. `threads`: the target's thread count."""
    stats, cpus = pinned_single_stream(deployable, threads, **TIMING)
    pinned = len(cpus)
    host_at = predict_latency(graph, host, precision, pinned)
    total = host_at["latency_ms"] or 1.0
    dram = min(host_at["dram_bound_ms"] / total, 1.0)
    overhead = min(overhead_ms(graph, host, precision, pinned) / total, 1.0 - dram)
    factor = host_to_target(target, host, precision, pinned, dram, overhead)
    scaling = 1.0
    if threads > pinned:  # target cores beyond the host's: the model's parallel scaling
        at_target = predict_latency(graph, target, precision, threads)["latency_ms"]
        scaling = at_target / predict_latency(graph, target, precision, pinned)["latency_ms"]
    return scaled_figures(stats, cpus, threads, factor, scaling, target, host)


def scaled_figures(
    stats: LatencyStats, cpus: list[int], threads: int, factor: dict, scaling: float,
    target: dict, host: dict,
) -> dict:  # fmt: skip
    """The report's `measured_and_scaled` block from a pinned measurement and its factors."""
    scale = factor["factor"] * scaling
    latency = stats.p50_ms * scale
    low_high, basis = latency_interval(target, latency)
    return {
        "method": MEASURED_AND_SCALED, "latency_ms": latency,
        "p90_latency_ms": stats.p90_ms * scale, "fps": 1e3 / latency if latency else 0.0,
        "latency_ms_range": low_high, "latency_range_basis": basis,
        "fps_range": [1e3 / low_high[1], 1e3 / low_high[0]] if latency else [0.0, 0.0],
        "host_measured": stats.to_json(), "pinned_cpus": cpus, "pinned_threads": len(cpus),
        "target_threads": threads, **factor,
        "core_scaling": scaling,
        "core_scaling_basis": (
            f"modelled: the latency model's time at {threads} threads over that at {len(cpus)}"
            if threads > len(cpus) else "none: the target's threads all pinned on the host"
        ),
        "host_profile": host_profile_note(host),
    }  # fmt: skip


def host_profile_note(host: dict) -> dict:
    """Which machine the host profile's rates were measured on, against this one: a factor
    from another machine's calibration misjudges this one (`sigdl targets calibrate host`)."""
    from services.retest.calibrate import machine_provenance

    here = machine_provenance()
    there = host.get("measured_on") or {}
    same = there.get("cpu") == here["cpu"]
    note = ("the host profile was calibrated on this CPU model" if same else
            "the host profile was calibrated on another CPU: run `sigdl targets calibrate host`"
            " for rates of this machine")  # fmt: skip
    return {"measured_on": there, "this_machine": here, "same_cpu": same, "note": note}
