"""The Python API (`from sigdl import train, compress, retest, deploy`) on the bundled digits,
and `sigdl sensitivity` as a user runs it. `sigdl.run` is tested with the whole loop elsewhere."""

import json
import subprocess
import sys

import pytest

import sigdl
from sigdl.api import CompressResult, DeployResult, RetestResult, TrainResult
from sigdl.core import reports
from sigdl.core.errors import InputError
from sigdl.core.events import ProgressEvent


def sigdl_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sigdl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def round_trips(result):
    """to_json is JSON-ready and from_json reads it, or the bare report, back equal."""
    data = json.loads(json.dumps(result.to_json()))
    assert data["schema_version"] == result.schema_version == 1
    assert type(result).from_json(data) == result
    assert type(result).from_json(result.report) == result
    assert type(result).from_report(result.report) == result  # the 0.1 name


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TrainResult:
    # module scope: one 1-epoch model for every test here (the autouse env is per test, so
    # this sets its own MLflow-off, offline environment)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGDL_HOME", str(tmp_path_factory.mktemp("home")))
        mp.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        mp.setenv("SIGDL_PROGRESS", "0")
        mp.setenv("SIGDL_OFFLINE", "1")
        events: list[ProgressEvent] = []
        result = sigdl.train("lenet-5", "digits", tmp_path_factory.mktemp("train"), epochs=1,
                             on_event=events.append)  # fmt: skip
    # one typed event per epoch, as the CLI and the Watch stream get it
    assert [(e.kind, e.done, e.total) for e in events] == [("epoch", 1, 1)]
    assert events[0]["loss"] > 0 and "epoch 1/1: loss" in events[0].line()
    return result


def test_import_sigdl_stays_cheap():
    code = (
        "import json, sys, sigdl; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'kfp', 'services', 'pipelines', 'mlflow', 'grpc'} or m == 'sigdl.api')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == []
    assert sigdl.__version__ == "0.1.0"
    assert {"train", "compress", "retest", "deploy", "run", "TrainResult"} <= set(dir(sigdl))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sigdl.nope  # noqa: B018


def test_train_result_matches_its_report(trained):
    report = json.loads((trained.out / "report.json").read_text())
    assert isinstance(trained, TrainResult)
    assert (trained.model, trained.dataset) == ("lenet-5", "digits")
    assert trained.report == report
    assert trained.test_accuracy == report["metrics"]["test_accuracy"] > 0.5
    assert trained.onnx_test_accuracy == report["metrics"]["onnx_test_accuracy"]
    assert trained.parameters == report["parameters"] == 431_080
    assert trained.weights_sha256 == report["artifacts"]["weights_sha256"]
    assert trained.mlflow_run_id is None and trained.model_version is None  # tracking off
    assert (trained.out / "model.onnx").is_file()
    round_trips(trained)
    assert TrainResult.from_report(report) == trained


def test_train_options_are_train_config_fields(tmp_path):
    with pytest.raises(InputError, match="unknown training option"):
        sigdl.train("lenet-5", "digits", tmp_path, epochs=1, learning_rate=0.1)


def test_compress_retest_deploy_typed(trained, tmp_path):
    small = sigdl.compress(trained.out, "deep-compression-lenet-5", tmp_path / "c")
    assert isinstance(small, CompressResult)
    metrics = json.loads((small.out / "report.json").read_text())["metrics"]
    assert small.out == tmp_path / "c" and small.recipe == "deep-compression-lenet-5"
    assert small.compressed_bytes == (small.out / "model.sdc").stat().st_size
    assert small.ratio == metrics["ratio"] > 10
    assert small.accuracy == metrics["onnx_test_accuracy"]
    assert small.dense_accuracy == trained.test_accuracy
    assert small.int8_accuracy is None  # no quantize step in this recipe
    assert small.registered_model is None and small.mlflow_run_id is None  # tracking off
    round_trips(small)

    checked = sigdl.retest(small.out, "arm-cortex-a53", dataset="digits",
                           requirements=["fps>=1e9"], out=tmp_path / "r")  # fmt: skip
    assert isinstance(checked, RetestResult)
    assert (checked.target, checked.precision) == ("arm-cortex-a53", "fp32")
    assert not checked.passed and checked.failures == ("fps>=1e+09",)
    assert checked.accuracy == pytest.approx(small.accuracy)
    assert checked.baseline_accuracy == trained.test_accuracy
    assert checked.accuracy_drop_pp == pytest.approx(
        100 * (checked.baseline_accuracy - checked.accuracy)
    )
    assert checked.latency_ms > 0 and checked.fps > 0 and checked.power_w > 0
    assert checked.size_kb == pytest.approx(small.compressed_bytes / 1024)
    assert checked.energy_mj > 0 and checked.memory_mb > 0 and checked.unsupported_ops == ()
    assert json.loads((tmp_path / "r" / "report.json").read_text())["verdict"]["passed"] is False
    round_trips(checked)

    shipped = sigdl.deploy(small.out, "arm-cortex-a53", "api")
    assert isinstance(shipped, DeployResult)
    assert (shipped.fleet, shipped.target, shipped.version, shipped.action) == (
        "api", "arm-cortex-a53", "v1", "publish"
    )  # fmt: skip
    assert shipped.pointer_uri.endswith("/fleets/api/arm-cortex-a53/current")
    assert shipped.alias is None  # no MLflow alias moved: tracking off
    round_trips(shipped)


def test_each_stage_result_lives_in_the_core():
    assert (TrainResult, CompressResult, RetestResult, DeployResult) == (
        reports.TrainResult, reports.CompressResult, reports.RetestResult, reports.DeployResult
    )  # fmt: skip


def test_from_json_names_a_missing_or_wrong_field(trained):
    broken = {**trained.report, "metrics": {"test_accuracy": 0.9}}
    with pytest.raises(InputError, match="train report: KeyError 'onnx_test_accuracy'"):
        TrainResult.from_json(broken)
    with pytest.raises(InputError, match="train report: ValueError"):
        TrainResult.from_json({**trained.report, "parameters": "many"})
    with pytest.raises(InputError, match="expected a retest report, got command 'train'"):
        RetestResult.from_json(trained.to_json())


def test_from_report_refuses_another_stage(trained):
    with pytest.raises(InputError, match="expected a compress report, got command 'train'"):
        CompressResult.from_report(trained.report)
    with pytest.raises(InputError, match="schema_version=2"):
        TrainResult.from_report({**trained.to_json(), "schema_version": 2})


def test_sensitivity_cli(trained, tmp_path):
    out = tmp_path / "sens"
    proc = sigdl_cli("sensitivity", str(trained.out), "--dataset", "digits", "--out", str(out),
                     "--sparsities", "0.5,0.8,0.9", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["command"] == "sensitivity" and report["sparsities"] == [0.5, 0.8, 0.9]
    assert [row["name"] for row in report["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert sum(row["parameters"] for row in report["layers"]) < trained.parameters  # no biases
    for row in report["layers"]:
        assert len(row["accuracy"]) == 3 and all(0 <= a <= 1 for a in row["accuracy"])
    assert report["baseline_accuracy"] == pytest.approx(trained.test_accuracy)
    assert json.loads((out / "report.json").read_text()) == report
    assert "| fc1 |" in (out / "sensitivity.md").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]

    human = sigdl_cli("sensitivity", str(trained.out), "--dataset", "digits", "--layers", "fc2")
    assert human.returncode == 0, human.stderr
    assert "fc2" in human.stdout and "conv1" not in human.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["MISSING", "--dataset", "digits"], "is not a checkpoint directory"),
        (["TRAINED", "--dataset", "cifar-99"], "cifar-99"),
        (["TRAINED", "--dataset", "digits", "--sparsities", "0.5,x"], "--sparsities"),
        (["TRAINED", "--dataset", "digits", "--sparsities", "1.5"], "sparsities="),
        (["TRAINED", "--dataset", "digits", "--layers", "fc9"], "'fc9'"),
    ],
)
def test_sensitivity_bad_input_exits_2_with_one_line(trained, tmp_path, args, message):
    where = {"MISSING": str(tmp_path / "missing"), "TRAINED": str(trained.out)}
    proc = sigdl_cli("sensitivity", *[where.get(a, a) for a in args], "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "o" / "report.json").exists()


def test_run_accepts_no_unknown_options():
    from sigdl.api import _loop_config

    with pytest.raises(InputError, match="unknown loop option"):
        _loop_config({"epoch": 3})
    cfg = _loop_config({"epochs": 2, "targets": ["host"]})
    assert (cfg.epochs, cfg.targets) == (2, ["host"])
