"""The compiled pipeline: a committed golden IR YAML (the kfp compiler-test habit), compared
with the SDK version stripped, and loadable back as a component."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from kfp import components

from pipelines.cicd import PIPELINE_NAME, compile_pipeline

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "cicd.yaml"
VOLATILE = re.compile(r"^(sdkVersion: .*|\s*- kfp==.*)$", re.MULTILINE)


def _stable(text: str) -> str:
    return VOLATILE.sub("", text)


def test_compiled_pipeline_matches_the_golden_file(tmp_path: Path):
    fresh = Path(compile_pipeline(str(tmp_path / "cicd.yaml"))).read_text()
    assert _stable(fresh) == _stable(GOLDEN.read_text()), (
        "the pipeline changed: `python -m pipelines.cicd tests/golden/cicd.yaml` and commit it"
    )


def test_compiled_pipeline_loads_back_as_a_component(tmp_path: Path):
    path = compile_pipeline(str(tmp_path / "cicd.yaml"))
    loaded = components.load_component_from_file(path)
    assert loaded.name == PIPELINE_NAME
    inputs = set(loaded.component_spec.inputs)
    assert {"run_uri", "candidates", "targets", "requirements", "services"} <= inputs


def test_the_dag_has_the_loop_the_gate_and_the_exit_handler(tmp_path: Path):
    text = Path(compile_pipeline(str(tmp_path / "cicd.yaml"))).read_text()
    spec = next(yaml.safe_load_all(text))  # the pipeline; the platform (Kubernetes) spec follows
    root_tasks = spec["root"]["dag"]["tasks"]
    assert root_tasks["finish"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    dags = spec["components"]
    loops = [c for c in dags.values() if "parameterIterator" in str(c)]
    assert loops, "no ParallelFor over the candidates"
    text = str(spec)
    assert "some-target-passed" in text and "no-target-passed" in text
    retried = [t for c in dags.values() for t in c.get("dag", {}).get("tasks", {}).values()
               if t.get("retryPolicy")]  # fmt: skip
    assert len(retried) >= 3


def test_components_read_services_s3_and_mlflow_from_the_cluster():
    text = GOLDEN.read_text()
    for name in ("sigdl-services", "sigdl-s3", "sigdl-mlflow", "SIGDL_TRAINING_ADDR",
                 "SIGDL_S3_SECRET_KEY", "SIGDL_MLFLOW_TRACKING_URI"):  # fmt: skip
        assert name in text, name
