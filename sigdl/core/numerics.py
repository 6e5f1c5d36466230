"""A deployable model in a target's numerics: fp32, fp16 or int8 (ONNX QDQ).

Every conversion takes and returns `model.onnx` bytes, so a stage never needs the checkpoint to
run a model the way a target would. int8 is static post-training quantization in the QDQ format
(QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into integer kernels with 32-bit
accumulation): weights symmetric per output channel, activations affine uint8 (or symmetric int8)
with ranges calibrated on real pixels. fp16 stores every float tensor in half precision and keeps
the float32 input/output contract of `model.onnx`.

    int8 = convert(Path("model.onnx").read_bytes(), "int8", calibration=pixels[:512])
    precision_of(int8)  # "int8"
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from sigdl.core.errors import InputError

PRECISIONS = ("fp32", "fp16", "int8")
ACTIVATION_SCHEMES = ("affine", "symmetric")  # affine: uint8 with a zero point; symmetric: int8
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
CALIBRATION_BATCH = 32  # images per calibration forward pass


@dataclass(frozen=True)
class Int8Options:
    """How `quantize_int8` quantizes. Weights are always symmetric (zero point 0)."""

    per_channel: bool = True  # one weight scale per output channel (else one per tensor)
    activations: str = "affine"  # see ACTIVATION_SCHEMES
    method: str = "minmax"  # how activation ranges are read off the calibration pixels
    # initializer name -> per-output-channel scales: weights that already lie on that grid
    # (quantization-aware training, or fewer than 8 bits) keep it exactly instead of being
    # re-quantized with max|w| / 127
    weight_scales: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.activations not in ACTIVATION_SCHEMES:
            raise InputError(
                f"activations={self.activations!r}: expected one of {', '.join(ACTIVATION_SCHEMES)}"
            )
        if self.method not in CALIBRATION_METHODS:
            raise InputError(
                f"method={self.method!r}: expected one of {', '.join(CALIBRATION_METHODS)}"
            )


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def convert(
    model_bytes: bytes,
    precision: str,
    calibration: np.ndarray | None = None,
    options: Int8Options | None = None,
) -> bytes:
    """`model_bytes` (an fp32 model.onnx) in `precision`. int8 needs `calibration`: float32
    NCHW pixels in [0, 1], a few hundred images like the ones the model will see."""
    check_precision(precision)
    if precision == "fp32":
        return model_bytes
    if precision == "fp16":
        return to_fp16(model_bytes)
    if calibration is None:
        raise InputError("int8 needs calibration pixels (float32 NCHW in [0, 1]), got none")
    return quantize_int8(model_bytes, calibration, options or Int8Options())


def precision_of(model_bytes: bytes) -> str:
    """The numerics a model.onnx runs in: int8 when it has QDQ pairs, fp16 when its weights are
    half precision, else fp32."""
    model = onnx.load_from_string(model_bytes)
    ops = {node.op_type for node in model.graph.node}
    if "QuantizeLinear" in ops or "QLinearConv" in ops or "QLinearMatMul" in ops:
        return "int8"
    half = onnx.TensorProto.FLOAT16
    if any(init.data_type == half for init in model.graph.initializer):
        return "fp16"
    return "fp32"


def to_fp16(model_bytes: bytes) -> bytes:
    """Every float tensor in float16, with Casts at the float32 input and output."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load_from_string(model_bytes)
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    return half.SerializeToString()


class _PixelReader:
    """Feeds calibration pixels to ONNX Runtime's calibrator, one batch per call."""

    def __init__(self, input_name: str, pixels: np.ndarray, fixed_batch: int = 0) -> None:
        self.input_name = input_name
        # a model exported with a fixed batch takes only whole batches of that size
        size = fixed_batch or CALIBRATION_BATCH
        stop = len(pixels) - len(pixels) % size if 0 < fixed_batch <= len(pixels) else len(pixels)
        self.batches = [pixels[i : i + size] for i in range(0, stop, size)]
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0


def _check_calibration(pixels: np.ndarray, model: onnx.ModelProto) -> np.ndarray:
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    expected = [d.dim_value for d in dims[1:]]
    if pixels.ndim != 4 or list(pixels.shape[1:]) != expected or len(pixels) == 0:
        raise InputError(
            f"calibration pixels of shape {list(pixels.shape)}: expected (N, {expected}) "
            "float32 in [0, 1] with N >= 1"
        )
    return pixels


def _weight_overrides(scales: Mapping[str, np.ndarray], model: onnx.ModelProto) -> dict:
    """ONNX Runtime's per-channel TensorQuantOverrides for weights on a known grid."""
    names = {init.name for init in model.graph.initializer}
    overrides = {}
    for name, channel_scales in scales.items():
        if name not in names:
            raise InputError(f"weight_scales names {name!r}, which is not a weight of the model")
        values = np.asarray(channel_scales, dtype=np.float32).reshape(-1)
        overrides[name] = [
            {"scale": np.float32(s), "zero_point": np.int8(0), "axis": 0} for s in values
        ]
    return overrides


def quantize_int8(
    model_bytes: bytes, calibration: np.ndarray, options: Int8Options | None = None
) -> bytes:
    """Static int8 QDQ quantization of an fp32 model.onnx, calibrated on `calibration`."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    options = options or Int8Options()
    model = onnx.load_from_string(model_bytes)
    pixels = _check_calibration(calibration, model)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[options.method]
    symmetric = options.activations == "symmetric"
    fixed_batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value  # 0: symbolic
    extra = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        "TensorQuantOverrides": _weight_overrides(options.weight_scales, model),
    }
    with tempfile.TemporaryDirectory(prefix="sigdl-int8-") as tmp:
        source, prepared, target = (Path(tmp) / n for n in ("in.onnx", "pre.onnx", "q.onnx"))
        source.write_bytes(model_bytes)
        # shape inference + constant folding first, as ONNX Runtime's tool recommends
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            _PixelReader(model.graph.input[0].name, pixels, fixed_batch),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=options.per_channel,
            calibrate_method=method,
            extra_options=extra,
        )
        quantized = onnx.load(str(target))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    return quantized.SerializeToString()
