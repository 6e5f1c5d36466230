"""`sigdl run`: the main job on embedded defaults (digits, no files, no network)."""

import json
import subprocess
import sys

import pytest

from pipelines.local import LoopConfig
from sigdl.errors import InputError


def test_run_writes_the_training_stage_and_logs_to_mlflow(tmp_path, mlflow_uri):
    config = tmp_path / "loop.yaml"
    config.write_text("epochs: 2\nmodel: lenet-5\ntrain:\n  seed: 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sigdl.cli", "run", "--config", str(config),
         "--out", str(tmp_path / "run"), "--json"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
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
