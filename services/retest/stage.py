"""The retest stage: a deployable model on an emulated target, and a verdict.

`run_retest` is the plain function behind `sigdl retest` (and the gRPC servicer). It runs the
model with the target's numerics (fp32, fp16 or int8 QDQ via `sigdl.core.numerics`) through ONNX
Runtime on the test set, sharded over worker processes; predicts latency, fps and p90 per
operator from the target's profile; estimates power and energy; checks memory and operator
support; and gates the result against the requirements. On the `host` target it also
measures the latency for real (single-stream p90). An x86 (`cpu-limited`) target's latency,
p90 and fps are measured on the host's cores pinned to the target's count and scaled to the
target (services/retest/emulate.py); the latency model's figures stand beside them under
`modelled`, and `methods` says which method produced each headline figure
(measured-and-scaled, modelled, measured). With `out` it writes `report.json` and
`verdict.md` there, all or nothing.

The model an int8 target runs is the `model.int8.onnx` its compression wrote, when there is one
beside the model (deploy ships that file); only otherwise is the fp32 model quantized here.
accuracy_drop is measured against the dense trained model, not against this model's own fp32
accuracy: the `baseline_accuracy` given (the pipeline passes it), else the dense accuracy in
the compress report beside the model, else (a bare model.onnx) this model at fp32.

    report = run_retest("runs/lenet5-dc", "movidius-ma2450", "runs/rt", dataset="mnist",
                        requirements=["fps>=30", "accuracy_drop<=0.5"])
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

import targets
from services.retest.accuracy import check_pixel_model, sharded_accuracy
from services.retest.emulate import MEASURED, MEASURED_AND_SCALED, MODELLED, measured_and_scaled
from services.retest.gate import gate, parse_requirement, verdict_markdown
from services.retest.graph import Graph, analyze, is_quantized
from services.retest.measure import emulation_cpus, single_stream
from services.retest.opcheck import check_operators
from services.retest.predict import estimate_power, memory_use, predict_latency
from services.retest.source import ModelSource, input_folders, load_source
from sigdl.core import __version__, atomic, chain, numerics, onnx_io
from sigdl.core.datasets import adapt, load_dataset
from sigdl.core.errors import InputError
from sigdl.core.events import EventFn, ProgressEvent
from sigdl.core.lineage import TAG_STAGE, TAG_TARGET, RunContext, open_lineage

CALIBRATION_IMAGES = 256  # training images that calibrate int8 activation ranges
HOST_MEASURE = {"min_queries": 30, "min_seconds": 1.0, "max_queries": 2000}
FROM_COMPRESSION = "model.int8.onnx (from compression)"
QUANTIZED_BY_EXPORTER = "the model as it is (quantized by its exporter)"
# the headline figures an x86 target's pinned host measurement replaces (emulate.py)
LATENCY_FIGURES = ("latency_ms", "p90_latency_ms", "fps", "latency_ms_range", "fps_range",
                   "latency_range_basis")  # fmt: skip
POWER_FIGURES = ("power_w", "energy_mj")  # the power model's, over the modelled latency


def load_target(target: str) -> dict:
    """The target's profile; InputError for an unknown target or mode, or a bad profile."""
    try:
        return targets.load_profile(target)
    except targets.ProfileError as exc:
        raise InputError(str(exc)) from None


def list_targets() -> list[dict]:
    """One summary row per shipped profile (for `sigdl targets list`)."""
    rows = []
    for name in targets.profile_names():
        p = load_target(name)
        rows.append({
            "name": name, "description": p["description"], "kind": p["kind"],
            "emulation": p["emulation"]["method"], "precisions": p["precisions"],
            "native_precision": p["native_precision"], "peak_gops": p["compute"]["peak_gops"],
            "ram_mb": p["memory"]["ram_mb"], "modes": sorted(p.get("modes", {})),
        })  # fmt: skip
    return rows


def _check_args(
    profile: dict, precision: str, threads: int | None, workers: int, baseline: float | None
) -> None:
    if precision not in profile["precisions"]:
        raise InputError(f"precision {precision!r}: target {profile['name']!r} supports "
                         f"{', '.join(profile['precisions'])}")  # fmt: skip
    if threads is not None and threads < 1:
        raise InputError(f"threads={threads}: expected a positive integer")
    if workers < 1:
        raise InputError(f"workers={workers}: expected a positive integer")
    if baseline is not None and not 0.0 <= baseline <= 1.0:  # NaN fails this too
        raise InputError(f"baseline_accuracy={baseline}: expected the dense trained model's "
                         "test accuracy, a fraction in [0, 1]")  # fmt: skip


def _calibration(source: ModelSource, dataset: str | None, data_dir) -> tuple[np.ndarray, str]:
    """int8 calibration pixels: training images when a data set is given, else random."""
    shape = onnx_io.input_shape(onnx_io.session_from_bytes(source.onnx_bytes))  # (C, H, W)
    if dataset:
        images = load_dataset(dataset, data_dir).train.images[:CALIBRATION_IMAGES]
        mode = source.meta.adapt_mode if source.meta else "resize"
        return adapt(images, shape[0], shape[1], mode).numpy(), f"{dataset} train[:256]"
    pixels = np.random.default_rng(0).random((64, *shape), dtype=np.float32)
    return pixels, "random-uniform pixels (no data set given)"


def run_retest(
    model: str,
    target: str,
    out: Path | None = None,
    *,
    dataset: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    requirements: Sequence[str] = (),
    workers: int = 1,
    data_dir: str | Path | None = None,
    on_event: EventFn | None = None,
    baseline_accuracy: float | None = None,
    lineage: RunContext | None = None,
) -> dict:
    """Retest `model` on `target`; return the report (see the module docstring).
    `baseline_accuracy`: the dense trained model's accuracy on `dataset`, what accuracy_drop
    is measured against; `lineage`: where the retest's MLflow run nests."""
    emit = on_event or (lambda event: None)
    profile = load_target(target)
    precision = precision or profile["native_precision"]
    _check_args(profile, precision, threads, workers, baseline_accuracy)
    if profile["emulation"]["method"] == "cpu-limited":  # its host CPUs, before any work
        emulation_cpus(min(threads or profile["compute"]["cores"], profile["compute"]["cores"]))
    reqs = [parse_requirement(r) for r in requirements]
    if dataset is None and any(r.needs_dataset for r in reqs):
        raise InputError("requirements on accuracy need a data set (--dataset)")
    # --out may be a folder inside the run it retests (deploy reads <run>/retest/report.json),
    # never the run itself nor one that holds it: it is replaced in whole
    inputs = input_folders(model)
    out = atomic.check_out_dir(out, inputs, inside_ok=True) if out is not None else None
    data_dir = str(data_dir) if data_dir else None
    started = time.perf_counter()
    source = load_source(model)
    if dataset:  # refuse a model the test set cannot be fed to before any work
        check_pixel_model(source.onnx_bytes, load_dataset(dataset, data_dir))
    emit(ProgressEvent("load", 1, 1))
    deployable, how, calibration_note = _deployable(source, precision, dataset, data_dir)
    graph = analyze(onnx.load_from_string(source.onnx_bytes))
    report = _predictions(source, deployable, profile, precision, threads, graph)
    report["modelled"] = {key: report[key] for key in (*LATENCY_FIGURES, *POWER_FIGURES)}
    report["methods"] = dict.fromkeys((*LATENCY_FIGURES[:-1], *POWER_FIGURES), MODELLED)
    report["deployable"] = how
    report["calibration"] = calibration_note
    emit(ProgressEvent("predict", 1, 1))
    if dataset:
        accuracy = _accuracy(source, deployable, precision, dataset, data_dir, workers,
                             threads, emit)  # fmt: skip
        report["accuracy"] = {**accuracy, **_against(accuracy, source, dataset, baseline_accuracy)}
    if profile["emulation"]["method"] == "native":
        stats = single_stream(deployable, report["threads"], **HOST_MEASURE)
        report["measured"] = stats.to_json()
        report["measured_p90_latency_ms"] = stats.p90_ms
        report["methods"]["measured_p90_latency_ms"] = MEASURED
        emit(ProgressEvent("measure", 1, 1))
    elif profile["emulation"]["method"] == "cpu-limited":  # x86: on pinned host cores
        host = load_target("host")
        block = measured_and_scaled(graph, deployable, profile, host, precision, report["threads"])
        report["measured_and_scaled"] = block
        report.update({key: block[key] for key in LATENCY_FIGURES})
        report["methods"].update(dict.fromkeys(LATENCY_FIGURES[:-1], MEASURED_AND_SCALED))
        emit(ProgressEvent("measure", 1, 1))
    report["verdict"] = gate(report, reqs)
    report["wall_seconds"] = time.perf_counter() - started
    report["lineage"] = lineage.to_json() if lineage else None
    report["mlflow"] = log_lineage(report, lineage)
    if out is not None:
        with atomic.staged_dir(out, inputs, inside_ok=True) as stage:
            atomic.write_bytes(stage / "verdict.md", verdict_markdown(report).encode())
            report["files"] = chain.digests(stage)
            atomic.write_json(stage / "report.json", report)
        report["artifacts"] = {"report": str(out / "report.json"),
                               "verdict": str(out / "verdict.md")}  # fmt: skip
    return report


def _deployable(
    source: ModelSource, precision: str, dataset: str | None, data_dir: str | None
) -> tuple[bytes, str, str | None]:
    """(the model the target runs, how it was made, the int8 calibration note): for int8 the
    compression's model.int8.onnx when it came with the model, as deploy ships it; a model
    re-quantized here would be calibrated differently and is not what runs on the device."""
    if precision == "int8" and source.int8_bytes is not None:
        return source.int8_bytes, FROM_COMPRESSION, None
    if precision != "int8":
        how = "the fp32 model" if precision == "fp32" else f"converted to {precision} at retest"
        return numerics.convert(source.onnx_bytes, precision, None), how, None
    if is_quantized(source.onnx_bytes):  # by its exporter (onnxruntime, NNCF): as it is
        return source.onnx_bytes, QUANTIZED_BY_EXPORTER, None
    pixels, note = _calibration(source, dataset, data_dir)
    deployable = numerics.convert(source.onnx_bytes, precision, pixels)
    return deployable, f"re-quantized at retest (calibration {note})", note


def _against(
    accuracy: dict, source: ModelSource, dataset: str, given: float | None
) -> dict[str, float | str]:
    """The baseline accuracy_drop is measured against (ARCHITECTURE.md: the dense trained
    model, not this model at fp32) and the drop in percentage points."""
    compressed = source.compressed
    if given is not None:
        baseline, basis = given, "dense trained model (given)"
    elif compressed is not None and compressed.dataset == dataset:
        baseline, basis = compressed.dense_accuracy, "dense trained model (compress report)"
    else:
        baseline, basis = accuracy["fp32_accuracy"], "this model at fp32"
    return {"baseline_accuracy": baseline, "baseline": basis,
            "drop_pp": 100 * (baseline - accuracy["accuracy"])}  # fmt: skip


def log_lineage(report: dict, lineage: RunContext | None = None) -> dict | None:
    """Log the retest as an MLflow run (nested under the lineage's parent run, tagged with
    its pipeline run, iteration and candidate): its figures as metrics, the target as a tag."""
    store = open_lineage()
    if store is None:
        return None
    target = report["target"] + (f":{report['mode']}" if report.get("mode") else "")
    accuracy = report.get("accuracy") or {}
    metrics = {
        key: report.get(key)
        for key in ("latency_ms", "p90_latency_ms", "fps", "power_w", "energy_mj", "size_kb",
                    "measured_p90_latency_ms")
    }  # fmt: skip
    metrics.update(memory_mb=report["memory"]["memory_mb"], accuracy=accuracy.get("accuracy"),
                   accuracy_drop_pp=accuracy.get("drop_pp"),
                   baseline_accuracy=accuracy.get("baseline_accuracy"),
                   fp32_accuracy=accuracy.get("fp32_accuracy"),
                   passed=float(report["verdict"]["passed"]))  # fmt: skip
    params = {"model": report["source"]["where"], "target": target,
              "precision": report["precision"], "threads": report["threads"],
              "deployable": report["deployable"],
              "accuracy_baseline": accuracy.get("baseline")}  # fmt: skip
    context = lineage or RunContext()
    tags = {**context.run_tags(), TAG_STAGE: "retest", TAG_TARGET: target}
    name = f"retest {report['model']} on {target}"
    params = {k: v for k, v in params.items() if v is not None}
    with store.run(name, params=params, tags=tags,
                   parent_run_id=context.parent_run_id or None) as run_id:  # fmt: skip
        store.log_metrics(run_id, metrics)
    return {"tracking_uri": store.tracking_uri, "run_id": run_id}


def predict_on_target(graph: Graph, profile: dict, precision: str, threads: int | None) -> dict:
    """Predicted latency/fps/p90, estimated power and energy, memory and operator checks."""
    latency = predict_latency(graph, profile, precision, threads)
    ops = sum(layer["ops"] for layer in latency["layers"])
    power = estimate_power(profile, precision, ops, latency["dram_bytes"], latency["latency_ms"])
    return {
        "target": profile["name"], "mode": profile.get("mode"),
        "emulation": profile["emulation"]["method"], "precision": precision,
        "threads": latency["threads"],
        "latency_ms": latency["latency_ms"], "p90_latency_ms": latency["p90_latency_ms"],
        "latency_ms_range": latency["latency_ms_range"], "fps_range": latency["fps_range"],
        "latency_range_basis": latency["latency_range_basis"],
        "fps": latency["fps"], "power_w": power["power_w"], "energy_mj": power["energy_mj"],
        "power": power, "memory": memory_use(graph, profile, precision),
        "operators": check_operators(graph, profile),
        "macs": sum(n.macs for n in graph.nodes), "layers": latency["layers"],
    }  # fmt: skip


def _predictions(
    source: ModelSource, deployable: bytes, profile: dict, precision: str, threads: int | None,
    graph: Graph,
) -> dict:  # fmt: skip
    """The report's head: what the model is, its size, and the predictions."""
    size = source.sdc_bytes if source.sdc_bytes is not None else len(deployable)
    return {
        "command": "retest", "sigdl_version": __version__, "model": source.name,
        "source": {"where": source.where, "kind": source.kind},
        "inputs": {"model": {"where": source.where, "files": source.files}},
        "size_kb": size / 1024,
        "size_source": ".sdc on disk" if source.sdc_bytes is not None else f"{precision} onnx",
        **predict_on_target(graph, profile, precision, threads),
    }  # fmt: skip


def _accuracy(
    source: ModelSource, deployable: bytes, precision: str, dataset: str, data_dir: str | None,
    workers: int, threads: int | None, emit: EventFn,
) -> dict:  # fmt: skip
    """Accuracy at the target's numerics and this model's at fp32 (same shards)."""
    mode = source.meta.adapt_mode if source.meta else "resize"
    per_worker = max(1, (threads or os.cpu_count() or 1) // workers)  # workers share the cores
    with tempfile.TemporaryDirectory(prefix="sigdl-retest-") as tmp:
        runs = {}
        for name, data in {precision: deployable, "fp32": source.onnx_bytes}.items():
            path = Path(tmp) / f"{name}.onnx"
            atomic.write_bytes(path, data)
            runs[name] = sharded_accuracy(
                path, dataset, data_dir=data_dir, mode=mode, workers=workers,
                threads=per_worker, on_event=emit, label=name,
            )  # fmt: skip
    result = {k: v for k, v in runs[precision].items() if k != "predictions"}
    result["fp32_accuracy"] = runs["fp32"]["accuracy"]
    # what the target's numerics alone cost this model (the gate's drop is against the baseline)
    result["numerics_drop_pp"] = 100 * (runs["fp32"]["accuracy"] - result["accuracy"])
    result["dataset"] = dataset
    return result
