"""Model lineage in MLflow: runs with parameters, per-epoch metrics and artifacts, and
registered model versions tagged with what they came from.

Embedded default: `sqlite:///$SIGDL_HOME/mlflow.db`, artifacts in `$SIGDL_HOME/mlartifacts`.
Everything goes through one `MlflowClient`, never MLflow's process-global fluent state, so that
several jobs in one process (the services) cannot log into each other's runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sigdl.core import settings

# Alembic and MLflow log every schema migration of a fresh SQLite store at INFO.
for _name in ("alembic", "mlflow"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# Tags every registered version carries (ARCHITECTURE.md, Lineage).
TAG_PARENT = "sigdl.parent_version"
TAG_RECIPE = "sigdl.recipe_digest"
TAG_TARGET = "sigdl.target"
TAG_ITERATION = "sigdl.iteration"
TAG_STAGE = "sigdl.stage"
TAG_PIPELINE_RUN = "sigdl.pipeline_run_id"
TAG_CANDIDATE = "sigdl.candidate"
# a retraining from the edge (pipelines/trigger.py): which samples it learnt from, and the
# weights it went on from
TAG_EDGE_SAMPLES = "sigdl.edge_samples_sha256"
TAG_EDGE_SAMPLES_URI = "sigdl.edge_samples_uri"
TAG_INIT_CHECKPOINT = "sigdl.init_checkpoint"
ONNX_MODEL_PATH = "onnx_model"  # where a run logs its MLflow ONNX model (pyfunc-loadable)


@dataclass(frozen=True)
class RunContext:
    """Where a stage's run sits in a pipeline run: its MLflow parent run, and the tags its
    registered version carries (ARCHITECTURE.md, Lineage). Empty fields are not recorded; the
    default is a stage run on its own (`sigdl train` by hand)."""

    parent_run_id: str = ""  # MLflow run of the pipeline run: the stage's run nests under it
    pipeline_run_id: str = ""  # the pipeline run (Kubeflow run id, or the local controller's)
    iteration: int = 0  # 1, 2, ... of the outer loop; 0: not in a pipeline
    parent_version: str = ""  # "NAME/VERSION" of the registered version this one came from
    target: str = ""  # the candidate's target
    candidate: str = ""  # the candidate's id within its iteration

    @classmethod
    def from_json(cls, data: dict | None) -> RunContext:
        data = data or {}
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known and v not in (None, "")})

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def run_tags(self) -> dict[str, str]:
        """Tags of the stage's MLflow run: nesting, pipeline run, iteration, candidate."""
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            TAG_PIPELINE_RUN: self.pipeline_run_id,
            TAG_CANDIDATE: self.candidate,
            TAG_TARGET: self.target,
        }
        tags = {k: v for k, v in tags.items() if v}
        if self.iteration:
            tags[TAG_ITERATION] = str(self.iteration)
        return tags

    def version_tags(self) -> dict[str, str]:
        """Tags of a version it registers: the run's, and the version it came from."""
        tags = {k: v for k, v in self.run_tags().items() if k != "mlflow.parentRunId"}
        if self.parent_version:
            tags[TAG_PARENT] = self.parent_version
        return tags


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    source: str


class Lineage:
    """A thin facade over MlflowClient for SigDL's runs and model versions."""

    def __init__(self, tracking_uri: str, experiment: str | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.experiment_id = self._experiment(experiment or settings.SIGDL_MLFLOW_EXPERIMENT.get())

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.tracking_uri.startswith("sqlite:///"):
            # Without this MLflow puts artifacts in ./mlruns of whatever directory we run in.
            db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            location = (db.parent / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    @contextlib.contextmanager
    def run(
        self,
        name: str,
        params: dict | None = None,
        tags: dict | None = None,
        parent_run_id: str | None = None,
    ) -> Iterator[str]:
        """Start a run (nested under `parent_run_id` if given); end it FINISHED or FAILED."""
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()}
        )
        run_id = run.info.run_id
        try:
            if params:
                self.log_params(run_id, params)
            yield run_id
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")

    def start_run(self, name: str, tags: dict | None = None, params: dict | None = None) -> str:
        """A run that stays RUNNING until `end_run` (a pipeline run's parent spans processes)."""
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={k: str(v) for k, v in (tags or {}).items()}
        )
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        self.client.log_batch(run_id, params=items)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, float(v), 0, step) for k, v in metrics.items() if v is not None]
        self.client.log_batch(run_id, metrics=items)

    def log_dir(self, run_id: str, local_dir: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_onnx_model(self, run_id: str, onnx_path: str | Path) -> str:
        """Log `onnx_path` as an MLflow ONNX model (flavours onnx and python_function) under
        the run's `onnx_model` artifact path, so that a registered version of it loads with
        `mlflow.pyfunc.load_model("models:/NAME@ALIAS")`; return that artifact path."""
        import tempfile

        import mlflow.onnx
        import onnx

        with tempfile.TemporaryDirectory(prefix="sigdl-mlflow-") as tmp:
            folder = Path(tmp) / ONNX_MODEL_PATH
            mlflow.onnx.save_model(onnx.load(str(onnx_path)), str(folder))
            self.client.log_artifacts(run_id, str(folder), ONNX_MODEL_PATH)
        return ONNX_MODEL_PATH

    def register(
        self, name: str, run_id: str, artifact_path: str, tags: dict | None = None
    ) -> RegisteredVersion:
        """Register the run's `artifact_path` as a new version of model `name`."""
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # already exists
            self.client.create_registered_model(name)
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        mv = self.client.create_model_version(
            name,
            source=source,
            run_id=run_id,
            tags={k: str(v) for k, v in (tags or {}).items() if v is not None},
        )
        return RegisteredVersion(name=name, version=str(mv.version), run_id=run_id, source=source)

    def versions(self, name: str) -> list[dict]:
        """Every version of model `name`, oldest first, with its tags and aliases."""
        from mlflow.exceptions import MlflowException

        found = self.client.search_model_versions(f"name='{name}'")
        # search results carry no aliases: the registered model maps alias -> version
        try:
            aliases = dict(self.client.get_registered_model(name).aliases or {})
        except MlflowException:
            aliases = {}
        by_version: dict[str, list[str]] = {}
        for alias, version in sorted(aliases.items()):
            by_version.setdefault(str(version), []).append(alias)
        rows = [
            {
                "version": int(v.version),
                "run_id": v.run_id,
                "source": v.source,
                "tags": dict(v.tags),
                "aliases": by_version.get(str(v.version), []),
            }
            for v in found
        ]
        return sorted(rows, key=lambda r: r["version"])


def registered_name(model: str, dataset: str) -> str:
    """The registered-model name of a model trained on a data set, e.g. `lenet-5-mnist`; every
    stage registers its versions under it, so `sigdl lineage NAME` shows them together."""
    return f"{model}-{dataset}".replace(":", "-").replace("/", "-")


def open_lineage() -> Lineage | None:
    """The Lineage in force from settings, or None when tracking is off."""
    uri = settings.mlflow_tracking_uri()
    if uri is None:
        return None
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return Lineage(uri)
