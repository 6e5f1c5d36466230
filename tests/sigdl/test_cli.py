"""The `sigdl` CLI as a user runs it: a subprocess per command, exit codes and one-line errors."""

import json
import subprocess
import sys

import pytest


def sigdl(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sigdl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_help_lists_the_commands():
    proc = sigdl("--help")
    assert proc.returncode == 0
    for name in ("models", "data", "train", "run", "lineage"):
        assert name in proc.stdout


def test_models_list_json():
    proc = sigdl("models", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["lenet-5"]["parameters"] == 431_080
    assert rows["vgg-16"]["parameters"] == 138_357_544
    assert len(rows) >= 7


def test_data_list_json(shared_data):
    proc = sigdl("data", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["digits"]["found"] and rows["mnist"]["found"]
    assert str(shared_data / "mnist") in rows["mnist"]["where"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet-50", "--dataset", "digits"], "unknown model 'resnet-50'"),
        (["--model", "lenet-5", "--dataset", "cifar-99"], "cifar-99"),
        (["--model", "lenet-5", "--dataset", "digits", "--epochs", "-1"], "epochs=-1"),
        (["--model", "lenet-5", "--dataset", "digits", "--nproc", "0"], "nproc=0"),
        (["--model", "lenet-5", "--dataset", "digits", "--epochs", "two"], "'--epochs'"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    proc = sigdl("train", *args, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_out_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = sigdl(
        "train", "--model", "lenet-5", "--dataset", "digits", "--out", str(blocker / "out")
    )
    assert proc.returncode == 2 and "--out" in proc.stderr


def test_train_json_and_files(tmp_path):
    out = tmp_path / "out"
    proc = sigdl(
        "train",
        "--model",
        "lenet-300-100",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["metrics"]["test_accuracy"] > 0.8
    assert {p.name for p in out.iterdir()} >= {
        "model.safetensors",
        "model.json",
        "model.onnx",
        "report.json",
    }


def test_models_export_zoo_and_checkpoint(tmp_path):
    proc = sigdl(
        "models",
        "export",
        "squeezenet-1.1",
        "--onnx",
        str(tmp_path / "sq.onnx"),
        "--input-size",
        "64",
        "--classes",
        "10",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["input_shape"] == [1, 3, 64, 64] and result["onnx_max_abs_diff"] < 1e-4
    bad = sigdl("models", "export", "nope", "--onnx", str(tmp_path / "x.onnx"))
    assert bad.returncode == 2 and "unknown model 'nope'" in bad.stderr


def test_lineage_of_unknown_model_is_exit_2(mlflow_uri):
    proc = sigdl("lineage", "no-such-model")
    assert proc.returncode == 2 and "no registered model 'no-such-model'" in proc.stderr
