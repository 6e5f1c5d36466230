"""Typed results of the CICD pipeline: a candidate, its retest outcome, and a run's verdict.

These travel between the pipeline's components as JSON strings (kfp passes small parameters by
value and artifacts by URI), are written into `verdict.json` and `report.json`, and are what
the iteration controller reads to start the next run. Each carries `schema_version`.

    c = Candidate(id="i1-c0", iteration=1, target="arm-cortex-a53", recipe="deep-compression")
    Candidate.from_json(c.to_json()) == c
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from sigdl.core.errors import InputError

SCHEMA_VERSION = 1
T = TypeVar("T", bound="JsonRecord")


class JsonRecord:
    """to_json/from_json for a flat dataclass; unknown keys are refused, missing ones default."""

    kind: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "kind": self.kind, **asdict(self)}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls: type[T], data: dict[str, Any] | str) -> T:
        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, dict):
            raise InputError(f"{cls.kind}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise InputError(f"{cls.kind}: schema_version {version!r}, expected {SCHEMA_VERSION}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        values = {k: v for k, v in data.items() if k not in ("schema_version", "kind")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{cls.kind}: unknown key(s) {', '.join(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class Candidate(JsonRecord):
    """One compression candidate of an iteration: a recipe for a target."""

    kind: ClassVar[str] = "candidate"
    id: str  # unique within the pipeline run, e.g. "i2-c1"
    iteration: int  # 1, 2, ... of the outer loop
    target: str  # target profile name
    recipe: str  # built-in recipe name, or the URI of a recipe YAML written by a proposal
    recipe_name: str = ""  # the recipe's own name (readable in the report)
    why: str = ""  # why this candidate was proposed (empty in the first iteration)
    precision: str = ""  # numerics to retest with; empty: the target's native

    def __post_init__(self) -> None:
        # JSON numbers may come back as floats (kfp.local's loop items do): 1.0 -> 1
        object.__setattr__(self, "iteration", int(self.iteration))


@dataclass(frozen=True)
class CandidateResult(JsonRecord):
    """A candidate after compression and retest on its target."""

    kind: ClassVar[str] = "candidate_result"
    candidate: dict  # the Candidate, as JSON
    compressed_uri: str = ""  # the compress output folder (model.sdc, model.onnx, report.json)
    retest_uri: str = ""  # the retest output folder (report.json, verdict.md)
    ratio: float = 0.0  # dense bytes / .sdc bytes
    size_kb: float = 0.0  # what retest counts as the deployable size
    accuracy: float | None = None  # under the target's numerics
    baseline_accuracy: float | None = None  # the dense trained model's, same test set
    accuracy_drop_pp: float | None = None  # baseline - accuracy, percentage points
    latency_ms: float = 0.0  # predicted on the target
    fps: float = 0.0
    power_w: float = 0.0
    energy_mj: float = 0.0
    memory_mb: float = 0.0
    precision: str = ""  # what it was retested with
    passed: bool = False  # the target's gate
    failures: list[str] = field(default_factory=list)  # failed checks, one line each
    unsupported_ops: list[str] = field(default_factory=list)  # "node (Op): rule"
    registered_model: str = ""  # MLflow registered model of the compressed version
    model_version: str = ""  # its version
    error: str = ""  # set when compression or retest itself failed

    @property
    def target(self) -> str:
        return self.candidate["target"]

    @property
    def id(self) -> str:
        return self.candidate["id"]


@dataclass(frozen=True)
class RunVerdict(JsonRecord):
    """What one pipeline run decided: per target, the chosen candidate or why none passed,
    and the candidates proposed for the next run."""

    kind: ClassVar[str] = "run_verdict"
    pipeline_run_id: str
    iteration: int
    passed: bool  # every target has a candidate that passed its gate
    targets: dict = field(default_factory=dict)  # target -> {"passed", "best", "why"}
    front: list[str] = field(default_factory=list)  # candidate ids on the Pareto front
    proposals: list[dict] = field(default_factory=list)  # Candidates for the next iteration
    deployed: dict = field(default_factory=dict)  # target -> {"version", "pointer_uri"}
    report: str = ""  # path or URI of report.md
    status: str = "running"  # running | succeeded | failed (the run itself, not the gate)
