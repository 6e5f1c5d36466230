"""The typed report of each stage: what `report.json` holds, read into a frozen dataclass.

A stage function writes its report as JSON (report.json, a job's report_json); whoever reads it
(the CLI, the Python API, the pipeline's components, the deploy stage) reads it through one of
these classes, never with `.get()` chains on the dict:

    result = CompressResult.from_json(json.loads(Path("runs/c/report.json").read_text()))
    result.ratio, result.registered_model, result.report["ladder"]

`from_json` takes either the stage's report (its "command" names the stage) or this class's own
`to_json()` (which carries `schema_version`, the typed fields and the whole report), and raises
InputError naming what is missing or of the wrong type. `schema_version` is 1; a newer reader
refuses another version rather than guessing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sigdl.core.errors import InputError

__all__ = ["CompressResult", "DeployResult", "RetestResult", "StageResult", "TrainResult"]

SCHEMA_VERSION = 1
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
    def from_json(cls: type[R], data: Mapping) -> R:
        """Read a stage report (report.json, or what the stage function returned) or this
        class's `to_json()` back into a result; InputError when a field is missing or wrong."""
        report = dict(_unwrap(data, cls.command, cls.schema_version))
        try:
            return cls._parse(report)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{cls.command} report: {exc.__class__.__name__} {exc}: expected "
                             f"the fields of {cls.__name__}") from None  # fmt: skip

    from_report = from_json  # the name of the 0.1 API

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


def _mlflow(report: Mapping) -> Mapping:
    """The report's MLflow block; {} when tracking was off (the key is null)."""
    block = report.get("mlflow")
    return block if isinstance(block, Mapping) else {}


def _digests(report: Mapping) -> dict[str, str]:
    """The report's `files` block (name -> sha256 of each file the stage wrote); {} in a
    report written before SigDL recorded them."""
    files = report.get("files") or {}
    if not isinstance(files, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise TypeError(f"files is {type(files).__name__}, expected names to sha256 digests")
    return dict(files)


def _optional_str(value: object) -> str | None:
    return None if value in (None, "") else str(value)


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
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256 of each file written

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
            files=_digests(report),
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
    mlflow_run_id: str | None  # None: MLflow tracking was off
    registered_model: str | None
    model_version: str | None
    report: dict = field(repr=False)
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256 of each file written

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
            mlflow_run_id=_optional_str(_mlflow(report).get("run_id")),
            registered_model=_optional_str(_mlflow(report).get("registered_model")),
            model_version=_optional_str(_mlflow(report).get("version")),
            report=report,
            files=_digests(report),
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
    energy_mj: float  # per inference, estimated
    memory_mb: float  # weights + activations at the target's precision
    size_kb: float  # the deployable model (.sdc on disk when there is one)
    failures: tuple[str, ...]  # the verdict's checks that failed, e.g. "fps>=30"
    unsupported_ops: tuple[str, ...]  # "node (op): rule" for each operator the target refuses
    mlflow_run_id: str | None
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
            energy_mj=float(report["energy_mj"]),
            memory_mb=float(report["memory"]["memory_mb"]),
            size_kb=float(report["size_kb"]),
            failures=tuple(str(c["requirement"]) for c in verdict["checks"] if not c["passed"]),
            unsupported_ops=tuple(
                f"{f['node']} ({f['op']}): {f['rule']}" for f in report["operators"]["failures"]
            ),
            mlflow_run_id=_optional_str(_mlflow(report).get("run_id")),
            report=report,
        )

    def to_json(self) -> dict:
        data = super().to_json()
        return {
            **data,
            "failures": list(self.failures),
            "unsupported_ops": list(self.unsupported_ops),
        }


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
    alias: str | None  # the MLflow alias that now marks this fleet/target's model; None: none moved
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
            alias=_optional_str(_mlflow(report).get("alias")),
            report=report,
        )
