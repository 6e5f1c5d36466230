"""`sigdl retest` and `sigdl targets`, driven through `sigdl.cli.main` as a user would."""

import json

import pytest
import torch

from sigdl.cli import main
from sigdl.core import checkpoint, onnx_io
from sigdl.core.checkpoint import ModelMeta


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-models")
    paths = {}
    for name in ("lenet-5", "lenet-300-100"):
        torch.manual_seed(0)
        meta = ModelMeta(model=name, input_size=28, channels=1, classes=10, mean=[0.5], std=[0.5])
        paths[name] = str(onnx_io.export_onnx(checkpoint.build(meta), folder / f"{name}.onnx",
                                              meta.input_shape))  # fmt: skip
    return paths


def test_retest_json_names_the_predicted_latency(models, capsys, tmp_path):
    code = main(
        [
            "retest",
            models["lenet-5"],
            "--target",
            "ti-c66x",
            "--require",
            "fps>=10",
            "--require",
            "size_kb<=1024",
            "--out",
            str(tmp_path / "rt"),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert any("latency_ms" in key for key in result) and result["latency_ms"] > 0
    assert result["precision"] == "int8"  # the target's native numerics
    assert [c["requirement"] for c in result["verdict"]["checks"]][2:] == [
        "fps>=10",
        "size_kb<=1024",
    ]
    assert {p.name for p in (tmp_path / "rt").iterdir()} == {"report.json", "verdict.md"}


def test_a_failed_gate_exits_1(models, capsys):
    # LeNet-300-100's 300- and 100-wide inputs break the NCSDK multiple-of-8 rule
    assert main(["retest", models["lenet-300-100"], "--target", "movidius-ma2450"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "/net/fc2/Gemm" in out
    assert main(["retest", models["lenet-5"], "--target", "host", "--threads", "1",
                 "--require", "latency_ms<=0.000001"]) == 1  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "nope"], "unknown target 'nope'"),
        (["--target", "host", "--require", "fps=>3"], "requirement 'fps=>3'"),
        (["--target", "host", "--precision", "fp8"], "precision 'fp8'"),
        (["--target", "host", "--require", "accuracy>=0.9"], "need a data set"),
    ],
)
def test_bad_input_exits_2_with_one_line(models, capsys, args, message):
    assert main(["retest", models["lenet-5"], *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_missing_model_exits_2(tmp_path, capsys):
    assert main(["retest", str(tmp_path / "none.onnx"), "--target", "host"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_targets_list_and_show(capsys):
    assert main(["targets", "list", "--json"]) == 0
    names = [row["name"] for row in json.loads(capsys.readouterr().out)]
    assert "movidius-ma2450" in names and "host" in names
    assert main(["targets", "show", "jetson-tx2:maxq", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["mode"] == "maxq" and shown["compute"]["clock_ghz"] == 0.85
    assert main(["targets", "show", "ti-c66x"]) == 0
    assert "C66x" in capsys.readouterr().out
    assert main(["targets", "show", "nope"]) == 2


def test_targets_fit_writes_the_users_profile_which_retest_then_uses(models, capsys):
    """`sigdl targets fit` on the Pi 3's calibration set writes $SIGDL_HOME/targets/..., the
    loader prefers it, and a retest there reports the fit's interval and gates on its end."""
    assert main(["targets", "fit", "arm-cortex-a53", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["profile"].endswith("targets/arm-cortex-a53.yaml")
    assert summary["entries"] >= 4 and summary["interval"][0] <= 1 <= summary["interval"][1]
    code = main(["retest", models["lenet-5"], "--target", "arm-cortex-a53", "--require",
                 "latency_ms_hi<=100000", "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    low, high = report["latency_ms_range"]
    assert low <= report["latency_ms"] <= high
    assert high == pytest.approx(report["latency_ms"] * summary["interval"][1])
    assert "published figures" in report["latency_range_basis"]
    # the slow end, not the estimate, is what latency_ms_hi gates on
    budget = (report["latency_ms"] + high) / 2
    requires = ["--require", f"latency_ms<={budget}", "--require", f"latency_ms_hi<={budget}"]
    code = main(["retest", models["lenet-5"], "--target", "arm-cortex-a53", *requires, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [c["passed"] for c in report["verdict"]["checks"][2:]] == [True, False]


def test_targets_fit_refuses_a_target_without_fit_figures(capsys):
    assert main(["targets", "fit", "movidius-ma2450"]) == 2
    assert "no published figure" in capsys.readouterr().err
