"""The Python API for notebooks: each stage as a function that returns a typed result.

    import sigdl

    trained = sigdl.train("lenet-5", "digits", "runs/t", epochs=3)
    small = sigdl.compress(trained.out, "deep-compression-lenet-5", "runs/c")
    checked = sigdl.retest(small.out, "arm-cortex-a53", dataset="digits", requirements=["fps>=30"])
    if checked.passed:
        sigdl.deploy(small.out, "arm-cortex-a53", "lab")
    loop = sigdl.run({"epochs": 3})  # the whole loop, as `sigdl run`

Each function calls the plain function of its stage, as the CLI does, and wraps the stage's
report (the same dict that `report.json` holds) in a frozen dataclass with the headline figures
typed and the whole report in `.report`. `to_json()` gives a JSON-ready dict and
`from_report()` reads either a stage report or that dict back:

    result = TrainResult.from_report(json.loads(Path("runs/t/report.json").read_text()))

The stages are imported only when a function is called, so the result types load cheaply.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from sigdl.errors import InputError

if TYPE_CHECKING:
    from pipelines.controller import LoopConfig, LoopResult

__all__ = [
    "CompressResult",
    "DeployResult",
    "RetestResult",
    "TrainResult",
    "compress",
    "deploy",
    "retest",
    "run",
    "train",
]

SCHEMA_VERSION = 1
EventFn = Callable[[dict], None]
R = TypeVar("R", bound="StageResult")


@dataclass(frozen=True)
class StageResult:
    """What every stage result shares: the report it was read from and its JSON form."""

    command: ClassVar[str]  # the report's "command": train, compress, retest, deploy
    schema_version: ClassVar[int] = SCHEMA_VERSION

    def to_json(self) -> dict:
        """The typed fields (paths as strings), the schema version and the whole report."""
        data: dict[str, Any] = {"schema_version": self.schema_version, "command": self.command}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = str(value) if isinstance(value, Path) else value
        return data

    @classmethod
    def from_report(cls: type[R], report: Mapping) -> R:
        """Read a stage report (report.json, or what the stage function returned) or this
        class's `to_json()` back into a result."""
        return cls._parse(dict(_unwrap(report, cls.command, cls.schema_version)))

    @classmethod
    def _parse(cls: type[R], report: dict) -> R:
        raise NotImplementedError


def _unwrap(data: Mapping, command: str, schema_version: int) -> Mapping:
    """The stage report inside `data`: a `to_json()` dict holds it under "report"."""
    if not isinstance(data, Mapping):
        raise InputError(f"expected a {command} report (a mapping), got {type(data).__name__}")
    if "schema_version" in data and "report" in data:
        if data["schema_version"] != schema_version:
            raise InputError(f"schema_version={data['schema_version']!r}: expected "
                             f"{schema_version}")  # fmt: skip
        data = data["report"]
    if not isinstance(data, Mapping) or data.get("command") != command:
        got = data.get("command") if isinstance(data, Mapping) else type(data).__name__
        raise InputError(f"expected a {command} report, got command {got!r}")
    return data


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TrainResult(StageResult):
    """`sigdl train`: a checkpoint folder with model.safetensors, model.json, model.onnx."""

    command: ClassVar[str] = "train"

    out: Path  # the checkpoint folder
    model: str  # zoo name
    dataset: str
    test_accuracy: float  # PyTorch, on the test split
    onnx_test_accuracy: float  # the exported model.onnx under ONNX Runtime
    parameters: int
    weights_sha256: str  # of model.safetensors
    mlflow_run_id: str | None  # None: MLflow tracking was off
    registered_model: str | None
    model_version: str | None  # the registered model version
    report: dict = field(repr=False)  # the whole report.json

    @classmethod
    def _parse(cls, report: dict) -> TrainResult:
        metrics, artifacts, mlflow = report["metrics"], report["artifacts"], report["mlflow"]
        return cls(
            out=Path(artifacts["checkpoint"]),
            model=report["model"],
            dataset=report["dataset"],
            test_accuracy=float(metrics["test_accuracy"]),
            onnx_test_accuracy=float(metrics["onnx_test_accuracy"]),
            parameters=int(report["parameters"]),
            weights_sha256=artifacts["weights_sha256"],
            mlflow_run_id=mlflow["run_id"] if mlflow else None,
            registered_model=mlflow["registered_model"] if mlflow else None,
            model_version=str(mlflow["version"]) if mlflow else None,
            report=report,
        )


@dataclass(frozen=True)
class CompressResult(StageResult):
    """`sigdl compress`: model.sdc, model.onnx decoded from it (and model.int8.onnx)."""

    command: ClassVar[str] = "compress"

    out: Path  # the folder holding model.sdc
    model: str
    dataset: str
    recipe: str  # recipe name
    recipe_digest: str
    ratio: float  # 4 bytes per dense parameter / .sdc bytes on disk
    compressed_bytes: int  # the .sdc file on disk
    dense_accuracy: float  # the trained checkpoint before compression
    accuracy: float  # the decoded model.onnx under ONNX Runtime
    int8_accuracy: float | None  # model.int8.onnx under ONNX Runtime; None without a quantize step
    report: dict = field(repr=False)

    @classmethod
    def _parse(cls, report: dict) -> CompressResult:
        metrics = report["metrics"]
        return cls(
            out=Path(report["artifacts"]["sdc"]).parent,
            model=report["model"],
            dataset=report["dataset"],
            recipe=report["recipe"]["name"],
            recipe_digest=report["recipe_digest"],
            ratio=float(metrics["ratio"]),
            compressed_bytes=int(metrics["compressed_bytes"]),
            dense_accuracy=float(metrics["dense_accuracy"]),
            accuracy=float(metrics["onnx_test_accuracy"]),
            int8_accuracy=_optional_float(metrics.get("int8_onnx_test_accuracy")),
            report=report,
        )


@dataclass(frozen=True)
class RetestResult(StageResult):
    """`sigdl retest`: the model on an emulated target, and the gate's verdict."""

    command: ClassVar[str] = "retest"

    target: str
    precision: str  # fp32 | fp16 | int8
    passed: bool  # the verdict
    accuracy: float | None  # at the target's numerics; None without a data set
    baseline_accuracy: float | None  # what accuracy_drop_pp is measured against
    accuracy_drop_pp: float | None  # percentage points
    latency_ms: float  # predicted, batch 1
    fps: float
    power_w: float  # estimated
    size_kb: float  # the deployable model (.sdc on disk when there is one)
    failures: tuple[str, ...]  # the verdict's checks that failed, e.g. "fps>=30"
    report: dict = field(repr=False)

    @classmethod
    def _parse(cls, report: dict) -> RetestResult:
        accuracy = report.get("accuracy")  # absent: retested without a data set
        verdict = report["verdict"]
        return cls(
            target=report["target"],
            precision=report["precision"],
            passed=bool(verdict["passed"]),
            accuracy=float(accuracy["accuracy"]) if accuracy else None,
            baseline_accuracy=float(accuracy["baseline_accuracy"]) if accuracy else None,
            accuracy_drop_pp=float(accuracy["drop_pp"]) if accuracy else None,
            latency_ms=float(report["latency_ms"]),
            fps=float(report["fps"]),
            power_w=float(report["power_w"]),
            size_kb=float(report["size_kb"]),
            failures=tuple(str(c["requirement"]) for c in verdict["checks"] if not c["passed"]),
            report=report,
        )

    def to_json(self) -> dict:
        return {**super().to_json(), "failures": list(self.failures)}


@dataclass(frozen=True)
class DeployResult(StageResult):
    """`sigdl deploy`: the package published (or found unchanged) as the fleet's current."""

    command: ClassVar[str] = "deploy"

    fleet: str
    target: str
    version: str  # vN
    action: str  # publish | unchanged
    package_uri: str
    pointer_uri: str  # the fleet/target's `current` pointer
    manifest_sha256: str
    report: dict = field(repr=False)

    @classmethod
    def _parse(cls, report: dict) -> DeployResult:
        return cls(
            fleet=report["fleet"],
            target=report["target"],
            version=report["version"],
            action=report["action"],
            package_uri=report["package_uri"],
            pointer_uri=report["pointer_uri"],
            manifest_sha256=report["manifest_sha256"],
            report=report,
        )


def _folder(path: str | Path | None) -> str | None:
    return str(path) if path else None


def train(
    model: str,
    dataset: str,
    out: str | Path,
    *,
    epochs: int = 20,
    nproc: int = 1,
    data_dir: str | Path | None = None,
    on_epoch: EventFn | None = None,
    **options: Any,
) -> TrainResult:
    """`sigdl train`: train a zoo model; `options` are other TrainConfig fields (lr=0.01, ...)."""
    from services.training.stage import run_training
    from sigdl.training import TrainConfig

    cfg = TrainConfig.from_dict({"model": model, "dataset": dataset, "epochs": epochs, **options})
    report = run_training(cfg, out, nproc=nproc, data_dir=_folder(data_dir), on_epoch=on_epoch)
    return TrainResult.from_report(report)


def compress(
    checkpoint_dir: str | Path,
    recipe: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    on_event: EventFn | None = None,
) -> CompressResult:
    """`sigdl compress`: a built-in recipe name or a YAML file; `dataset` defaults to the
    checkpoint's."""
    from services.compression.stage import run_compression

    report = run_compression(checkpoint_dir, recipe, dataset, out, data_dir=_folder(data_dir),
                             on_event=on_event)  # fmt: skip
    return CompressResult.from_report(report)


def retest(
    model: str | Path,
    target: str,
    *,
    dataset: str | None = None,
    requirements: Sequence[str] = (),
    out: str | Path | None = None,
    precision: str | None = None,
    baseline_accuracy: float | None = None,
    data_dir: str | Path | None = None,
    on_event: EventFn | None = None,
) -> RetestResult:
    """`sigdl retest`: a model.onnx, a .sdc or a train/compress folder on an emulated target.
    A failed gate is a result (`passed` False, `failures`), not an exception."""
    from services.retest.stage import run_retest

    if isinstance(requirements, str):  # one requirement given bare would split into letters
        requirements = [requirements]
    report = run_retest(
        str(model), target, Path(out) if out is not None else None, dataset=dataset,
        precision=precision, requirements=list(requirements), data_dir=data_dir,
        on_event=on_event, baseline_accuracy=baseline_accuracy,
    )  # fmt: skip
    return RetestResult.from_report(report)


def deploy(
    source: str | Path, target: str, fleet: str, *, store: str | None = None
) -> DeployResult:
    """`sigdl deploy`: package a run folder (path, file:// or s3:// URI) for `target` and make
    it the current version of `fleet` under `store` (default: $SIGDL_HOME/artifacts)."""
    from services.deploy.stage import run_deploy

    return DeployResult.from_report(run_deploy(str(source), target, fleet, store_root=store))


def run(
    config: LoopConfig | Mapping[str, Any] | str | Path | None = None,
    *,
    out: str | Path | None = None,
) -> LoopResult:
    """`sigdl run`: the whole loop locally (`sigdl serve all` on loopback, the pipeline with
    kfp.local, one run per iteration). `config`: a LoopConfig, a dict of its fields, a YAML
    file, or None for the defaults. Progress lines go to stderr; check `.passed`."""
    from pipelines.controller import run_loop
    from pipelines.local import EmbeddedServices, LocalRunner, artifact_roots
    from sigdl import settings

    cfg = _loop_config(config)
    if out is not None:
        cfg.out = str(Path(out).expanduser().resolve())
    if cfg.out is None:
        stamp = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        cfg.out = str(settings.SIGDL_HOME.get() / "runs" / stamp)
    folder = Path(cfg.out)
    _say(f"run: {folder} ({cfg.model} on {cfg.dataset}; targets {', '.join(cfg.targets)})")
    _say("services: starting `sigdl serve all` on 127.0.0.1")
    with EmbeddedServices(folder / "services.log", artifact_roots(folder, cfg.store)) as services:
        _say(f"services: serving on {services.address}")
        return run_loop(cfg, LocalRunner(folder, on_line=_say), services.address, on_line=_say)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _loop_config(config: LoopConfig | Mapping[str, Any] | str | Path | None) -> LoopConfig:
    """A fresh LoopConfig (the caller's object is never changed) from any accepted form."""
    from pipelines.controller import LoopConfig

    if config is None:
        return LoopConfig()
    if isinstance(config, LoopConfig):
        cfg = dataclasses.replace(config)
    elif isinstance(config, str | Path):
        return LoopConfig.from_file(config)
    elif isinstance(config, Mapping):
        known = {f.name for f in dataclasses.fields(LoopConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise InputError(f"unknown loop option(s) {', '.join(map(repr, unknown))}; "
                             f"expected some of {', '.join(sorted(known))}")  # fmt: skip
        cfg = LoopConfig(**config)
    else:
        raise TypeError(f"config={config!r}: expected a LoopConfig, a dict, a YAML path or None")
    cfg.check()
    return cfg
