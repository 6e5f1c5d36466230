"""ONNX models as other tools write them, built offline for the retest bad-input suite.

torch.onnx (the TorchScript exporter, and dynamo when onnxscript is installed) and
onnxruntime.quantization run for real. tf2onnx and NNCF are not installed (nor dependencies),
so `tf2onnx_like` and `nncf_like` build graphs of their shape with onnx.helper: tf2onnx's NHWC
input with a Transpose to NCHW, a Reshape with a shape initializer, MatMul + Add (or Gemm) for a
dense layer and `unk__N` symbolic batch names; NNCF's QuantizeLinear/DequantizeLinear pairs on
activations and on float weights, per output channel.

    path = torch_export(tmp_path, opset=17, dynamic=True)
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper, version_converter
from torch import nn

SIZE = 28  # digits (and MNIST) images are 1 x 28 x 28
CLASSES = 10


class TinyConv(nn.Module):
    """A LeNet-like convnet small enough to retest in a second."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 8, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(8 * 5 * 5, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 28, 28) -> (N, 10)
        return self.head(torch.flatten(self.features(x), 1))


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(SIZE * SIZE, 32), nn.ReLU(), nn.Linear(32, CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _net(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return (TinyConv() if kind == "conv" else TinyMLP()).eval()


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


@torch.no_grad()
def torch_export(
    folder: Path,
    *,
    opset: int = 17,
    dynamic: bool = True,
    kind: str = "conv",
    dynamo: bool = False,
    batch: int = 1,
    initializers_as_inputs: bool = False,
) -> Path:
    """torch.onnx.export of a tiny convnet or MLP; opsets the TorchScript exporter lacks
    (above 20) come from onnx.version_converter, as a user would make them."""
    net, dummy = _net(kind), torch.rand(batch, 1, SIZE, SIZE)
    export_opset = min(opset, 20) if not dynamo else opset
    buf = io.BytesIO()
    axes = {"input": {0: "batch_size"}, "output": {0: "batch_size"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
            program = torch.onnx.export(
                net,
                (dummy,),
                dynamo=True,
                opset_version=export_opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=shapes,
            )
            model = program.model_proto
        else:
            torch.onnx.export(
                net,
                (dummy,),
                buf,
                dynamo=False,
                opset_version=export_opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes=axes,
                keep_initializers_as_inputs=initializers_as_inputs,
            )
            model = onnx.load_from_string(buf.getvalue())
    if export_opset != opset:
        model = version_converter.convert_version(model, opset)
    name = f"torch-{'dynamo' if dynamo else 'ts'}-{kind}-op{opset}-{'dyn' if dynamic else batch}"
    return save(model, folder / f"{name}.onnx")


def with_external_data(folder: Path, location: str = "weights.bin") -> Path:
    """A torch export saved with its weights in a separate file (onnx's external data)."""
    model = onnx.load(str(torch_export(folder, kind="mlp")))
    path = folder / "external.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path


class _Pixels:
    """onnxruntime.quantization's CalibrationDataReader over random pixels in [0, 1]."""

    def __init__(self, name: str, shape: list[int]) -> None:
        rng = np.random.default_rng(0)
        self.batches = iter([{name: rng.random(shape, dtype=np.float32)} for _ in range(4)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def ort_quantized(folder: Path, mode: str, kind: str = "conv") -> Path:
    """onnxruntime.quantization's output: quantize_static in the QDQ or QOperator format
    (QLinearConv, QLinearMatMul, QGemm), or quantize_dynamic (DynamicQuantizeLinear,
    ConvInteger, MatMulInteger)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    source = torch_export(folder, kind=kind)
    path = folder / f"ort-{mode}-{kind}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "dynamic":
            quantize_dynamic(
                str(source),
                str(path),
                weight_type=QuantType.QUInt8,
                op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            )
        else:
            fmt = QuantFormat.QDQ if mode == "qdq" else QuantFormat.QOperator
            reader = _Pixels("input", [8, 1, SIZE, SIZE])
            quantize_static(
                str(source),
                str(path),
                reader,
                quant_format=fmt,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    return path


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def _weights(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * 0.1).astype(np.float32)


def tf2onnx_like(
    folder: Path,
    *,
    gemm: bool = False,
    nchw: bool = False,
    opset: int = 15,
    elem_type: int = TensorProto.FLOAT,
) -> Path:
    """A graph shaped like tf2onnx's export of a Keras convnet: an NHWC input `input_1` with
    batch `unk__6`, a Transpose to NCHW (none with --inputs-as-nchw), Conv/Relu/MaxPool, a
    Transpose back to NHWC before Keras' Flatten, a Reshape whose shape is an int64
    initializer, and the dense layer as MatMul + Add (or Gemm)."""
    nodes, inits = [], []
    pixels = "input_1"
    shape = ["unk__6", 1, SIZE, SIZE] if nchw else ["unk__6", SIZE, SIZE, 1]
    x = pixels
    if elem_type != TensorProto.FLOAT:  # e.g. Keras models that take uint8 images
        nodes.append(helper.make_node("Cast", [x], ["cast:0"], to=TensorProto.FLOAT))
        x = "cast:0"
    if not nchw:
        nodes.append(helper.make_node("Transpose", [x], ["conv2d__6:0"], perm=[0, 3, 1, 2]))
        x = "conv2d__6:0"
    inits += [
        _init("conv2d/kernel:0", _weights((4, 1, 3, 3), 1)),
        _init("conv2d/bias:0", np.zeros(4, np.float32)),
    ]
    nodes += [
        helper.make_node(
            "Conv",
            [x, "conv2d/kernel:0", "conv2d/bias:0"],
            ["conv2d/BiasAdd:0"],
            kernel_shape=[3, 3],
            strides=[1, 1],
            dilations=[1, 1],
            group=1,
        ),
        helper.make_node("Relu", ["conv2d/BiasAdd:0"], ["conv2d/Relu:0"]),
        helper.make_node(
            "MaxPool",
            ["conv2d/Relu:0"],
            ["max_pooling2d/MaxPool:0"],
            kernel_shape=[2, 2],
            strides=[2, 2],
        ),
        helper.make_node(
            "Transpose", ["max_pooling2d/MaxPool:0"], ["max_pooling2d__10:0"], perm=[0, 2, 3, 1]
        ),
        helper.make_node(
            "Reshape", ["max_pooling2d__10:0", "const_fold_opt__12"], ["flatten/Reshape:0"]
        ),
    ]
    features = 4 * 13 * 13
    inits += [
        _init("const_fold_opt__12", np.array([-1, features], np.int64)),
        _init("dense/MatMul/ReadVariableOp:0", _weights((features, CLASSES), 2)),
        _init("dense/BiasAdd/ReadVariableOp:0", np.zeros(CLASSES, np.float32)),
    ]
    w, b = "dense/MatMul/ReadVariableOp:0", "dense/BiasAdd/ReadVariableOp:0"
    if gemm:
        nodes.append(helper.make_node("Gemm", ["flatten/Reshape:0", w, b], ["dense"]))
    else:
        nodes += [
            helper.make_node("MatMul", ["flatten/Reshape:0", w], ["dense/MatMul:0"]),
            helper.make_node("Add", ["dense/MatMul:0", b], ["dense"]),
        ]
    graph = helper.make_graph(
        nodes,
        "tf2onnx",
        [helper.make_tensor_value_info(pixels, elem_type, shape)],
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["unk__7", CLASSES])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="tf2onnx",
        producer_version="1.16.1",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    layout = "nchw" if nchw else "nhwc"
    return save(model, folder / f"tf2onnx-{layout}-{'gemm' if gemm else 'matmul'}.onnx")


def _qdq(
    nodes: list,
    inits: list,
    tensor: str,
    scale: np.ndarray,
    axis: int | None = None,
    dtype=np.uint8,
) -> str:
    """QuantizeLinear -> DequantizeLinear on `tensor`; returns the dequantized name."""
    zero = np.zeros(scale.shape, dtype)
    inits += [_init(f"{tensor}_scale", scale.astype(np.float32)), _init(f"{tensor}_zp", zero)]
    attrs = {} if axis is None else {"axis": axis}
    q, dq = f"{tensor}_q", f"{tensor}_dq"
    nodes += [
        helper.make_node(
            "QuantizeLinear", [tensor, f"{tensor}_scale", f"{tensor}_zp"], [q], **attrs
        ),
        helper.make_node("DequantizeLinear", [q, f"{tensor}_scale", f"{tensor}_zp"], [dq], **attrs),
    ]
    return dq


def nncf_like(folder: Path) -> Path:
    """A graph shaped like NNCF's ONNX export of a quantized convnet: QuantizeLinear/
    DequantizeLinear on every activation a conv or matmul reads (uint8, per tensor) and on
    the float weights (int8, per output channel, axis 0), with the fp32 Conv/Gemm in between."""
    nodes, inits = [], []
    w1, w2 = _weights((8, 1, 3, 3), 3), _weights((CLASSES, 8 * 13 * 13), 4)
    inits += [
        _init("conv.weight", w1),
        _init("fc.weight", w2),
        _init("fc.bias", np.zeros(CLASSES, np.float32)),
    ]
    x = _qdq(nodes, inits, "input", np.array(1 / 255))
    wq1 = _qdq(nodes, inits, "conv.weight", np.abs(w1).max((1, 2, 3)) / 127, 0, np.int8)
    nodes += [
        helper.make_node("Conv", [x, wq1], ["conv_out"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv_out"], ["relu_out"]),
        helper.make_node(
            "MaxPool", ["relu_out"], ["pool_out"], kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Flatten", ["pool_out"], ["flat"]),
    ]
    flat = _qdq(nodes, inits, "flat", np.array(0.05))
    wq2 = _qdq(nodes, inits, "fc.weight", np.abs(w2).max(1) / 127, 0, np.int8)
    nodes.append(helper.make_node("Gemm", [flat, wq2, "fc.bias"], ["output"], transB=1))
    graph = helper.make_graph(
        nodes,
        "nncf",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="nncf"
    )
    model.ir_version = 7
    onnx.checker.check_model(model)
    return save(model, folder / "nncf-qdq.onnx")


def edited(source: Path, path: Path, change) -> Path:
    """A copy of the model at `source`, changed in place by `change(model)`, saved unchecked
    (the broken models a user's own graph surgery leaves behind)."""
    model = onnx.load(str(source))
    change(model)
    return save(model, path)
