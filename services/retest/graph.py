"""What every node of an ONNX model computes and moves, at batch 1.

Shapes come from ONNX shape inference with the batch axis pinned to 1; the counts are the
usual ones: multiply-accumulates for Conv/Gemm/MatMul, one operation per output element for
elementwise ops, one per window element for pooling, and for a `DFT` the real operations of
the FFT algorithm that computes it (see `fft_ops`). Weights are initializers read by a node.

    nodes = analyze(onnx.load("model.onnx", load_external_data=False))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx
from onnx import helper, numpy_helper, shape_inference

from sigdl.core.errors import InputError

# Nodes that cost nothing at run time: views, constant plumbing, and the Q/DQ/Cast nodes that
# are how an ONNX model spells its numerics (a runtime fuses them into the compute nodes).
FREE_OPS = {
    "Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Shape", "Constant",
    "QuantizeLinear", "DequantizeLinear", "Cast",
}  # fmt: skip
NUMERICS_OPS = {"QuantizeLinear", "DequantizeLinear", "Cast", "DynamicQuantizeLinear"}
POOL_OPS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
GEMM_OPS = {"Gemm", "MatMul"}
DATA_OPS = {"Concat", "Transpose", "Split", "Slice", "Pad", "Gather", "Expand", "Tile"}
DFT_OPS = {"DFT"}  # ONNX's discrete Fourier transform (opset 17; axis as an input from 20)
# ops costed as one operation per output element
ELEMENTWISE_OPS = {
    "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu",
    "Selu", "Gelu", "Erf", "Softplus", "Mish", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min",
    "Mean", "Pow", "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Floor", "Ceil", "Round",
    "Sign", "Where", "Equal", "Less", "Greater", "Not", "And", "Or", "BatchNormalization",
    "Softmax", "LogSoftmax", "LayerNormalization", "ReduceMean", "ReduceSum", "ReduceMax",
    "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul", "QLinearLeakyRelu", "QLinearSigmoid",
}  # fmt: skip
# quantized operators (onnxruntime.quantization's QOperator format and quantize_dynamic):
# the float op whose work they do, and which input holds their weight
QUANTIZED_OPS = {
    "QLinearConv": ("Conv", 3), "ConvInteger": ("Conv", 1), "QLinearMatMul": ("MatMul", 3),
    "MatMulInteger": ("MatMul", 1), "QGemm": ("Gemm", 3),
    "QLinearAveragePool": ("AveragePool", None),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", None), "QLinearConcat": ("Concat", None),
}  # fmt: skip
UNKNOWN = "unknown"  # the op class of an op the latency model has no cost for
# how an unknown op is costed (predict.py): an estimate that errs on the slow side
UNKNOWN_ESTIMATE = (
    "costed as one operation per element read and written, at the profile's lowest "
    "efficiency, highest per-node overhead and highest per-element cost"
)
STEM_MAX_CHANNELS = 4  # a conv reading <= 4 channels (an RGB/gray stem) has its own efficiency
MAX_INFERENCE_PASSES = 16  # shape inference reruns past ops it does not know
# integer initializers up to this size keep their values for shape inference: they are the
# axes, pads, starts/ends and DFT lengths that decide the shapes after them (Unsqueeze, Slice,
# DFT since opsets 13-20 take them as inputs)
SHAPE_DATA_MAX_ELEMS = 64
KNOWN_DOMAINS = ("", "ai.onnx", "com.microsoft")  # ONNX's own and ONNX Runtime's contrib ops


@dataclass
class Node:
    """One ONNX node with the work and traffic it implies at batch 1."""

    name: str
    op_type: str
    op_class: str  # a targets.schema.OP_CLASSES entry, or "free"
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    macs: int = 0  # multiply-accumulates (2 operations each)
    ops: int = 0  # other arithmetic operations
    weight_elems: int = 0  # initializer elements the node reads
    in_elems: int = 0  # activation elements read
    out_elems: int = 0  # activation elements written
    in_shape: list[int] = field(default_factory=list)  # first activation input
    out_shape: list[int] = field(default_factory=list)  # first output
    weight_shape: list[int] = field(default_factory=list)  # first initializer input
    fused_into: str | None = None  # the node a runtime fuses this one into
    domain: str = ""  # the operator set: "" (ai.onnx), "com.microsoft", a custom one
    shape_assumed: bool = False  # output shape not inferable: taken as its input's

    @property
    def float_op(self) -> str:
        """The float op whose work a quantized op does (QLinearConv: Conv), else op_type."""
        return QUANTIZED_OPS.get(self.op_type, (self.op_type, None))[0]

    @property
    def total_ops(self) -> int:
        return 2 * self.macs + self.ops


def is_quantized(model: bytes) -> bool:
    """Whether a model.onnx is quantized already (QDQ pairs, onnxruntime's QOperator format or
    quantize_dynamic's integer ops): it runs int8 as it is and cannot be quantized again."""
    proto = onnx.load_from_string(model)
    quantizing = {"QuantizeLinear", "DynamicQuantizeLinear", *QUANTIZED_OPS}
    return any(node.op_type in quantizing for node in proto.graph.node)


def _is_shape_data(init: onnx.TensorProto) -> bool:
    """A small integer initializer held in the model: axes, pads, slice bounds, a DFT length
    (not one saved as external data, whose bytes are not loaded)."""
    integer = init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    inline = init.data_location != onnx.TensorProto.EXTERNAL
    return integer and inline and math.prod(init.dims) <= SHAPE_DATA_MAX_ELEMS


def _pin_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the graph whose symbolic dimensions are all 1, without its weights' bytes
    (their shapes only) but with the values of its small integer initializers, which shape
    inference needs to size what follows an Unsqueeze, a Slice or a DFT."""
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    del graph.initializer[:]
    for value in list(graph.input) + list(graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    pinned = helper.make_model(graph, opset_imports=model.opset_import)
    pinned.ir_version = model.ir_version
    for init in model.graph.initializer:
        if _is_shape_data(init):
            pinned.graph.initializer.append(init)
        else:  # shapes only: inference needs the weights' dims, not their bytes
            value = helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            pinned.graph.input.append(value)
    return pinned


def _infer(pinned: onnx.ModelProto) -> dict[str, tuple[list[int], int]]:
    """Tensor name -> (shape, element type) as far as ONNX shape inference gets."""
    try:
        inferred = shape_inference.infer_shapes(pinned)
    except Exception as exc:  # onnx's InferenceError, ValidationError and friends
        reason = " ".join(str(exc).split())[:200]
        raise InputError(
            f"the ONNX graph is inconsistent ({reason}): expected a model "
            "that ONNX shape inference accepts"
        ) from None
    found = {init.name: (list(init.dims), init.data_type) for init in pinned.graph.initializer}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]
            found[value.name] = (dims, tensor.elem_type)
    return found


def _shapes(model: onnx.ModelProto) -> tuple[dict[str, list[int]], set[str]]:
    """(tensor shapes at batch 1, the outputs whose shape was assumed). Shape inference stops at
    an op it does not know (a custom domain's); its outputs are then taken to have the shape
    of its first input, so that the nodes after it are still sized, and inference runs again."""
    pinned = _pin_batch(model)
    assumed: set[str] = set()
    for _ in range(MAX_INFERENCE_PASSES):
        found = _infer(pinned)
        added = False
        for node in pinned.graph.node:  # nodes whose inputs inference sized, but not them
            outputs = [o for o in node.output if o and o not in found and o not in assumed]
            inputs = [found.get(i) for i in node.input if i]
            if not outputs or not inputs or None in inputs:
                continue
            for name in outputs:
                assumed.add(name)
                value = helper.make_tensor_value_info(name, inputs[0][1], inputs[0][0])
                pinned.graph.value_info.append(value)
            added = True
        if not added:
            break
    return {name: shape for name, (shape, _) in found.items()}, assumed


def _numel(shape: list[int] | None) -> int:
    return math.prod(shape) if shape else 0


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def op_class(op_type: str, attrs: dict, in_shape: list[int], domain: str = "") -> str:
    """The latency model's class of an op (see targets.schema.OP_CLASSES), or UNKNOWN for an
    op it has no cost for (any op of a custom domain)."""
    if domain not in KNOWN_DOMAINS:
        return UNKNOWN
    op_type = QUANTIZED_OPS.get(op_type, (op_type, None))[0]
    if op_type in FREE_OPS:
        return "free"
    if op_type == "Conv":
        channels = in_shape[1] if len(in_shape) > 1 else 0
        group = attrs.get("group", 1)
        if group > 1 and group == channels:
            return "depthwise"
        if channels <= STEM_MAX_CHANNELS:
            return "conv_stem"
        return "pointwise" if list(attrs.get("kernel_shape", [])) == [1, 1] else "conv"
    if op_type in GEMM_OPS:
        return "gemm"
    if op_type in POOL_OPS:
        return "pool"
    if op_type in DATA_OPS:
        return "data"
    if op_type in DFT_OPS:
        return "dft"
    return "elementwise" if op_type in ELEMENTWISE_OPS else UNKNOWN


def fft_ops(n: int) -> int:
    """Real arithmetic operations of one 1-D complex FFT of length `n`, as a radix-2 FFT
    library computes it (ONNX Runtime's CPU DFT kernel, onnxruntime/core/providers/cpu/signal/
    dft.cc: `fft_radix2`, else `dft_bluestein_z_chirp`):
    - n a power of two: radix-2 Cooley-Tukey, (n / 2) log2 n butterflies of one complex
      multiply (6 real operations) and two complex adds (2 each): 5 n log2 n;
    - any other n: Bluestein's chirp-z transform, two radix-2 FFTs of m, the next power of two
      >= 2n - 1, m pointwise complex products and 2n chirp products: 10 m log2 m + 6m + 12n.
    A one-sided (real-input or real-output) transform is counted as the full complex one: the
    kernel computes that and keeps half. On this machine a transform of 12 (28) points takes
    5.9x (5.7x) as long per line as one of 16 (32), as these counts say (6.0x, 5.7x)."""
    if n <= 1:
        return 0
    if n & (n - 1) == 0:
        return 5 * n * int(math.log2(n))
    m = 1 << (2 * n - 2).bit_length()  # the next power of two >= 2n - 1
    return 10 * m * int(math.log2(m)) + 6 * m + 12 * n


def _work(node: Node, out_shape: list[int]) -> None:
    """Fill node.macs / node.ops from its type and shapes."""
    out = _numel(out_shape)
    op_type, weight = node.float_op, node.weight_shape
    if node.op_class == UNKNOWN:
        node.ops = node.in_elems + node.out_elems  # see UNKNOWN_ESTIMATE
    elif op_type == "Conv":
        kernel = weight[1:] if weight else [1]
        node.macs = out * _numel(kernel)  # (C_in / group) * kh * kw per output element
    elif op_type in GEMM_OPS:  # k: the reduced axis, from the input or else the weight
        transposed = node.attrs.get("transA") if op_type == "Gemm" else False
        k = node.in_shape[0 if transposed else -1] if node.in_shape else 0
        if not k and len(weight) == 2:
            k = weight[1] if node.attrs.get("transB") else weight[0]
        node.macs = out * k
    elif op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        node.ops = _numel(node.in_shape)
    elif op_type in POOL_OPS:
        node.ops = out * _numel(node.attrs.get("kernel_shape", [1]))
    elif node.op_class == "dft":  # one 1-D transform per line along the axis
        shape, axis = node.in_shape, node.attrs["axis"]
        lines = _numel(shape) // max(shape[axis] * shape[-1], 1) if len(shape) > 2 else 0
        node.ops = lines * fft_ops(node.attrs["dft_length"])
    elif node.op_class in ("elementwise", "data"):
        node.ops = out  # one operation (or copy) per output element


@dataclass
class Graph:
    """The analyzed model: nodes in topological order and activation tensor sizes."""

    nodes: list[Node]
    tensor_elems: dict[str, int]  # activation tensors (not initializers) -> elements at batch 1
    inputs: list[str]  # graph inputs that are activations
    weight_elems: int  # elements of all initializers
    batch: int = 1  # images per query: the batch a model was exported with when fixed

    @property
    def peak_activation_elems(self) -> int:
        return peak_activation_elems(self.nodes, self.tensor_elems, self.inputs)


def _int_constants(model: onnx.ModelProto) -> dict[str, list[int]]:
    """The values of the graph's small integer initializers and Constant nodes."""
    tensors = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = node.attribute[0].t
    return {
        name: [int(v) for v in numpy_helper.to_array(t).reshape(-1)]
        for name, t in tensors.items()
        if _is_shape_data(t)
    }


def _dft_attrs(
    proto: onnx.NodeProto, attrs: dict, in_shape: list[int], opset: int, ints: dict
) -> dict:
    """A DFT's attributes with its transform resolved: "axis" (non-negative; an input from
    opset 20, default -2, else an attribute, default 1) and "dft_length" (its input, else
    the axis' size). InputError when either is an input whose value is not a constant."""
    name = proto.name or proto.output[0]
    inputs = [*proto.input, "", ""]
    if len(in_shape) < 3:  # input shape not inferred: nothing to count (shape_assumed says so)
        return {**attrs, "axis": 0, "dft_length": 0}

    def constant(tensor: str, what: str) -> int:
        if tensor not in ints:
            raise InputError(
                f"DFT node {name!r}: its {what} {tensor!r} is not a constant: "
                "expected an integer initializer"
            )
        return ints[tensor][0]

    if opset >= 20:
        axis = constant(inputs[2], "axis") if inputs[2] else -2
    else:
        axis = attrs.get("axis", 1)
    rank = len(in_shape)
    axis = axis + rank if axis < 0 else axis
    if not 0 < axis < rank - 1:
        raise InputError(
            f"DFT node {name!r}: axis {axis} of a rank-{rank} input: expected a signal axis "
            "(neither the batch axis nor the last, real/imaginary one)"
        )
    length = constant(inputs[1], "dft_length") if inputs[1] else in_shape[axis]
    return {**attrs, "axis": axis, "dft_length": length}


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def analyze(model: onnx.ModelProto) -> Graph:
    """The nodes of `model` in graph (topological) order, with work and traffic at batch 1."""
    shapes, assumed = _shapes(model)
    ints, opset = _int_constants(model), _opset(model)
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    constants = _constant_outputs(model)
    nodes = []
    for index, proto in enumerate(model.graph.node):
        attrs = _attrs(proto)
        acts = [i for i in proto.input if i and i not in weights and i not in constants]
        params = [i for i in proto.input if i in weights]
        at = QUANTIZED_OPS.get(proto.op_type, (None, None))[1]  # a quantized op's weight input
        weight = proto.input[at] if at is not None and at < len(proto.input) else None
        weight = weight if weight in weights else params[0] if params else None
        in_shape = shapes.get(acts[0], []) if acts else []
        if proto.op_type in DFT_OPS and proto.domain in ("", "ai.onnx"):
            attrs = _dft_attrs(proto, attrs, in_shape, opset, ints)
        first_out = proto.output[0] if proto.output else ""
        node = Node(
            name=proto.name or first_out or f"{proto.op_type}_{index}", op_type=proto.op_type,
            op_class=op_class(proto.op_type, attrs, in_shape, proto.domain),
            inputs=list(proto.input), outputs=list(proto.output), attrs=attrs,
            weight_elems=sum(_numel(weights[p]) for p in params),
            in_elems=sum(_numel(shapes.get(a)) for a in acts),
            out_elems=sum(_numel(shapes.get(o)) for o in proto.output),
            in_shape=in_shape, out_shape=shapes.get(first_out, []),
            weight_shape=weights[weight] if weight else [], domain=proto.domain,
            shape_assumed=any(o in assumed for o in proto.output),
        )  # fmt: skip
        _work(node, node.out_shape)
        nodes.append(node)
    skip = set(weights) | constants
    inputs = [v.name for v in model.graph.input if v.name not in skip]
    tensors = {name: _numel(shape) for name, shape in shapes.items() if name not in skip}
    first = shapes.get(inputs[0], []) if inputs else []
    batch = first[0] if len(first) > 1 and first[0] > 0 else 1
    return Graph(nodes, tensors, inputs, sum(_numel(s) for s in weights.values()), batch)


def _constant_outputs(model: onnx.ModelProto) -> set[str]:
    """Outputs computed only from initializers (e.g. Identity of a shared bias)."""
    known = {init.name for init in model.graph.initializer}
    out = set()
    for node in model.graph.node:
        if all(not i or i in known or i in out for i in node.input):
            out.update(node.output)
    return out


def apply_fusion(nodes: list[Node], pairs: list[list[str]]) -> None:
    """Mark each consumer a runtime fuses into its producer ([producer, consumer] op types).

    A consumer fuses when its only activation input comes from a node of the producer type
    (or from a node already fused into one) that feeds nothing else: Conv -> BN -> Relu all
    become one node."""
    allowed = {(p, c) for p, c in pairs}
    producer = {out: n for n in nodes for out in n.outputs}
    readers: dict[str, int] = {}
    for n in nodes:
        for i in n.inputs:
            readers[i] = readers.get(i, 0) + 1
    by_name = {n.name: n for n in nodes}
    for n in nodes:
        acts = [i for i in n.inputs if i in producer and producer[i].op_class != "free"]
        if len(acts) != 1 or readers.get(acts[0], 0) != 1:
            continue
        root = producer[acts[0]]
        root = by_name[root.fused_into] if root.fused_into else root
        if (root.op_type, n.op_type) in allowed:
            n.fused_into = root.name


def peak_activation_elems(
    nodes: list[Node], tensor_elems: dict[str, int], inputs: list[str]
) -> int:
    """Largest sum of live activation elements at any node (a tensor dies after its last
    reader; views of free ops are counted as copies, which errs on the safe side)."""
    last_use: dict[str, int] = {}
    for step, n in enumerate(nodes):
        for i in n.inputs:
            last_use[i] = step
    live = {name: tensor_elems.get(name, 0) for name in inputs}
    peak = sum(live.values())
    for step, n in enumerate(nodes):
        for out in n.outputs:
            live[out] = tensor_elems.get(out, 0)
        peak = max(peak, sum(live.values()))
        for name in [k for k in live if last_use.get(k, -1) <= step]:
            del live[name]
    return peak
