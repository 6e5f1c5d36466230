"""The training stage end to end on digits: checkpoint, ONNX contract, ONNX Runtime accuracy,
MLflow lineage in a real SQLite store (the `mlflow_uri` fixture), atomic outputs."""

import json

import numpy as np
import onnx
import pytest

from services.training.stage import run_training
from sigdl.core import checkpoint, onnx_io
from sigdl.core.datasets import load_dataset
from sigdl.core.evaluation import score_onnx, score_torch
from sigdl.core.lineage import open_lineage
from sigdl.core.training import TrainConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    cfg = TrainConfig(model="lenet-5", dataset="digits", epochs=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        report = run_training(cfg, out)
    return out, report


def test_outputs_and_report(trained):
    out, report = trained
    assert sorted(p.name for p in out.iterdir()) == [
        "model.json",
        "model.onnx",
        "model.safetensors",
        "report.json",
    ]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["metrics"]["test_accuracy"] == report["metrics"]["test_accuracy"] > 0.9
    assert len(on_disk["history"]) == 3
    assert on_disk["parameters"] == 431_080


def test_onnx_contract(trained):
    out, _ = trained
    graph = onnx.load(out / "model.onnx").graph
    (inp,), (outp,) = graph.input, graph.output
    assert (inp.name, outp.name) == ("pixels", "logits")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    # normalization is inside the graph: raw [0, 1] pixels give the checkpoint's logits
    model, _ = checkpoint.load_checkpoint(out)
    pixels = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    got = onnx_io.predict(onnx_io.session(out / "model.onnx"), pixels)
    import torch

    with torch.no_grad():
        expected = model(torch.from_numpy(pixels)).numpy()
    assert np.max(np.abs(got - expected)) < 1e-4


def test_onnx_accuracy_equals_checkpoint_accuracy(trained):
    out, report = trained
    data = load_dataset("digits")
    model, meta = checkpoint.load_checkpoint(out)
    torch_score = score_torch(model, data.test, meta.channels, meta.input_size)
    onnx_score = score_onnx(out / "model.onnx", data.test)
    assert onnx_score.correct == torch_score.correct
    assert report["metrics"]["onnx_test_accuracy"] == onnx_score.accuracy


def test_lineage_in_a_real_mlflow_store(tmp_path, mlflow_uri):
    cfg = TrainConfig(model="lenet-300-100", dataset="digits", epochs=2)
    first = run_training(cfg, tmp_path / "a")
    second = run_training(cfg, tmp_path / "b")
    assert first["mlflow"]["tracking_uri"] == mlflow_uri
    assert (first["mlflow"]["version"], second["mlflow"]["version"]) == ("1", "2")
    store = open_lineage()
    run = store.client.get_run(first["mlflow"]["run_id"])
    assert run.data.params["model"] == "lenet-300-100"
    assert run.info.status == "FINISHED"
    history = store.client.get_metric_history(run.info.run_id, "test_accuracy")
    assert len(history) == 3  # two epochs + the final value
    artifacts = {f.path for f in store.client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.onnx", "model/model.safetensors", "model/model.json"} <= artifacts
    versions = store.versions("lenet-300-100-digits")
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["tags"]["sigdl.stage"] == "train"
