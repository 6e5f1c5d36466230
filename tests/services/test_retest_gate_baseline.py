"""What the retest gate compares, and which model an int8 target runs, on real runs.

A LeNet-300-100 trained one epoch on the bundled `digits` set, then compressed by a recipe that
prunes hard without retraining (and quantizes, so the compression writes model.int8.onnx): its
decoded model is well below the dense one. accuracy_drop must be measured against the dense
trained model (ARCHITECTURE.md), never against the compressed model's own fp32 accuracy, and an
int8 target must run the model.int8.onnx deploy ships. Lineage goes to a real MLflow store
(SQLite, the `mlflow_uri` fixture); the gRPC checks start a real StageServer on port 0; S3 is
the real SeaweedFS server of the `s3_server` fixture (tests/conftest.py).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import grpc
import pytest

from services.compression.stage import run_compression
from services.grpc_common.server import ServerConfig, StageServer
from services.protos.sigdl.v1 import common_pb2
from services.retest.client import RetestClient, retest_request
from services.retest.server import RetestServicer
from services.retest.source import load_source
from services.retest.stage import FROM_COMPRESSION, run_retest
from services.training.stage import run_training
from sigdl.core import chain, numerics, onnx_io, store
from sigdl.core.datasets import adapt, load_dataset
from sigdl.core.errors import InputError
from sigdl.core.evaluation import score_onnx
from sigdl.core.lineage import RunContext, open_lineage
from sigdl.core.training import TrainConfig

# prunes 90% of the hidden layers without retraining: digits accuracy 0.80 -> about 0.66
WRECK = """
name: wreck
seed: 0
steps:
  - type: prune
    sparsity: {fc1: 0.9, fc2: 0.9, fc3: 0.5}
    rounds: 1
  - type: quantize
    weight_bits: {fc: 8}
    calibration_samples: 64
"""
FAST = {"target": "arm-cortex-a53", "threads": 1}  # emulated: no real latency measurement


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        mp.setenv("SIGDL_PROGRESS", "0")
        run_training(TrainConfig(model="lenet-300-100", dataset="digits", epochs=1), root / "train")
        (root / "wreck.yaml").write_text(WRECK)
        run_compression(root / "train", root / "wreck.yaml", "digits", root / "compress")
    return {"root": root, "train": root / "train", "compress": root / "compress"}


@pytest.fixture
def compress_report(runs) -> dict:
    return json.loads((runs["compress"] / "report.json").read_text())


def _copy(runs, tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
    copy = Path(shutil.copytree(runs["compress"], tmp_path / "copy"))
    for name in drop:
        (copy / name).unlink()
    return _rebind(copy)


def _rebind(copy: Path) -> Path:
    """Record the copy's files in its report.json as the compress run that wrote them would
    have (the artifact chain refuses a file changed or removed after the run)."""
    report = json.loads((copy / "report.json").read_text())
    report["files"] = chain.digests(copy)
    files = report["files"]
    report["chain"] = {n: {**link, "sha256": files[n]} for n, link in report["chain"].items()
                       if n in files}  # fmt: skip
    (copy / "report.json").write_text(json.dumps(report))
    return copy


def _retest(model: Path, **options) -> dict:
    return run_retest(str(model), options.pop("target", FAST["target"]), dataset="digits",
                      **{"threads": FAST["threads"], **options})  # fmt: skip


# --- the baseline accuracy_drop is measured against --------------------------------------------
@pytest.mark.parametrize("member", ["", "model.sdc", "model.onnx"])
def test_a_compressed_model_is_gated_against_the_dense_trained_model(
    runs, compress_report, tmp_path, member
):
    dense = compress_report["metrics"]["dense_accuracy"]
    report = _retest(runs["compress"] / member, precision="fp32", out=tmp_path / "rt",
                     requirements=["accuracy_drop<=1"])  # fmt: skip
    acc = report["accuracy"]
    assert acc["baseline"] == "dense trained model (compress report)"
    assert acc["baseline_accuracy"] == dense
    assert acc["accuracy"] == pytest.approx(compress_report["metrics"]["onnx_test_accuracy"])
    assert acc["drop_pp"] == pytest.approx(100 * (dense - acc["accuracy"])) and acc["drop_pp"] > 5
    # against its own fp32 accuracy (the old reference) the model lost nothing and would pass
    assert acc["fp32_accuracy"] == acc["accuracy"] and acc["numerics_drop_pp"] == 0
    assert not report["verdict"]["passed"]
    (check,) = [c for c in report["verdict"]["checks"] if c["requirement"] == "accuracy_drop<=1"]
    assert check["value"] == acc["drop_pp"] and not check["passed"]
    verdict = (tmp_path / "rt" / "verdict.md").read_text()
    assert "(dense trained model (compress report))" in verdict and "FAIL" in verdict
    written = json.loads((tmp_path / "rt" / "report.json").read_text())
    assert written["accuracy"]["baseline_accuracy"] == dense


def test_an_explicit_baseline_accuracy_wins(runs):
    report = _retest(runs["compress"], precision="fp32", baseline_accuracy=0.7)
    acc = report["accuracy"]
    assert acc["baseline"] == "dense trained model (given)" and acc["baseline_accuracy"] == 0.7
    assert acc["drop_pp"] == pytest.approx(100 * (0.7 - acc["accuracy"]))


def test_a_bare_model_onnx_falls_back_to_its_own_fp32_accuracy(runs, tmp_path):
    bare = tmp_path / "bare" / "candidate.onnx"
    bare.parent.mkdir()
    shutil.copy(runs["compress"] / "model.onnx", bare)
    shutil.copy(runs["compress"] / "report.json", bare.parent)  # not a compress output's file
    acc = _retest(bare, precision="int8")["accuracy"]
    assert acc["baseline"] == "this model at fp32"
    assert acc["baseline_accuracy"] == acc["fp32_accuracy"]
    assert acc["drop_pp"] == pytest.approx(acc["numerics_drop_pp"])


def test_a_compress_report_for_another_data_set_is_no_baseline(runs, tmp_path):
    copy = _copy(runs, tmp_path)
    report = json.loads((copy / "report.json").read_text())
    (copy / "report.json").write_text(json.dumps({**report, "dataset": "mnist"}))
    acc = _retest(copy, precision="fp32")["accuracy"]
    assert acc["baseline"] == "this model at fp32" and acc["drop_pp"] == 0


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan])
def test_a_baseline_outside_0_1_is_an_input_error(runs, bad):
    with pytest.raises(InputError, match="baseline_accuracy"):
        _retest(runs["compress"], precision="fp32", baseline_accuracy=bad)


# --- the int8 model an int8 target runs --------------------------------------------------------
@pytest.mark.parametrize("member", ["", "model.sdc"])
def test_an_int8_target_runs_the_compressions_int8_model(runs, tmp_path, member):
    """The copy's model.int8.onnx is the dense trained model quantized (far better than the
    pruned model): a retest that re-quantized the pruned model could not score like it."""
    copy = _copy(runs, tmp_path)
    dense = (runs["train"] / "model.onnx").read_bytes()
    channels, size, _ = onnx_io.input_shape(onnx_io.session_from_bytes(dense))
    mode = load_source(copy).meta.adapt_mode
    pixels = adapt(load_dataset("digits").train.images[:256], channels, size, mode).numpy()
    (copy / "model.int8.onnx").write_bytes(numerics.convert(dense, "int8", pixels))
    report = _retest(_rebind(copy) / member, target="ti-c66x")
    acc = report["accuracy"]
    assert report["precision"] == "int8" and report["deployable"] == FROM_COMPRESSION
    assert report["calibration"] is None
    expected = score_onnx(copy / "model.int8.onnx", load_dataset("digits").test, mode)
    assert acc["accuracy"] == expected.accuracy
    assert acc["accuracy"] > acc["fp32_accuracy"] + 0.05  # the dense model, not the pruned one


def test_the_real_compress_output_scores_as_its_report_says(runs, compress_report):
    report = _retest(runs["compress"], target="ti-c66x")
    assert report["deployable"] == FROM_COMPRESSION
    assert report["accuracy"]["accuracy"] == compress_report["metrics"]["int8_onnx_test_accuracy"]


def test_without_a_model_int8_onnx_the_retest_re_quantizes(runs, tmp_path):
    copy = _copy(runs, tmp_path, drop=("model.int8.onnx",))
    report = _retest(copy, target="ti-c66x")
    assert report["deployable"] == "re-quantized at retest (calibration digits train[:256])"
    assert report["calibration"] == "digits train[:256]"
    assert _retest(runs["compress"], precision="fp32")["deployable"] == "the fp32 model"


@pytest.mark.parametrize("member", ["", "model.sdc"])
def test_a_compress_output_on_s3_brings_its_int8_model_and_report(
    runs, compress_report, s3_server, monkeypatch, member
):
    monkeypatch.setenv("SIGDL_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("SIGDL_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("SIGDL_S3_SECRET_KEY", s3_server.secret_key)
    bucket = f"retest-baseline{len(member)}"
    store.S3Backend().client.make_bucket(bucket)
    for path in runs["compress"].iterdir():
        store.put_file(f"s3://{bucket}/compress/{path.name}", path)
    uri = f"s3://{bucket}/compress" + (f"/{member}" if member else "")
    report = run_retest(uri, "ti-c66x", dataset="digits", threads=1)
    acc = report["accuracy"]
    assert report["deployable"] == FROM_COMPRESSION
    assert acc["accuracy"] == compress_report["metrics"]["int8_onnx_test_accuracy"]
    assert acc["baseline"] == "dense trained model (compress report)"
    assert acc["baseline_accuracy"] == compress_report["metrics"]["dense_accuracy"]


# --- lineage ------------------------------------------------------------------------------------
def test_the_retest_run_nests_under_the_pipeline_run(runs, mlflow_uri):
    from mlflow import MlflowClient

    tracking = open_lineage()
    with tracking.run("pipeline run p-7") as parent:
        context = RunContext(parent_run_id=parent, pipeline_run_id="p-7", iteration=2,
                             candidate="c-3")  # fmt: skip
        report = run_retest(str(runs["compress"]), "ti-c66x", lineage=context)
    tags = MlflowClient(mlflow_uri).get_run(report["mlflow"]["run_id"]).data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert (tags["sigdl.pipeline_run_id"], tags["sigdl.iteration"]) == ("p-7", "2")
    assert (tags["sigdl.candidate"], tags["sigdl.stage"]) == ("c-3", "retest")
    assert report["lineage"] == context.to_json()


# --- over gRPC -----------------------------------------------------------------------------------
def test_the_client_request_and_the_servicer_parse_carry_baseline_and_lineage(runs):
    context = RunContext(parent_run_id="r1", pipeline_run_id="p-7", iteration=2, target="ti-c66x")
    for lineage in (context, context.to_json()):
        request = retest_request(runs["compress"], "ti-c66x", baseline_accuracy=0.8,
                                 lineage=lineage)  # fmt: skip
        assert request.lineage.parent_run_id == "r1" and request.lineage.iteration == 2
        params = RetestServicer(None).parse(request)
        assert params["baseline_accuracy"] == 0.8 and params["lineage"] == context.to_json()
    params = RetestServicer(None).parse(retest_request(runs["compress"], "ti-c66x"))
    assert params["baseline_accuracy"] is None  # 0 on the wire: not given
    assert RunContext.from_json(params["lineage"]) == RunContext()


def test_a_bad_baseline_over_grpc_is_invalid_argument(runs):
    server = StageServer(["retest"], ServerConfig(port=0, grace_s=0.0))
    port = server.start()
    try:
        assert server.wait_ready(30), "the server never became SERVING"
        with RetestClient(f"127.0.0.1:{port}") as client:
            for bad in (1.5, -0.1):
                request = retest_request(runs["compress"], "ti-c66x", baseline_accuracy=bad)
                with pytest.raises(grpc.RpcError) as info:
                    client.submit(request)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert info.value.details().startswith("baseline_accuracy:")
            job = client.wait(client.submit(retest_request(
                runs["compress"], "ti-c66x", dataset="digits", baseline_accuracy=0.99,
                requirements=["accuracy_drop<=1"])).id)  # fmt: skip
    finally:
        server.stop(grace_s=0)
    assert job.state == common_pb2.SUCCEEDED, job.error
    acc = json.loads(job.report_json)["accuracy"]
    assert acc["baseline"] == "dense trained model (given)" and acc["baseline_accuracy"] == 0.99
