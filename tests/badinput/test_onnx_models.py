"""`sigdl retest` on ONNX models as other tools write them (issue 15, item 6).

Valid foreign models must retest: torch.onnx's TorchScript exporter at opsets 13-20 (21 through
onnx.version_converter), fixed and symbolic batch, initializers listed as inputs, weights in
external data, onnxruntime.quantization's QDQ, QOperator and dynamic formats, and graphs of the
shape tf2onnx and NNCF write (built with onnx.helper in foreign_onnx.py: neither tool is
installed). An op the latency model does not know is reported under operators.unknown with its
conservative estimate instead of crashing the analysis. Models that cannot be retested as asked
are refused with exit 2 and one line naming what is unsupported, and a previous --out is left
as it was.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sigdl.cli import main
from tests.badinput import foreign_onnx as foreign

Build = Callable[[Path], Path]


def _insert_after_first(op: str, domain: str = "", **attrs) -> Callable[[onnx.ModelProto], None]:
    """A graph edit: `op` on the first Relu's output, read by everything that read it."""

    def change(model: onnx.ModelProto) -> None:
        relu = next(n for n in model.graph.node if n.op_type == "Relu")
        old, new = relu.output[0], relu.output[0] + "_x"
        for node in model.graph.node:
            node.input[:] = [new if i == old else i for i in node.input]
        at = list(model.graph.node).index(relu) + 1
        model.graph.node.insert(at, helper.make_node(op, [old], [new], domain=domain, **attrs))
        if domain and all(o.domain != domain for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(domain, 1))

    return change


def _edited(change: Callable[[onnx.ModelProto], None], **export) -> Build:
    def build(folder: Path) -> Path:
        source = foreign.torch_export(folder, **export)
        return foreign.edited(source, folder / "edited.onnx", change)

    return build


def _custom_op(folder: Path) -> Path:
    return _edited(_insert_after_first("FancyNorm", "com.example"))(folder)


def _onnx_op_latency_unknown(folder: Path) -> Path:
    return _edited(_insert_after_first("LpNormalization", axis=1))(folder)


# (id, build, target, dataset, exit code, what the report must show)
VALID = [
    ("torch-op13-dynamic", lambda f: foreign.torch_export(f, opset=13), "host", True, 0),
    ("torch-op14-fixed1-int8", lambda f: foreign.torch_export(f, opset=14, dynamic=False),
     "ti-c66x", True, 0),
    ("torch-op15-mlp", lambda f: foreign.torch_export(f, opset=15, kind="mlp"), "host", True, 0),
    ("torch-op16-fixed4", lambda f: foreign.torch_export(f, opset=16, dynamic=False, batch=4),
     "host", True, 0),
    ("torch-op17-init-inputs",
     lambda f: foreign.torch_export(f, opset=17, initializers_as_inputs=True),
     "arm-cortex-a53", True, 0),
    ("torch-op18-mlp-fp16", lambda f: foreign.torch_export(f, opset=18, kind="mlp"),
     "jetson-tx2", True, 0),
    ("torch-op19-converted", lambda f: foreign.torch_export(f, opset=19), "host", True, 0),
    ("torch-op20", lambda f: foreign.torch_export(f, opset=20), "arm-cortex-a72", True, 0),
    ("torch-op21-converted", lambda f: foreign.torch_export(f, opset=21, kind="mlp"), "host",
     True, 0),
    ("external-data", foreign.with_external_data, "host", True, 0),
    ("ort-qdq", lambda f: foreign.ort_quantized(f, "qdq"), "ti-c66x", True, 0),
    ("ort-qoperator-int8", lambda f: foreign.ort_quantized(f, "qoperator"), "arm-cortex-a53",
     True, 0),
    ("ort-dynamic", lambda f: foreign.ort_quantized(f, "dynamic"), "host", True, 0),
    ("ort-qoperator-no-int8-target", lambda f: foreign.ort_quantized(f, "qoperator", "mlp"),
     "jetson-tx2", False, 1),
    ("tf2onnx-nhwc-matmul", foreign.tf2onnx_like, "arm-cortex-a53", False, 1),
    # host lists Transpose (ONNX Runtime's CPU provider runs it): these pass there
    ("tf2onnx-nchw-gemm", lambda f: foreign.tf2onnx_like(f, gemm=True, nchw=True), "host", True,
     0),
    ("tf2onnx-uint8-input", lambda f: foreign.tf2onnx_like(f, elem_type=TensorProto.UINT8),
     "host", False, 0),
    ("nncf-qdq-per-channel", foreign.nncf_like, "ti-c66x", True, 0),
    ("custom-domain-op", _custom_op, "arm-cortex-a53", False, 1),
    ("op-unknown-to-latency-model", _onnx_op_latency_unknown, "host", True, 1),
]  # fmt: skip


def retest(capsys, model: Path, target: str, out: Path, *extra: str) -> tuple[int, dict, str]:
    code = main(["retest", str(model), "--target", target, "--out", str(out), "--json", *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code in (0, 1) else {}, captured.err


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
    monkeypatch.setenv("SIGDL_HOME", str(tmp_path / "home"))


@pytest.mark.parametrize(
    ("build", "target", "with_data", "code"),
    [pytest.param(*case[1:], id=case[0]) for case in VALID],
)
def test_a_foreign_model_retests(capsys, tmp_path, build, target, with_data, code):
    model = build(tmp_path)
    extra = ["--dataset", "digits"] if with_data else []
    got, report, err = retest(capsys, model, target, tmp_path / "rt", *extra)
    assert got == code, err
    assert report["latency_ms"] > 0 and report["memory"]["total_bytes"] > 0
    assert report["operators"]["checked"] > 0
    assert (report.get("accuracy") is not None) == with_data
    if with_data:  # a real score: the data set fits the model's input
        assert report["accuracy"]["total"] == 360
    # a failed gate is the target's verdict on operators it does not run, never a crash
    assert report["verdict"]["passed"] == (code == 0)
    if code == 1:
        assert not report["operators"]["passed"]
    assert {p.name for p in (tmp_path / "rt").iterdir()} >= {"report.json", "verdict.md"}


def test_a_fixed_batch_is_predicted_and_scored_per_query_of_that_batch(capsys, tmp_path):
    model = foreign.torch_export(tmp_path, dynamic=False, batch=4)
    dynamic = foreign.torch_export(tmp_path, dynamic=True)
    _, fixed, _ = retest(capsys, model, "host", tmp_path / "a", "--dataset", "digits")
    _, one, _ = retest(capsys, dynamic, "host", tmp_path / "b", "--dataset", "digits")
    assert fixed["macs"] == 4 * one["macs"]
    assert fixed["accuracy"]["accuracy"] == pytest.approx(one["accuracy"]["accuracy"])


def test_an_already_quantized_model_runs_as_it_is_on_an_int8_target(capsys, tmp_path):
    _, report, _ = retest(capsys, foreign.ort_quantized(tmp_path, "dynamic"), "ti-c66x",
                          tmp_path / "rt")  # fmt: skip
    assert report["deployable"] == "the model as it is (quantized by its exporter)"
    assert report["operators"]["passed"]  # ConvInteger / MatMulInteger checked as Conv / MatMul


@pytest.mark.parametrize(
    ("build", "op", "domain"),
    [
        pytest.param(_custom_op, "FancyNorm", "com.example", id="custom-domain"),
        pytest.param(_onnx_op_latency_unknown, "LpNormalization", "", id="onnx-op"),
    ],
)
def test_an_unknown_op_is_reported_with_its_estimate(capsys, tmp_path, build, op, domain):
    _, report, _ = retest(capsys, build(tmp_path), "arm-cortex-a53", tmp_path / "rt")
    [unknown] = report["operators"]["unknown"]
    assert (unknown["op"], unknown["domain"]) == (op, domain)
    assert "lowest efficiency" in unknown["estimate"]
    [layer] = [layer for layer in report["layers"] if layer["op"] == op]
    assert layer["class"] == "unknown" and layer["ms"] > 0
    after = [layer for layer in report["layers"] if layer["op"] in ("Conv", "Gemm")]
    assert all(layer["macs"] > 0 for layer in after)  # sized past the unknown op


def test_dynamo_export_retests(capsys, tmp_path):
    pytest.importorskip("onnxscript", reason="torch.onnx's dynamo exporter needs onnxscript")
    model = foreign.torch_export(tmp_path, opset=18, dynamo=True)
    code, report, err = retest(capsys, model, "host", tmp_path / "rt", "--dataset", "digits")
    assert code == 0, err
    assert report["accuracy"]["total"] == 360


# --- refused: exit 2, one line, nothing lost ---------------------------------------------------


def _bytes(data: bytes) -> Build:
    def build(folder: Path) -> Path:
        path = folder / "model.onnx"
        path.write_bytes(data)
        return path

    return build


def _truncated(folder: Path) -> Path:
    path = foreign.torch_export(folder)
    path.write_bytes(path.read_bytes()[:200])
    return path


def _empty_graph(folder: Path) -> Path:
    graph = helper.make_graph([], "empty", [], [])
    return foreign.save(helper.make_model(graph), folder / "empty.onnx")


def _external_missing(folder: Path) -> Path:
    path = foreign.with_external_data(folder)
    (folder / "weights.bin").unlink()
    return path


def _external_outside(folder: Path) -> Path:
    inner = folder / "inner"
    inner.mkdir()
    path = foreign.with_external_data(inner)
    shutil.move(inner / "weights.bin", folder / "weights.bin")

    def point_outside(model: onnx.ModelProto) -> None:
        for init in model.graph.initializer:
            for entry in init.external_data:
                if entry.key == "location":
                    entry.value = "../weights.bin"

    model = onnx.load(str(path), load_external_data=False)
    point_outside(model)
    return foreign.save(model, path)


def _mlp_flat_input(folder: Path) -> Path:
    """A Keras-style MLP taking flattened pixels (N, 784)."""
    w = numpy_helper.from_array(np.zeros((784, 10), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [w],
    )
    return foreign.save(helper.make_model(graph), folder / "flat.onnx")


def _two_inputs(model: onnx.ModelProto) -> None:
    extra = helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1])
    model.graph.input.append(extra)
    output = model.graph.output[0].name
    last = next(n for n in model.graph.node if output in n.output)
    last.output[:] = [output + "_raw"]
    model.graph.node.append(helper.make_node("Mul", [output + "_raw", "scale"], [output]))


def _five_classes(model: onnx.ModelProto) -> None:
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    for init in model.graph.initializer:
        if init.name in gemm.input[1:]:
            array = numpy_helper.to_array(init)[:5]
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5


def _no_logits(model: onnx.ModelProto) -> None:
    """The feature map as the output: (N, 8, 5, 5), no classifier."""
    del model.graph.output[:]
    pool = [n for n in model.graph.node if n.op_type == "MaxPool"][-1]
    model.graph.output.append(
        helper.make_tensor_value_info(pool.output[0], TensorProto.FLOAT, ["N", 8, 5, 5])
    )


def _symbolic_pixels(model: onnx.ModelProto) -> None:
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim, "NCHW", strict=True):
        dim.dim_param = name


def _dangling_node(model: onnx.ModelProto) -> None:
    model.graph.node.append(helper.make_node("Identity", [model.graph.node[0].output[0]], []))


def _kernel_of_wrong_rank(model: onnx.ModelProto) -> None:
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    kept = [a for a in conv.attribute if a.name != "kernel_shape"]
    del conv.attribute[:]
    conv.attribute.extend([*kept, helper.make_attribute("kernel_shape", [3, 3, 3])])


def _opset_from_the_future(model: onnx.ModelProto) -> None:
    model.opset_import[0].version = 99


# (id, build, target, with_data, what the line must name)
REFUSED = [
    ("not-protobuf", _bytes(b"this is not an ONNX model\n" * 4), "host", False,
     "is not an ONNX model"),
    ("truncated", _truncated, "host", False, "is not an ONNX model"),
    ("empty-graph", _empty_graph, "host", False, "its graph has no nodes"),
    ("external-data-missing", _external_missing, "host", False, "weights.bin"),
    ("external-data-outside-folder", _external_outside, "host", False, "../weights.bin"),
    ("nhwc-with-dataset", foreign.tf2onnx_like, "host", True, "channels last, NHWC"),
    ("uint8-input-with-dataset", lambda f: foreign.tf2onnx_like(f, nchw=True,
     elem_type=TensorProto.UINT8), "host", True, "is uint8"),
    ("flat-input-with-dataset", _mlp_flat_input, "host", True, "needs NCHW pixels"),
    ("two-inputs-with-dataset", _edited(_two_inputs), "host", True, "needs a model with one input"),
    ("five-classes-for-ten", _edited(_five_classes), "host", True, "K >= its 10 classes"),
    ("feature-map-output", _edited(_no_logits), "host", True, "needs logits (N, K)"),
    ("symbolic-pixels", _edited(_symbolic_pixels), "host", True, "fixed C and square H x W"),
    ("node-without-output", _edited(_dangling_node), "arm-cortex-a53", False,
     "ONNX graph is inconsistent"),
    ("conv-kernel-of-wrong-rank", _edited(_kernel_of_wrong_rank), "host", False,
     "not a loadable ONNX model"),
    ("custom-op-to-measure", _custom_op, "host", False, "not a loadable ONNX model"),
    ("custom-op-to-requantize", _custom_op, "ti-c66x", False, "not a loadable ONNX model"),
    ("opset-from-the-future", _edited(_opset_from_the_future), "host", False, "opset"),
]  # fmt: skip


@pytest.fixture
def previous_out(tmp_path, capsys) -> Path:
    """A real earlier retest output in --out, which a refused retest must leave as it was."""
    out = tmp_path / "rt"
    (tmp_path / "prev").mkdir()
    model = foreign.torch_export(tmp_path / "prev")
    assert main(["retest", str(model), "--target", "arm-cortex-a53", "--out", str(out)]) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize(
    ("build", "target", "with_data", "needle"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSED],
)
def test_an_unsupported_model_is_refused_in_one_line(
    capsys, tmp_path, previous_out, tree_digest, build, target, with_data, needle
):
    folder = tmp_path / "model"
    folder.mkdir()
    model = build(folder)
    before = tree_digest(previous_out)
    extra = ["--dataset", "digits"] if with_data else []
    code = main(["retest", str(model), "--target", target, "--out", str(previous_out), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert needle in errors[0] and "Traceback" not in err
    assert tree_digest(previous_out) == before
