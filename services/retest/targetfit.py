"""Fit a target's latency model to the published latencies of its calibration set.

`sigdl targets fit TARGET` reads `targets.measurements.fit_set(TARGET)` (models outside the
zoo only: the zoo's published figures are the validation set and are never read here),
builds each model's graph (`targets.architectures`) at the published input shape, and fits
the profile's free latency parameters by bounded least squares on log(predicted /
published), the same `predict_latency` the retest runs:

- per-class efficiency (conv, pointwise, conv_stem, depthwise, gemm where the set has work
  of that class): what share of peak each kind of layer reaches;
- per-layer dispatch cost, one for compute layers and one for light ones (pool, elementwise,
  data): kernel launches and runtime bookkeeping;
- a fixed cost per inference (input/output copies for an accelerator, runtime entry);
- the bandwidth efficiency: batch-1 fully connected layers stream their weights (GEMV);
- per precision other than the native one, per class, a multiplier on efficiency (fp32 on a
  GPU that runs fp16 natively; int8 kernels of a CPU runtime);
- per runtime other than the set's most common one, a time factor (TF-TRT against TensorRT).

Each parameter is pulled toward its data-sheet value with weight PRIOR_WEIGHT (in log
space), so a parameter the set says nothing about keeps the data sheet's figure. The start
point is the data sheet, scipy's least_squares is deterministic: the same files give the
same fit, byte for byte. Thread counts are not fitted: every published figure of a target
is at one thread count (all cores); other counts keep the data sheet's linear share.

The fit is written into the profile's `latency_model.fitted` block (between BEGIN/END
markers, comments kept) with a residual per figure (in sample, and held out: predicted by
the fit of the other figures), a summary, and the interval the retest puts around a
prediction: an 80% interval from the held-out residuals (see `interval`).

    summary = fit_target("arm-cortex-a72")                     # $SIGDL_HOME/targets/...
    summary = fit_target("arm-cortex-a72", out=targets.HERE / "arm-cortex-a72.yaml")
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from scipy.optimize import least_squares

import targets
from services.retest.calibrate import write_profile
from services.retest.graph import Graph, analyze
from services.retest.predict import UNFITTED_INTERVAL, predict_latency
from sigdl.core import atomic, settings
from sigdl.core.errors import InputError
from targets import architectures
from targets.measurements import Measurement, fit_set, is_zoo_model

PRIOR_WEIGHT = 0.1  # pull of each parameter toward its data-sheet value (log space)
COMPUTE_CLASSES = ("conv", "pointwise", "conv_stem", "depthwise", "gemm")
LIGHT_CLASSES = ("pool", "elementwise", "data", "reorder")
MIN_LEVERAGE = 0.05  # a parameter fitted only where it moves some prediction this much
MIN_CLASS_SHARE = 0.005
# the DRAM bandwidth is fitted only on a set with a model that spends this share of its
# (data-sheet) time in fully connected layers; activations alone let it absorb other errors
# (on the Pi 3 set it fell to 0.14 of the data sheet's and put AlexNet at 2x)
MIN_GEMV_SHARE = 0.1  # a class fitted only where it is this share of some model's work
SIGNIFICANT = 4  # digits the fitted figures are written with
INTERVAL_LEVEL = 0.8  # the share of new figures the interval is to hold (10% out each side)
SOURCE = "sigdl targets fit (services/retest/targetfit.py)"
_FITTED = re.compile(r"(  # BEGIN fitted[^\n]*\n).*?(  # END fitted\n)", re.S)


@dataclass(frozen=True)
class Parameter:
    """One free parameter: where it goes in the fitted block, its data-sheet value, bounds."""

    name: str  # "efficiency.conv", "layer_us", "precision.int8.depthwise", "runtime.tf-trt"
    prior: float
    low: float
    high: float


# ---------------------------------------------------------------------------------------------
# Graphs of the published models
# ---------------------------------------------------------------------------------------------


def graph_cache_dir() -> Path:
    return settings.SIGDL_HOME.get() / "cache" / "graphs"


def _code_digest() -> str:
    """Changes when an architecture's (or the zoo's) code does: a cached graph is then stale."""
    import sigdl.core.zoo as zoo

    text = Path(architectures.__file__).read_bytes() + Path(zoo.__file__).read_bytes()
    return hashlib.sha256(text).hexdigest()[:12]


def can_build(model: str) -> bool:
    return model in architectures.ARCHITECTURES or is_zoo_model(model)


def graph_of(model: str, shape: tuple[int, ...], cache_dir: Path | None = None) -> Graph:
    """The analyzed graph of `model` (an architecture of targets.architectures, or a zoo model)
    at input `shape` (N, C, H, W). Exported once and cached without its weights (shapes are all
    the latency model reads), under `cache_dir` (default $SIGDL_HOME/cache/graphs)."""
    folder = Path(cache_dir) if cache_dir is not None else graph_cache_dir()
    path = folder / f"{model}-{'x'.join(map(str, shape))}-{_code_digest()}.onnx"
    if not path.is_file():
        atomic.write_bytes(path, _export(model, shape))
    return analyze(onnx.load(str(path), load_external_data=False))


def _export(model: str, shape: tuple[int, ...]) -> bytes:
    import torch

    from sigdl.core import onnx_io
    from sigdl.core.zoo import build_model

    torch.manual_seed(0)
    if model in architectures.ARCHITECTURES:
        module = architectures.build(model)
    elif is_zoo_model(model):
        module = build_model(model, input_size=shape[2], channels=shape[1], classes=1000)
    else:
        raise InputError(f"model {model!r}: no graph; expected one of "
                         f"{', '.join(architectures.names())} or a zoo model")  # fmt: skip
    proto = onnx.load_from_string(onnx_io.to_onnx_bytes(module, list(shape)))
    for init in proto.graph.initializer:  # keep names and dims, drop the bytes
        del init.float_data[:]
        init.raw_data = b""
    return proto.SerializeToString()


def usable(rows: list[Measurement]) -> tuple[list[Measurement], list[dict]]:
    """(the figures whose model has a graph here, [{model, reason}] for the others)."""
    kept, skipped = [], {}
    for m in rows:
        if can_build(m.model):
            kept.append(m)
        else:
            reason = architectures.NOT_BUILT.get(m.model, "no graph of this model here")
            skipped[m.model] = reason
    return kept, [{"model": k, "reason": v} for k, v in sorted(skipped.items())]


# ---------------------------------------------------------------------------------------------
# The model the fit varies
# ---------------------------------------------------------------------------------------------


def predict_ms(graph: Graph, profile: dict, m: Measurement) -> float:
    """The latency the profile predicts for published figure `m`. An accelerator's published
    thread count is the host threads driving it: it runs on all of its own units."""
    threads = m.threads if profile["kind"] == "cpu" else None
    return predict_latency(graph, profile, m.precision, threads, m.runtime)["latency_ms"]


def default_runtime(rows: list[Measurement]) -> str:
    """The set's most common runtime (ties: the first by name): the one the fit is of."""
    counts = Counter(m.runtime for m in rows)
    return sorted(counts, key=lambda r: (-counts[r], r))[0]


def class_shares(graph: Graph) -> dict[str, float]:
    """Each op class's share of a graph's operations."""
    ops = Counter()
    for n in graph.nodes:
        ops[n.op_class] += n.total_ops
    total = sum(ops.values()) or 1
    return {k: v / total for k, v in ops.items()}


def gemv_share(graph: Graph, profile: dict, m: Measurement) -> float:
    """The share of a model's predicted time (data sheet) in fully connected (gemm) layers:
    at batch 1 these stream their weights once per inference, the traffic the bandwidth
    efficiency is about."""
    threads = m.threads if profile["kind"] == "cpu" else None
    pred = predict_latency(graph, profile, m.precision, threads, m.runtime)
    gemm = sum(layer["ms"] for layer in pred["layers"] if layer["class"] == "gemm")
    return gemm / pred["latency_ms"]


def parameters(profile: dict, rows: list[Measurement], graphs: dict) -> list[Parameter]:
    """The free parameters the figures `rows` can inform, with their data-sheet priors."""
    model = profile["latency_model"]
    eff, overhead = model["efficiency"], model["overhead_us"]
    shares = {key: class_shares(g) for key, g in graphs.items()}

    def present(subset: list[Measurement]) -> list[str]:
        return [c for c in COMPUTE_CLASSES
                if any(shares[_key(m)].get(c, 0) >= MIN_CLASS_SHARE for m in subset)]  # fmt: skip

    # gemm keeps the data sheet's efficiency: at batch 1 its weights bound it (bandwidth)
    out = [Parameter(f"efficiency.{c}", eff.get(c, 0.1), 0.003, 1.0)
           for c in present(rows) if c != "gemm"]  # fmt: skip
    compute_us = float(np.mean([overhead.get(c, 10.0) for c in COMPUTE_CLASSES]))
    light_us = float(np.mean([overhead.get(c, 5.0) for c in LIGHT_CLASSES if c in overhead]))
    out += [
        Parameter("layer_us", max(compute_us, 0.5), 0.5, 5000.0),
        Parameter("light_us", max(light_us, 0.1), 0.1, 5000.0),
        Parameter("fixed_overhead_us", max(model.get("fixed_overhead_us", 0.0), 20.0), 1.0, 1e5),
        Parameter("conv_weight_factor", model.get("conv_weight_factor", 1.0), 1.0, 16.0),
        Parameter("half_rate_outputs", model.get("half_rate_outputs", 1e5), 1e2, 1e7),
        Parameter("non3x3_efficiency", model.get("non3x3_efficiency", 1.0), 0.1, 3.0),
    ]
    if any(gemv_share(graphs[_key(m)], profile, m) >= MIN_GEMV_SHARE for m in rows):
        out.append(Parameter("bandwidth_efficiency", model["bandwidth_efficiency"], 0.05, 1.0))
    per_element = model.get("activation_ns", {})
    out += [Parameter(f"activation_ns.{c}", per_element.get(c, 0.5), 1e-3, 100.0)
            for c in ("depthwise", "elementwise")]  # fmt: skip
    native = profile["native_precision"]
    for precision in sorted({m.precision for m in rows} - {native}):
        prior = model.get("precision_efficiency", {}).get(precision, 1.0)
        subset = [m for m in rows if m.precision == precision]
        out += [Parameter(f"precision.{precision}.{c}", prior, 0.02, 10.0)
                for c in present(subset) if c != "gemm"]  # fmt: skip
        per_element = model.get("precision_activation_ns", {}).get(precision, 0.5)
        out.append(Parameter(f"precision_ns.{precision}", per_element, 1e-3, 100.0))
    main = default_runtime(rows)
    for runtime in sorted({m.runtime for m in rows} - {main}):
        out.append(Parameter(f"runtime.{runtime}", 1.0, 0.2, 5.0))
    return out


def with_leverage(
    params: list[Parameter], base: dict, rows: list[Measurement], graphs: dict, main: str
) -> list[Parameter]:
    """The parameters the figures can move: those for which a 25% change from the data sheet
    moves some prediction by at least MIN_LEVERAGE of that (in log terms). A parameter no
    figure depends on (the bandwidth of a set without fully connected layers) keeps the
    data sheet's value instead of drifting to wherever it absorbs other errors."""
    values = np.array([p.prior for p in params])

    def predicted(x: np.ndarray) -> np.ndarray:
        trial = with_block(base, fitted_block(params, x, main, rounded=False))
        return np.log([predict_ms(graphs[_key(m)], trial, m) for m in rows])

    at_prior = predicted(values)
    kept = []
    for i, p in enumerate(params):
        # at the data sheet's value and at the upper bound: a cost inside a max() (weights
        # streamed while the arithmetic runs) shows only once it exceeds the other
        moved = 0.0
        for at, reference in ((values[i], at_prior), (p.high, None)):
            point = values.copy()
            point[i] = at
            ref = reference if reference is not None else predicted(point)
            point[i] = at * 1.25 if at * 1.25 <= p.high else at / 1.25
            moved = max(moved, np.max(np.abs(predicted(point) - ref)) / math.log(1.25))
        if moved >= MIN_LEVERAGE:
            kept.append(p)
    return kept


def _key(m: Measurement) -> tuple[str, tuple[int, ...]]:
    return m.model, m.input_shape


def _round(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT}g}")


def fitted_block(
    params: list[Parameter], values: np.ndarray, main_runtime: str, rounded: bool = True
) -> dict:
    """The `latency_model.fitted` figures of parameter values `values` (rounded as written)."""
    block: dict = {"efficiency": {}, "overhead_us": {}, "precision_class_efficiency": {},
                   "runtime": main_runtime, "runtimes": {}}  # fmt: skip
    for p, v in zip(params, values, strict=True):
        v = _round(float(v)) if rounded else float(v)
        head, _, rest = p.name.partition(".")
        if head == "efficiency":
            block["efficiency"][rest] = v
        elif p.name == "layer_us":
            block["overhead_us"].update(dict.fromkeys(COMPUTE_CLASSES, v))
        elif p.name == "light_us":
            block["overhead_us"].update(dict.fromkeys(LIGHT_CLASSES, v))
        elif head == "activation_ns":
            block.setdefault("activation_ns", {})[rest] = v
        elif head == "precision_ns":
            block.setdefault("precision_activation_ns", {})[rest] = v
        elif head == "precision":
            precision, _, klass = rest.partition(".")
            block["precision_class_efficiency"].setdefault(precision, {})[klass] = v
        elif head == "runtime":
            block["runtimes"][rest] = {"time_scale": v}
        else:
            block[p.name] = v
    return {k: v for k, v in block.items() if v != {}}


def with_block(profile: dict, block: dict) -> dict:
    """A copy of `profile` whose fitted block is `block` (replacing any earlier fit)."""
    out = copy.deepcopy(profile)
    out["latency_model"]["fitted"] = block
    return out


# ---------------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------------


@dataclass
class Fit:
    """What a fit found: the fitted block (with residuals, summary, interval)."""

    target: str
    block: dict  # latency_model.fitted as written
    rows: list[Measurement]  # the figures fitted
    skipped: list[dict]  # [{model, reason}] of figures without a graph here


def fit(target: str, profile: dict, rows: list[Measurement], cache_dir: Path | None = None) -> Fit:
    """Fit `profile` (a target's data-sheet profile, power mode applied) to published figures
    `rows` (its fit set). Deterministic: the same inputs give the same block."""
    if any(m.is_zoo for m in rows):  # the validation set never reaches a fit
        raise InputError(f"target {target!r}: a zoo model's figure was passed to the fit")
    rows, skipped = usable(rows)
    if not rows:
        raise InputError(f"target {target!r}: no published figure of a model outside the zoo "
                         "with a graph here; expected fit entries in "
                         f"targets/measurements/{target}.yaml")  # fmt: skip
    graphs = {_key(m): graph_of(m.model, m.input_shape, cache_dir) for m in rows}
    base = with_block(profile, {})
    main = default_runtime(rows)
    params = with_leverage(parameters(base, rows, graphs), base, rows, graphs, main)
    start = np.clip(np.log([p.prior for p in params]), *_log_bounds(params, margin=1e-9))
    x = solve(params, base, rows, graphs, main, start)
    block = fitted_block(params, np.exp(x), main)
    table = residual_table(with_block(base, block), rows, graphs)
    for row, ratio in zip(table, held_out_ratios(params, base, rows, graphs, main, x), strict=True):
        row["held_out_ratio"] = _round(ratio)
    block["interval"] = interval(table)
    block["residuals"] = table
    block["summary"] = summary(table, skipped, params, profile)
    block["source"] = SOURCE
    return Fit(target, block, rows, skipped)


def _log_bounds(params: list[Parameter], margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.log([p.low for p in params]), np.log([p.high for p in params])
    return low + margin, high - margin


def solve(
    params: list[Parameter], base: dict, rows: list[Measurement], graphs: dict, main: str,
    start: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """The log parameter values that fit `rows` (bounded least squares on log(predicted /
    published), each parameter pulled toward its data-sheet value), from `start`."""
    published = np.log([m.latency_ms for m in rows])
    prior = np.log([p.prior for p in params])

    def residuals(x: np.ndarray) -> np.ndarray:
        trial = with_block(base, fitted_block(params, np.exp(x), main, rounded=False))
        predicted = np.log([predict_ms(graphs[_key(m)], trial, m) for m in rows])
        return np.concatenate([predicted - published, PRIOR_WEIGHT * (x - prior)])

    result = least_squares(residuals, start, bounds=_log_bounds(params), method="trf",
                           diff_step=1e-3, max_nfev=400)  # fmt: skip
    return result.x


def held_out_ratios(
    params: list[Parameter], base: dict, rows: list[Measurement], graphs: dict, main: str,
    x: np.ndarray,
) -> list[float]:  # fmt: skip
    """Per figure, predicted / published by the fit of the other figures (leave one out,
    started from the fit of all, `x`): the error on a model the fit has not seen, which the
    in-sample residuals understate (on the Pi 3's four figures and eleven parameters, they
    were within 17% while the zoo's figures were off by up to 1.5x)."""
    low, high = _log_bounds(params, margin=1e-9)
    ratios = []
    for i, m in enumerate(rows):
        others = rows[:i] + rows[i + 1 :]
        if not others:  # one figure: nothing to fit it from
            ratios.append(float("nan"))
            continue
        without = solve(params, base, others, graphs, main, np.clip(x, low, high))
        trial = with_block(base, fitted_block(params, np.exp(without), main))
        ratios.append(predict_ms(graphs[_key(m)], trial, m) / m.latency_ms)
    return ratios


def residual_table(profile: dict, rows: list[Measurement], graphs: dict) -> list[dict]:
    """Per fitted figure: the model, how it ran, published and predicted ms, their ratio."""
    table = []
    for m in rows:
        predicted = predict_ms(graphs[_key(m)], profile, m)
        table.append({
            "model": m.model, "runtime": m.runtime, "precision": m.precision,
            "threads": m.threads, "input": "x".join(map(str, m.input_shape[1:])),
            "published_ms": m.latency_ms, "predicted_ms": _round(predicted),
            "ratio": _round(predicted / m.latency_ms),
        })  # fmt: skip
    return table


def interval(table: list[dict], level: float = INTERVAL_LEVEL) -> list[float]:
    """[low, high] factors on a prediction, a `level` (80%) interval from the fit's held-out
    (leave-one-out) residuals log(published / predicted): with n of them sorted, the
    floor((n + 1) x 0.1)-th and the ceil((n + 1) x 0.9)-th, the ranks at which a new figure
    falls outside with at most 10% chance on each side (split-conformal's finite-sample
    rule). Where n is too small for a rank (n < 9), that end is the unfitted interval's
    (x0.5 or x2), or the furthest residual where it is further. It always contains 1."""
    logs = sorted(math.log(1 / r["held_out_ratio"]) for r in table
                  if math.isfinite(r.get("held_out_ratio", math.nan)))  # fmt: skip
    n, tail = len(logs), (1 - level) / 2
    # rounded first: (1 - 0.8) / 2 is 0.0999... in binary, and 20 x it must floor to 2
    k_low = math.floor(round((n + 1) * tail, 9))
    k_high = math.ceil(round((n + 1) * (1 - tail), 9))
    floor_, ceiling = (math.log(f) for f in UNFITTED_INTERVAL)
    lo = logs[k_low - 1] if k_low >= 1 else min([floor_, *logs])
    hi = logs[k_high - 1] if k_high <= n else max([ceiling, *logs])
    return [_round(min(math.exp(lo), 1.0)), _round(max(math.exp(hi), 1.0))]


def summary(table: list[dict], skipped: list[dict], params: list[Parameter], profile: dict) -> dict:
    ratios = np.array([r["ratio"] for r in table])
    factors = np.maximum(ratios, 1 / ratios)
    held = np.array([r["held_out_ratio"] for r in table if math.isfinite(r["held_out_ratio"])]
                    or [1.0])  # fmt: skip
    return {
        "entries": len(table),
        "within_25pct": _round(float(np.mean(np.abs(ratios - 1) <= 0.25))),
        "worst_factor": _round(float(factors.max())),
        "rms_log_error": _round(float(np.sqrt(np.mean(np.log(ratios) ** 2)))),
        "held_out_within_25pct": _round(float(np.mean(np.abs(held - 1) <= 0.25))),
        "held_out_worst_factor": _round(float(np.maximum(held, 1 / held).max())),
        "parameters": [p.name for p in params],
        "skipped": skipped,
        "not_fitted": "thread scaling: every published figure of this target is at "
        f"{sorted({r['threads'] for r in table})} thread(s)",
    }


# ---------------------------------------------------------------------------------------------
# The profile on disk
# ---------------------------------------------------------------------------------------------


def shipped_profile(target: str) -> tuple[str, dict]:
    """The shipped profile's text and its content with its default power mode applied."""
    name = str(target).strip().lower()
    if name not in targets.profile_names():
        raise InputError(
            f"unknown target {name!r}; available: {', '.join(targets.profile_names())}"
        )
    path = targets.HERE / f"{name}.yaml"
    text = path.read_text()
    data = targets.load_file(path)
    if data.get("default_mode"):
        targets.apply_mode(data, data["default_mode"])
    return text, data


def fitted_yaml(block: dict) -> str:
    """The fitted block as the profile writes it: one flow-style (JSON) line per field, one
    line per residual."""
    lines = ["  # BEGIN fitted by `sigdl targets fit`: replaces the figures above; do not edit",
             "  fitted:"]  # fmt: skip
    for key, value in block.items():
        if key == "residuals":
            lines.append("    residuals:")
            lines += [f"      - {json.dumps(row)}" for row in value]
        else:
            lines.append(f"    {key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n  # END fitted\n"


def with_fitted(text: str, block: dict) -> str:
    """`text` (a profile) with its fitted block replaced, or inserted at the end of its
    latency_model (before `power:`), keeping every comment."""
    new = fitted_yaml(block)
    if _FITTED.search(text):
        return _FITTED.sub(lambda _: new, text)
    at = re.search(r"^power:", text, re.M)
    if at is None:
        raise InputError("profile has no top-level 'power:' after its latency_model")
    return text[: at.start()] + new + text[at.start() :]


def fit_target(target: str, out: str | Path | None = None, cache_dir: Path | None = None) -> dict:
    """Fit `target` to its calibration set and write the profile (default: the user's own,
    $SIGDL_HOME/targets/<target>.yaml, which the loader prefers over the shipped one)."""
    text, profile = shipped_profile(target)
    name = profile["name"]
    path = Path(out) if out is not None else targets.user_profile_path(name)
    if path.is_dir():
        raise InputError(f"--out {str(path)!r} is a directory: expected a .yaml file path")
    result = fit(name, profile, fit_set(name), cache_dir)
    written = write_profile(path, with_fitted(text, result.block))
    return {"target": name, "profile": str(path), **written["latency_model"]["fitted"]["summary"],
            "interval": result.block["interval"]}  # fmt: skip
