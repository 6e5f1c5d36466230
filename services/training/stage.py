"""The training stage: train a zoo model on a data set and write a deployable checkpoint.

`run_training` is the plain function that the CLI (`sigdl train`) and, later, the gRPC servicer
call. It writes into `out` (atomically, all or nothing): `model.safetensors`, `model.json`,
`model.onnx` and `report.json`, and logs the run and a registered model version to MLflow.

    report = run_training(TrainConfig(model="lenet-5", dataset="digits", epochs=3), "runs/x")
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sigdl.core import (
    __version__,
    atomic,
    chain,
    checkpoint,
    jobs,
    lineage,
    onnx_io,
    settings,
    store,
    zoo,
)
from sigdl.core.checkpoint import ModelMeta, PixelModel
from sigdl.core.datasets import Dataset, Split, adapt, load_dataset
from sigdl.core.errors import InputError
from sigdl.core.evaluation import score_onnx, score_torch
from sigdl.core.events import EventFn, epoch_event
from sigdl.core.lineage import RunContext
from sigdl.core.sampleset import SampleSet, load_sample_set
from sigdl.core.training import EpochResult, TrainConfig, fit


def resolve_shape(cfg: TrainConfig, data: Dataset) -> tuple[int, int]:
    """(channels, input size) the model is built for: explicit, else from data and model."""
    spec = zoo.get_spec(cfg.model)
    channels = cfg.channels or data.channels
    size = cfg.input_size or max(data.size, spec.min_input_size)
    if size < spec.min_input_size:
        raise InputError(
            f"input_size={size} is below {cfg.model!r}'s minimum {spec.min_input_size}"
        )
    return channels, size


def pixel_stats(data: Dataset, channels: int, size: int, mode: str) -> tuple[list, list]:
    """Per-channel mean and std of the training pixels as the model sees them."""
    sample = adapt(data.train.images[:10_000], channels, size, mode)  # (n, C, S, S)
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def build_model(cfg: TrainConfig, data: Dataset) -> tuple[PixelModel, ModelMeta]:
    channels, size = resolve_shape(cfg, data)
    mean, std = pixel_stats(data, channels, size, cfg.adapt_mode)
    meta = ModelMeta(
        model=zoo.get_spec(cfg.model).name,
        input_size=size,
        channels=channels,
        classes=len(data.classes),
        mean=mean,
        std=std,
        class_names=list(data.classes),
        dataset=cfg.dataset,
        adapt_mode=cfg.adapt_mode,
        train_config=cfg.to_dict(),
    )
    torch.manual_seed(cfg.seed)
    return checkpoint.build(meta), meta


def start_model(
    cfg: TrainConfig, data: Dataset, scratch: Path
) -> tuple[PixelModel, ModelMeta, dict | None]:
    """A fresh model, or (cfg.init_checkpoint) the weights of an earlier training to go on from:
    the same zoo model, classes and input, and its normalization, which the weights learnt
    with. The third item records the start for the report (None: a fresh init)."""
    if not cfg.init_checkpoint:
        return (*build_model(cfg, data), None)
    uri = cfg.init_checkpoint
    model, meta = checkpoint.load_checkpoint(local_folder(uri, scratch))
    channels = resolve_shape(cfg, data)[0]
    name = zoo.get_spec(cfg.model).name
    got = (meta.model, meta.classes, meta.channels, meta.input_size)
    want = (name, len(data.classes), channels, cfg.input_size or meta.input_size)
    if got != want:
        raise InputError(
            f"init_checkpoint {uri}: a {got[0]} of {got[1]} classes on {got[2]}x{got[3]}x{got[3]}"
            f" input, expected a {want[0]} of {want[1]} classes on {want[2]}x{want[3]}x{want[3]}"
            f" ({cfg.dataset})"
        )
    meta = replace(meta, dataset=cfg.dataset, adapt_mode=cfg.adapt_mode,
                   train_config=cfg.to_dict(), metrics={})  # fmt: skip
    weights = checkpoint.recorded_weights_digest(local_folder(uri, scratch))
    return model.train(), meta, {"uri": uri, "weights_sha256": weights}


def local_folder(uri: str, scratch: Path) -> Path:
    """A checkpoint folder on disk: the folder of a file:// URI, else a download."""
    if uri.lower().startswith("file:") or "://" not in uri:
        return Path(store.FileBackend.path_of(store.as_uri(uri)))
    folder = scratch / "init"
    if not folder.is_dir() and not store.get_dir(uri, folder):
        raise store.ArtifactNotFoundError(uri)
    return folder


def with_samples(data: Dataset, extra: SampleSet, meta: ModelMeta) -> Dataset:
    """`data` with the sample set's samples first in its training split (first: a
    max_train_samples cut keeps them). The samples are the model's input already; the data
    set's images stay uint8 when they are that size, else all are brought to it as floats."""
    images = data.train.images
    if images.dtype == torch.uint8 and tuple(images.shape[1:]) == tuple(extra.images.shape[1:]):
        joined = torch.cat([(extra.images * 255).round().to(torch.uint8), images])
    else:
        adapted = adapt(images, meta.channels, meta.input_size, meta.adapt_mode)
        joined = torch.cat([extra.images, adapted])
    train = Split(joined, torch.cat([extra.labels, data.train.labels]))
    return replace(data, train=train)


def trainjob_backend() -> bool:
    from services.training import trainjob

    return trainjob.uses_trainjob()


def train_model(
    model: PixelModel,
    meta: ModelMeta,
    cfg: TrainConfig,
    data: Dataset,
    nproc: int,
    data_dir: str | None,
    on_event: EventFn | None,
    job: jobs.JobContext | None = None,
) -> list[dict]:
    """Train in this process (nproc 1) or with torchrun DDP; return per-epoch rows. `job`:
    the service's job this is, whose TrainJob a restarted service follows again."""
    from services.training import trainjob

    resume = job.handle if job is not None else ""
    if trainjob.uses_trainjob() or resume:  # SIGDL_TRAINING_BACKEND=trainjob: the cluster's nodes
        return trainjob.train_on_cluster(
            model,
            meta,
            cfg,
            nproc,
            data_dir,
            on_event,
            resume=resume,
            record=job.record if job is not None else None,
        )
    if nproc > 1:
        from sigdl.core import distributed

        with tempfile.TemporaryDirectory(prefix="sigdl-ddp-") as job_dir:
            history = distributed.launch(
                model, cfg, meta.channels, meta.input_size, nproc, Path(job_dir), data_dir
            )
        for row in history:
            if on_event:
                on_event(epoch_event(row, cfg.epochs))
        return history

    def evaluate():
        return score_torch(model, data.test, meta.channels, meta.input_size, cfg.adapt_mode)

    rows: list[dict] = []

    def record(result: EpochResult) -> None:
        rows.append(result.to_row())
        if on_event:
            on_event(epoch_event(rows[-1], cfg.epochs))

    fit(model, data.train, cfg, meta.channels, meta.input_size, evaluate=evaluate, on_epoch=record)
    return rows


def onnx_max_abs_diff(
    model: PixelModel, onnx_path: Path, data: Dataset, meta: ModelMeta, n: int = 256
) -> float:
    """Largest |logit difference| between PyTorch and ONNX Runtime on `n` test images."""
    pixels = adapt(data.test.images[:n], meta.channels, meta.input_size, meta.adapt_mode)
    with torch.no_grad():
        expected = model.eval()(pixels).numpy()
    got = onnx_io.predict(onnx_io.session(onnx_path), pixels.numpy())
    return float(np.max(np.abs(expected - got)))


def run_training(
    cfg: TrainConfig,
    out: str | Path,
    *,
    nproc: int = 1,
    data_dir: str | None = None,
    on_event: EventFn | None = None,
    lineage: RunContext | None = None,
    job: jobs.JobContext | None = None,
) -> dict:
    """Train, checkpoint, export, verify the export, log lineage (nested under
    `lineage.parent_run_id` when given); return the report. `job`: the service's job this
    is, which keeps the handle of a TrainJob (SIGDL_TRAINING_BACKEND=trainjob) to follow it
    again after a restart."""
    if nproc < 1:
        raise InputError(f"nproc={nproc}: expected an integer >= 1")
    out = atomic.check_out_dir(out)
    if settings.SIGDL_NUM_THREADS.get():
        torch.set_num_threads(settings.SIGDL_NUM_THREADS.get())
    data = load_dataset(cfg.dataset, data_dir)
    with tempfile.TemporaryDirectory(prefix="sigdl-init-") as scratch:
        model, meta, warm = start_model(cfg, data, Path(scratch))
    extra = None
    if cfg.extra_samples:
        shape = (meta.channels, meta.input_size, meta.input_size)
        extra = load_sample_set(cfg.extra_samples, meta.classes, shape)
    if (warm or extra) and (nproc > 1 or trainjob_backend()):
        raise InputError("init_checkpoint and extra_samples: supported when training in one "
                         "process (nproc=1, SIGDL_TRAINING_BACKEND=local)")  # fmt: skip
    started = time.perf_counter()
    train_data = with_samples(data, extra, meta) if extra else data
    history = train_model(model, meta, cfg, train_data, nproc, data_dir, on_event, job)
    train_seconds = time.perf_counter() - started
    model.eval()
    test = score_torch(model, data.test, meta.channels, meta.input_size, cfg.adapt_mode)
    with atomic.staged_dir(out) as stage:
        meta.metrics = {"test_accuracy": test.accuracy, "test_loss": test.loss}
        digest = checkpoint.save_checkpoint(model, meta, stage)
        onnx_path = onnx_io.export_onnx(
            model, stage / "model.onnx", meta.input_shape, {"sigdl.model_json": meta.to_json()}
        )
        onnx_score = score_onnx(onnx_path, data.test, meta.adapt_mode)
        report = {
            "command": "train",
            "sigdl_version": __version__,
            "model": meta.model,
            "dataset": cfg.dataset,
            "nproc": nproc,
            "config": cfg.to_dict(),
            "input_shape": meta.input_shape,
            "parameters": zoo.count_parameters(model.net),
            "metrics": {
                "test_accuracy": test.accuracy,
                "test_loss": test.loss,
                "onnx_test_accuracy": onnx_score.accuracy,
                "onnx_max_abs_diff": onnx_max_abs_diff(model, onnx_path, data, meta),
                "train_seconds": train_seconds,
                "images_per_s": _mean([r["images_per_s"] for r in history]),
                "test_samples": test.total,
            },
            "history": history,
            "artifacts": {
                "checkpoint": str(out),
                "weights_sha256": digest,
                "onnx": str(out / "model.onnx"),
            },
            "inputs": {
                "dataset": {
                    "name": cfg.dataset,
                    "source": data.source,
                    "sha256": chain.data_digest(data),
                },
                **({"init_checkpoint": warm} if warm else {}),
                **({"edge_samples": extra.record()} if extra else {}),
            },
        }
        report["mlflow"] = log_lineage(report, stage, lineage or RunContext())
        report["files"] = chain.digests(stage)
        report["chain"] = train_chain(report)
        atomic.write_json(stage / "report.json", report)
    return report


def train_chain(report: dict) -> dict:
    """Which file each accuracy was measured on, by digest (see sigdl/core/chain.py)."""
    files, metrics = report["files"], report["metrics"]
    return {
        checkpoint.WEIGHTS: {"sha256": files[checkpoint.WEIGHTS], "from": "training",
                             "test_accuracy": metrics["test_accuracy"]},
        "model.onnx": {"sha256": files["model.onnx"], "from": checkpoint.WEIGHTS,
                       "onnx_test_accuracy": metrics["onnx_test_accuracy"]},
    }  # fmt: skip


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def data_tags(inputs: dict) -> dict:
    """MLflow tags that say which edge samples and which starting weights a run learnt from."""
    tags = {}
    if "edge_samples" in inputs:
        tags[lineage.TAG_EDGE_SAMPLES] = inputs["edge_samples"]["sha256"]
        tags[lineage.TAG_EDGE_SAMPLES_URI] = inputs["edge_samples"]["uri"]
    if "init_checkpoint" in inputs:
        tags[lineage.TAG_INIT_CHECKPOINT] = inputs["init_checkpoint"]["uri"]
    return tags


def log_lineage(report: dict, artifacts_dir: Path, context: RunContext) -> dict | None:
    """Log the run to MLflow and register the ONNX model as a version (loadable with
    `mlflow.pyfunc.load_model`); None when tracking is off."""
    store = lineage.open_lineage()
    if store is None:
        return None
    name = lineage.registered_name(report["model"], report["dataset"])
    params = {**report["config"], "nproc": report["nproc"], "parameters": report["parameters"]}
    tags = {lineage.TAG_STAGE: "train", **context.run_tags(), **data_tags(report["inputs"])}
    with store.run(f"train {name}", params=params, tags=tags) as run_id:
        for row in report["history"]:
            store.log_metrics(run_id, {k: row[k] for k in row if k != "epoch"}, row["epoch"])
        store.log_metrics(run_id, report["metrics"])
        store.log_dir(run_id, artifacts_dir, "model")
        path = store.log_onnx_model(run_id, artifacts_dir / "model.onnx")
        version_tags = {lineage.TAG_STAGE: "train", lineage.TAG_ITERATION: 0,
                        **context.version_tags()}  # fmt: skip
        version = store.register(name, run_id, path, tags=version_tags)
    return {
        "tracking_uri": store.tracking_uri,
        "run_id": run_id,
        "registered_model": version.name,
        "version": version.version,
    }
