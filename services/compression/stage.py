"""The compression stage: a trained checkpoint in, a `.sdc` file and its decoded ONNX model out.

`run_compression` is the plain function behind `sigdl compress` (and, later, the gRPC
servicer). It writes into `out`, all or nothing: `model.sdc`, `model.onnx` (rebuilt from the
`.sdc`, so it holds exactly the weights the compressed model was evaluated with) and
`report.json`, whose sizes are the `.sdc` file's bytes on disk.

    report = run_compression("runs/lenet5", "deep-compression-lenet-5", "mnist", "runs/c")
"""

from __future__ import annotations

import time
from pathlib import Path

import onnx
import torch

from services.compression.engine import CompressionResult, compress
from services.compression.recipe import load_recipe
from services.compression.steps.quantize import calibration_pixels
from sigdl.core import (
    __version__,
    atomic,
    chain,
    checkpoint,
    lineage,
    numerics,
    onnx_io,
    settings,
)
from sigdl.core.datasets import load_dataset
from sigdl.core.evaluation import score_onnx
from sigdl.core.events import EventFn
from sigdl.core.lineage import TAG_RECIPE, TAG_STAGE, RunContext
from sigdl.core.sdc import SdcSummary, load_model, write_sdc


def header_model(meta: checkpoint.ModelMeta) -> dict:
    """model.json as the .sdc header carries it: what rebuilds and feeds the model, without
    the training history (it is in report.json and MLflow, and would weigh on tiny models)."""
    return {k: v for k, v in meta.to_json().items() if k not in ("train_config", "metrics")}


def run_compression(
    ckpt_dir: str | Path,
    recipe: str | Path,
    dataset: str | None,
    out: str | Path,
    *,
    data_dir: str | None = None,
    on_event: EventFn | None = None,
    lineage: RunContext | None = None,
) -> dict:
    """Compress, write the .sdc, decode it to ONNX, evaluate that with ONNX Runtime; report.
    `lineage` nests the MLflow run in a pipeline run and tags the registered version."""
    out = atomic.check_out_dir(out, [ckpt_dir])
    if settings.SIGDL_NUM_THREADS.get():
        torch.set_num_threads(settings.SIGDL_NUM_THREADS.get())
    model, meta = checkpoint.load_checkpoint(ckpt_dir)
    recipe_obj = load_recipe(recipe)
    data = load_dataset(dataset or meta.dataset or "", data_dir)
    started = time.perf_counter()
    result = compress(model, recipe_obj, data, meta, on_event=on_event)
    with atomic.staged_dir(out, [ckpt_dir]) as stage:
        summary = write_sdc(
            stage / "model.sdc", result.tensors, header_model(meta),
            # the digest names the recipe; its text is in report.json and MLflow, not in every
            # file (it would be over 1% of a LeNet's .sdc)
            recipe=None, recipe_digest=recipe_obj.digest(),
            huffman=result.huffman, fp16_raw=result.raw_float16,
        )  # fmt: skip
        decoded, _ = load_model(stage / "model.sdc")
        onnx_io.export_onnx(decoded, stage / "model.onnx", meta.input_shape,
                            {"sigdl.model_json": meta.to_json()})  # fmt: skip
        onnx_score = score_onnx(stage / "model.onnx", data.test, meta.adapt_mode)
        report = _report(result, summary, meta, dataset or meta.dataset, out)
        if result.int8 is not None:
            report["metrics"].update(write_int8(result, meta, data, stage, recipe_obj.seed))
        report["metrics"].update(
            onnx_test_accuracy=onnx_score.accuracy,
            accuracy_drop=report["metrics"]["dense_accuracy"] - onnx_score.accuracy,
            wall_seconds=time.perf_counter() - started,
        )
        report["mlflow"] = log_lineage(
            report, stage, meta.model, report["dataset"], lineage or RunContext()
        )
        atomic.write_bytes(stage / "report.md", markdown_report(report).encode())
        report["inputs"] = {
            "checkpoint": chain.bound_inputs(ckpt_dir, (checkpoint.WEIGHTS, checkpoint.META)),
            "dataset": {"name": report["dataset"], "sha256": chain.data_digest(data)},
        }
        report["files"] = chain.digests(stage)
        report["chain"] = compress_chain(report)
        atomic.write_json(stage / "report.json", report)
    return report


def compress_chain(report: dict) -> dict:
    """model.sdc, model.onnx and model.int8.onnx bound to each other and to the accuracies
    measured on them, by digest (see sigdl/core/chain.py)."""
    files, m = report["files"], report["metrics"]
    sdc = {"sha256": files["model.sdc"], "from": "checkpoint"}
    links = {
        "model.sdc": {**sdc, "recipe_digest": report["recipe_digest"],
                      "compressed_accuracy": m["compressed_accuracy"]},
        "model.onnx": {"sha256": files["model.onnx"], "from": "model.sdc",
                       "onnx_test_accuracy": m["onnx_test_accuracy"]},
    }  # fmt: skip
    if "model.int8.onnx" in files:
        int8 = {"sha256": files["model.int8.onnx"], "from": "model.onnx"}
        links["model.int8.onnx"] = {**int8, "int8_onnx_test_accuracy": m["int8_onnx_test_accuracy"]}
    return links


def write_int8(
    result: CompressionResult, meta: checkpoint.ModelMeta, data, stage: Path, seed: int
) -> dict:
    """`model.int8.onnx`: the decoded model.onnx as ONNX QDQ (int8 weights on the grids the
    quantize step trained, uint8/int8 activations calibrated on the same training images),
    evaluated with ONNX Runtime."""
    fp32 = (stage / "model.onnx").read_bytes()
    pixels = calibration_pixels(data, meta, result.int8["calibration_samples"], seed)
    options = numerics.Int8Options(
        activations=result.int8["activations"],
        method=result.int8["method"],
        weight_scales=_weight_scales(result, fp32),
    )
    atomic.write_bytes(
        stage / "model.int8.onnx", numerics.quantize_int8(fp32, pixels.numpy(), options)
    )
    score = score_onnx(stage / "model.int8.onnx", data.test, meta.adapt_mode)
    return {
        "int8_onnx_test_accuracy": score.accuracy,
        "int8_onnx_bytes": (stage / "model.int8.onnx").stat().st_size,
    }


def _weight_scales(result: CompressionResult, fp32: bytes) -> dict:
    """Trained grids of the weights the ONNX graph still holds by name (a convolution folded
    with its BatchNorm has new weights, which ONNX Runtime quantizes afresh)."""
    names = {init.name for init in onnx.load_from_string(fp32).graph.initializer}
    return {key: scale for key, (scale, _, _) in result.quantized.items() if key in names}


def markdown_report(report: dict) -> str:
    """The per-layer table and the step ladder of `report.json`, for people."""
    m = report["metrics"]
    lines = [
        f"# {report['model']} on {report['dataset']}: recipe {report['recipe']['name']}",
        "",
        f"{m['dense_bytes']:,} -> {m['compressed_bytes']:,} bytes (.sdc on disk): "
        f"**{m['ratio']:.1f}x**; accuracy {100 * m['dense_accuracy']:.2f}% -> "
        f"{100 * m['onnx_test_accuracy']:.2f}% (decoded model.onnx, ONNX Runtime).",
        "",
        "| tensor | params | nonzeros | bits/weight | bits/index | codebook B | Huffman gain "
        "| dense B | compressed B | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in report["sizes"]["tensors"]:
        lines.append(
            f"| {t['name']} | {t['params']:,} | {t['nonzeros']:,} | {t['bits_per_weight']} "
            f"| {t['bits_per_index']} | {t['codebook_bytes']} | {t['huffman_gain']:.2f} "
            f"| {t['dense_bytes']:,} | {t['compressed_bytes']:,} | {t['ratio']:.1f}x |"
        )
    lines += ["", "| after step | accuracy | nonzeros | estimated ratio | seconds |",
              "|---|---|---|---|---|"]  # fmt: skip
    for row in report["ladder"]:
        lines.append(
            f"| {row['step']} | {100 * row['accuracy']:.2f}% | {row['nonzeros']:,} "
            f"| {row['estimated_ratio']:.1f}x | {row['seconds']:.0f} |"
        )
    if "plan" in report:  # written by a sensitivity-guided step
        lines += ["", "## The planner's choices", "",
                  "| layer | sparsity | bits | est. bytes | sweep loss | sweep accuracy | why |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, c in report["plan"].items():
            lines.append(
                f"| {name} | {c['sparsity']:g} | {c['bits']} | {c['estimated_bytes']:,.0f} "
                f"| {c['loss']:+.4f} | {-100 * c['accuracy_drop']:+.2f} pt | {c['why']} |"
            )
    return "\n".join(lines) + "\n"


def _report(result: CompressionResult, summary: SdcSummary, meta, dataset: str, out: Path) -> dict:
    # "4 bytes per original parameter": the dense network's parameters (not its buffers, and
    # not the thinner network a structured step leaves)
    params = result.ladder[0]["parameters"]
    return {
        "command": "compress", "sigdl_version": __version__, "model": meta.model,
        "dataset": dataset, **result.to_dict(),
        "sizes": summary.to_json(),
        "metrics": {
            "parameters": params, "nonzeros": summary.nonzeros, "dense_bytes": 4 * params,
            "compressed_bytes": summary.file_bytes, "ratio": 4 * params / summary.file_bytes,
            "huffman_gain": summary.huffman_gain,
            "dense_accuracy": result.ladder[0]["accuracy"],
            "compressed_accuracy": result.ladder[-1]["accuracy"],
        },
        "artifacts": {"sdc": str(out / "model.sdc"), "onnx": str(out / "model.onnx"),
                      **({"int8_onnx": str(out / "model.int8.onnx")} if result.int8 else {})},
    }  # fmt: skip


def log_lineage(
    report: dict, artifacts_dir: Path, model: str, dataset: str, context: RunContext
) -> dict | None:
    """Log the compression run and register the decoded model.onnx as an MLflow ONNX model
    version, tagged with its recipe digest and where it came from."""
    store = lineage.open_lineage()
    if store is None:
        return None
    name = lineage.registered_name(model, dataset)
    params = {"recipe": report["recipe"]["name"], "recipe_digest": report["recipe_digest"]}
    tags = {TAG_STAGE: "compress", TAG_RECIPE: report["recipe_digest"]}
    run_name = f"compress {name}" + (f" [{context.candidate}]" if context.candidate else "")
    with store.run(run_name, params=params, tags={**tags, **context.run_tags()}) as run_id:
        for step, row in enumerate(report["ladder"]):
            numeric = {k: v for k, v in row.items() if isinstance(v, int | float)}
            store.log_metrics(run_id, {f"ladder_{k}": v for k, v in numeric.items()}, step)
        store.log_metrics(run_id, {k: v for k, v in report["metrics"].items() if v is not None})
        store.log_dir(run_id, artifacts_dir, "model")
        path = store.log_onnx_model(run_id, artifacts_dir / "model.onnx")
        version = store.register(name, run_id, path, tags={**tags, **context.version_tags()})
    return {"tracking_uri": store.tracking_uri, "run_id": run_id,
            "registered_model": version.name, "version": version.version}  # fmt: skip
