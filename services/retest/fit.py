"""The host calibration's fit: per-class efficiencies, overheads and activation costs, the
on-chip, cache and DRAM bandwidths, the weight stall, per thread count, from the rows and
session figures that services/retest/microbench.py measured.

Per class a line  time = overhead + work / rate  is fitted (work: operations, convs counted on
channels padded to ONNX Runtime's NCHWc blocks, a broadcast op that runs on one of T threads
counted T times, plus for convs and DFTs a cost per activation element; for gemm: bytes),
giving the class's per-node overhead (at least the dispatch cost), its efficiency (rate /
peak), and for gemm the on-chip, cache and DRAM bandwidths and the cache's effective size.

    block = fit(rows, session, profile)   # {"1": {...}, "2": {...}}: latency_model.calibrated
"""

from __future__ import annotations

import copy

import numpy as np
import onnx

from services.retest.graph import analyze
from services.retest.microbench import (
    CHAIN_REFERENCES,
    PER_ELEMENT_CLASSES,
    STALL_REFERENCE,
    references,
    work_of,
)
from services.retest.predict import predict_latency

CACHE_SPEEDUP = 1.5  # a gemv this much faster than DRAM streams from the cache


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


def chain_rows(session: dict, latency_model: dict) -> list[dict]:
    """One conv of each chained reference (8 identical 3x3 convs, each reading what the one
    before wrote, as in a network; timed in every round): its work, and its time as the
    chain's median less the session's fixed cost, over 8 (the two layout reorders at the
    chain's ends take under 1% of it)."""
    rows = []
    for label, model in references():
        if label in CHAIN_REFERENCES and label in session["references"]:
            work = work_of(model, "conv", latency_model)
            per_node = {key: value / 8 for key, value in work.items()}
            ms = (session["references"][label][0] - session["fixed_ms"]) / 8
            rows.append({"case": label, **per_node, "node_ms": ms})
    return rows


def fit_thread_count(rows: list[dict], session: dict, threads: int, profile: dict) -> dict:
    """One thread count's calibrated block (efficiency, overheads, bandwidths, p90 model) of
    the rows measured at `threads`; `profile`: the host profile whose data sheet (peak,
    on-chip and cache sizes) and latency model the fit is made against."""
    peak_gops_per_core = profile["compute"]["peak_gops"]["fp32"] / profile["compute"]["cores"]
    onchip_bytes, cache_bytes = (profile["memory"][key] * 1024 for key in ("onchip_kb", "cache_kb"))
    dispatch = session["dispatch_ms"]
    chains = chain_rows(session, profile["latency_model"])
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
        block["weight_stall"] = weight_stall(block, session, threads, profile)
    block["fixed_overhead_us"] = round(session["fixed_ms"] * 1e3, 2)
    # ONNX Runtime dispatches a Flatten or Reshape like any node: a nearly free node's cost
    block["free_node_us"] = round(dispatch * 1e3, 2)
    return block


def fit_classes(
    rows: list[dict], dispatch: float, threads: int, peak_gops_per_core: float, chains: list[dict]
) -> tuple[dict, dict, dict]:
    """Per class but gemm: efficiency (of peak), overhead (us) and, for convolutions and DFTs,
    the per-activation-element cost (ns) of the rows' node times. The conv class's rate per
    operation is then scaled to the median of the `chains` (chain_rows): at two threads
    one-node convs of 0.9-2.7 GFLOP ran at 203-228 Gop/s, the same convs chained at
    222-245 Gop/s, and VGG-16's in the network as fast as the chains."""
    peak = peak_gops_per_core * threads * 1e9  # ops/s
    eff, overhead, per_act = {}, {}, {}
    for klass in (*PER_ELEMENT_CLASSES, "pool", "elementwise", "data", "reorder"):
        measured = [r for r in rows if r["class"] == klass]
        if not measured:  # runs before the reorder (or dft) rows have none
            continue
        if klass in PER_ELEMENT_CLASSES:
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


def weight_stall(block: dict, session: dict, threads: int, profile: dict) -> float:
    """The weight stall that makes the stall reference's predicted median its measured one:
    the prediction is linear in the stall, so two predictions (stall 0 and 1) give it,
    clipped to [0, 1]. `profile` is not changed."""
    profile = copy.deepcopy(profile)
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


def fit(rows: list[dict], session: dict[int, dict], profile: dict) -> dict:
    """The calibrated block (`latency_model.calibrated`) per thread count of `session`."""
    block = {}
    for t in sorted(session):
        measured = [r for r in rows if r["threads"] == t]
        block[str(t)] = fit_thread_count(measured, session[t], t, profile)
    return block
