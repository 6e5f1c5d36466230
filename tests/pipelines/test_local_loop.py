"""`sigdl run`: the main job on embedded defaults (digits, no files, no network)."""

import json
import subprocess
import sys

import pytest

from pipelines.local import LoopConfig
from sigdl.errors import InputError


def _run(tmp_path, config_text: str) -> subprocess.CompletedProcess:
    config = tmp_path / "loop.yaml"
    config.write_text(config_text)
    return subprocess.run(
        [sys.executable, "-m", "sigdl.cli", "run", "--config", str(config),
         "--out", str(tmp_path / "run"), "--json"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip


def test_run_trains_compresses_retests_and_deploys(tmp_path, mlflow_uri):
    proc = _run(tmp_path, "epochs: 2\nmodel: lenet-5\ntrain:\n  seed: 1\n")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    train = report["stages"]["train"]
    assert train["dataset"] == "digits" and train["config"]["seed"] == 1
    assert train["metrics"]["onnx_test_accuracy"] == train["metrics"]["test_accuracy"] > 0.8
    assert (tmp_path / "run" / "train" / "model.onnx").is_file()
    assert train["mlflow"]["tracking_uri"] == mlflow_uri
    compressed = report["stages"]["compress"]
    assert compressed["recipe"]["name"] == "deep-compression-lenet-5"
    assert compressed["metrics"]["ratio"] > 10
    assert (tmp_path / "run" / "compress" / "model.sdc").is_file()
    retest = report["stages"]["retest"]
    assert retest["target"] == "arm-cortex-a53" and report["gate_passed"] is True
    assert retest["accuracy"]["dataset"] == "digits" and retest["latency_ms"] > 0
    deploy = report["stages"]["deploy"]
    assert deploy["version"] == "v1" and deploy["metrics"]  # the retest rides in the manifest
    assert deploy["pointer_uri"].startswith(f"file://{tmp_path}")  # SIGDL_HOME is per test


def test_a_failed_gate_exits_1_and_deploys_nothing(tmp_path):
    proc = _run(tmp_path, "epochs: 1\nmodel: lenet-300-100\nrequirements: ['fps>=1000000000']\n")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["gate_passed"] is False and "deploy" not in report["stages"]
    failed = [c for c in report["stages"]["retest"]["verdict"]["checks"] if not c["passed"]]
    assert [c["requirement"].split(">=")[0] for c in failed] == ["fps"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs: [1\n", "not valid YAML"),
        ("epoch: 3\n", "unknown key(s) epoch"),
        ("- 1\n", "mapping"),
    ],
)
def test_bad_config_is_an_input_error(tmp_path, text, message):
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LoopConfig.from_file(path)
