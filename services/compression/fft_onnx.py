"""An ONNX model whose 2-D convolutions run in the frequency domain with ONNX's `DFT` operator
(opset 20), for ONNX Runtime; an experiment beside the `fft-conv` step, whose decoded
`model.onnx` keeps direct `Conv` nodes (the default does not change).

Each eligible `Conv` (group 1, dilation 1, 2-D, weight and bias initializers) becomes the
`fft_conv2d` of `steps/fft_conv.py` written in ONNX nodes: `Pad` (the conv's pads), a one-sided
real `DFT` along W and a complex `DFT` along H on the `fft_size` grid (dft_length zero-pads),
the channel sum as four real `MatMul`s per frequency bin against the precomputed kernel spectrum
conj(rfft2(w)) (two initializers, real and imaginary, laid out (Nh, Nf, C, O)), the inverse
`DFT` along H and the one-sided inverse along W (a real output), then `Slice` (valid outputs,
stride) and `Add` (bias). The rest of the graph is converted to opset 20 by
`onnx.version_converter`.

    fft_bytes, layers = fft_conv_onnx(Path("model.onnx").read_bytes())
    layers  # {"/net/conv1/Conv": {"grid": [28, 28], "kernel": [5, 5]}, ...}
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference, version_converter

from services.compression.steps.fft_conv import fft_size
from sigdl.core.errors import InputError

DFT_OPSET = 20  # DFT takes its axis as an input from opset 20 on


def fft_conv_onnx(model_bytes: bytes) -> tuple[bytes, dict[str, dict]]:
    """`model_bytes` with every eligible Conv computed through DFT nodes; returns the new
    model's bytes and, per rewritten Conv (by node name), its FFT grid and kernel size."""
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:  # protobuf raises its own DecodeError
        raise InputError(f"not an ONNX model: {type(exc).__name__}") from None
    if _opset(model) < DFT_OPSET:
        model = version_converter.convert_version(model, DFT_OPSET)
    shapes = _input_shapes(model)
    inits = {t.name: t for t in model.graph.initializer}
    nodes, chosen, spent = [], {}, set()
    for index, node in enumerate(model.graph.node):
        shape = shapes.get(node.input[0]) if node.op_type == "Conv" else None
        if not _eligible(node, inits, shape):
            nodes.append(node)
            continue
        prefix = f"fft{index}"
        new_nodes, new_inits, info = _fft_nodes(node, inits, shape, prefix)
        nodes.extend(new_nodes)
        model.graph.initializer.extend(new_inits)
        spent.update(node.input[1:])
        chosen[node.name or prefix] = info
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for n in nodes for name in n.input}
    keep = [t for t in model.graph.initializer if t.name not in spent or t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return model.SerializeToString(), chosen


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _input_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Each tensor's inferred shape (ints, or None for a symbolic dimension)."""
    inferred = shape_inference.infer_shapes(model)
    out = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info]:
        dims = info.type.tensor_type.shape.dim
        out[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _eligible(node: onnx.NodeProto, inits: dict, shape: list | None) -> bool:
    """Whether this node is a Conv the rewrite handles (known C, H, W; initializer weights)."""
    if node.op_type != "Conv" or shape is None or len(shape) != 4 or None in shape[1:]:
        return False
    a = _attrs(node)
    weight = inits.get(node.input[1])
    bias_ok = len(node.input) < 3 or not node.input[2] or node.input[2] in inits
    plain = a.get("group", 1) == 1 and set(a.get("dilations", [1, 1])) == {1}
    explicit = a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    return weight is not None and len(weight.dims) == 4 and bias_ok and plain and explicit


def _fft_nodes(
    node: onnx.NodeProto, inits: dict, shape: list, prefix: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], dict]:
    """The DFT-domain nodes and initializers that compute `node`'s output."""
    a = _attrs(node)
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)  # (O, C, kh, kw)
    o, c, kh, kw = w.shape
    top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
    sh, sw = a.get("strides", [1, 1])
    h, wd = shape[2] + top + bottom, shape[3] + left + right
    grid = (fft_size(h), fft_size(wd))
    spectrum = np.conj(np.fft.rfft2(w, s=grid)).transpose(2, 3, 1, 0)  # (Nh, Nf, C, O)

    def name(s: str) -> str:
        return f"{prefix}/{s}"

    def const(s: str, value: np.ndarray) -> str:
        tensors.append(numpy_helper.from_array(value, name(s)))
        return name(s)

    tensors: list[onnx.TensorProto] = []
    sr = const("spectrum_re", np.ascontiguousarray(spectrum.real, dtype=np.float32))
    si = const("spectrum_im", np.ascontiguousarray(spectrum.imag, dtype=np.float32))
    last, ax2, ax3 = const("last", np.array([-1])), const("h", np.array(2)), const("w", np.array(3))
    nh, nw = const("nh", np.array(grid[0])), const("nw", np.array(grid[1]))
    x = node.input[0]
    nodes = []
    if any((top, left, bottom, right)):
        pads = const("pads", np.array([0, 0, top, left, 0, 0, bottom, right]))
        nodes.append(helper.make_node("Pad", [x, pads], [name("padded")]))
        x = name("padded")
    nodes += [
        helper.make_node("Unsqueeze", [x, last], [name("real")]),  # (B, C, H, W, 1)
        helper.make_node("DFT", [name("real"), nw, ax3], [name("fw")], onesided=1),
        helper.make_node("DFT", [name("fw"), nh, ax2], [name("fhw")]),  # (B, C, Nh, Nf, 2)
        helper.make_node("Transpose", [name("fhw")], [name("bins")], perm=[2, 3, 0, 1, 4]),
        helper.make_node(
            "Split", [name("bins")], [name("xr1"), name("xi1")], axis=4, num_outputs=2
        ),
        helper.make_node("Squeeze", [name("xr1"), last], [name("xr")]),  # (Nh, Nf, B, C)
        helper.make_node("Squeeze", [name("xi1"), last], [name("xi")]),
        helper.make_node("MatMul", [name("xr"), sr], [name("rr")]),  # (Nh, Nf, B, O)
        helper.make_node("MatMul", [name("xi"), si], [name("ii")]),
        helper.make_node("MatMul", [name("xr"), si], [name("ri")]),
        helper.make_node("MatMul", [name("xi"), sr], [name("ir")]),
        helper.make_node("Sub", [name("rr"), name("ii")], [name("yr")]),
        helper.make_node("Add", [name("ri"), name("ir")], [name("yi")]),
        helper.make_node("Unsqueeze", [name("yr"), last], [name("yr1")]),
        helper.make_node("Unsqueeze", [name("yi"), last], [name("yi1")]),
        helper.make_node("Concat", [name("yr1"), name("yi1")], [name("y")], axis=-1),
        helper.make_node("Transpose", [name("y")], [name("ys")], perm=[2, 3, 0, 1, 4]),
        helper.make_node("DFT", [name("ys"), nh, ax2], [name("gh")], inverse=1),
        helper.make_node("DFT", [name("gh"), nw, ax3], [name("g")], inverse=1, onesided=1),
        helper.make_node("Squeeze", [name("g"), last], [name("full")]),  # (B, O, Nh, Nw)
    ]
    starts, ends = (
        const("starts", np.array([0, 0])),
        const("ends", np.array([h - kh + 1, wd - kw + 1])),
    )
    axes, steps = const("axes", np.array([2, 3])), const("steps", np.array([sh, sw]))
    out = node.output[0]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    cropped = name("cropped") if bias else out
    nodes.append(helper.make_node("Slice", [name("full"), starts, ends, axes, steps], [cropped]))
    if bias:
        b = numpy_helper.to_array(inits[bias]).astype(np.float32).reshape(1, o, 1, 1)
        nodes.append(helper.make_node("Add", [cropped, const("bias", b)], [out]))
    info = {"grid": list(grid), "kernel": [kh, kw], "channels": c, "filters": o}
    return nodes, tensors, info
