"""fp16 and int8 (QDQ) conversions of model.onnx, run for real with ONNX Runtime.

Quantized outputs are compared with the float model by signal-to-quantization-noise ratio
(torchao's habit), not by equality."""

import numpy as np
import onnx
import pytest
import torch

from sigdl.core import checkpoint, numerics, onnx_io
from sigdl.core.checkpoint import ModelMeta
from sigdl.core.errors import InputError


def _sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = np.mean((reference - other) ** 2)
    return float(10 * np.log10(np.mean(reference**2) / max(noise, 1e-30)))


@pytest.fixture(scope="module")
def lenet5() -> tuple[bytes, np.ndarray]:
    """An fp32 LeNet-5 model.onnx (seeded random weights) and pixels in [0, 1]."""
    torch.manual_seed(0)
    meta = ModelMeta(model="lenet-5", input_size=28, channels=1, classes=10, mean=[0.1], std=[0.3])
    model = checkpoint.build(meta)
    pixels = np.random.default_rng(0).random((96, 1, 28, 28), dtype=np.float32)
    return onnx_io.to_onnx_bytes(model, meta.input_shape), pixels


def _run(model_bytes: bytes, pixels: np.ndarray) -> np.ndarray:
    sess = onnx_io.session_from_bytes(model_bytes, threads=1)
    return onnx_io.predict(sess, pixels)


@pytest.mark.parametrize(
    ("precision", "min_sqnr_db"), [("fp32", 200.0), ("fp16", 40.0), ("int8", 20.0)]
)
def test_converted_model_tracks_the_float_model(lenet5, precision, min_sqnr_db):
    fp32, pixels = lenet5
    converted = numerics.convert(fp32, precision, calibration=pixels[:64])
    assert numerics.precision_of(converted) == precision
    reference, got = _run(fp32, pixels[64:]), _run(converted, pixels[64:])
    assert got.dtype == np.float32 and got.shape == reference.shape  # the contract holds
    assert _sqnr_db(reference, got) >= min_sqnr_db


def test_int8_is_qdq_with_per_channel_symmetric_weights(lenet5):
    fp32, pixels = lenet5
    model = onnx.load_from_string(numerics.convert(fp32, "int8", calibration=pixels))
    ops = [node.op_type for node in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    weights = [v for k, v in inits.items() if k.endswith("weight_quantized")]
    assert weights and all(w.dtype == np.int8 for w in weights)
    zero_points = [v for k, v in inits.items() if "weight_zero_point" in k]
    assert zero_points and all(not zp.any() for zp in zero_points)  # symmetric: zero point 0


def test_weight_scales_keep_a_coarser_grid_exactly(lenet5):
    """Weights already on a 4-bit grid (as after quantization-aware training) keep it."""
    fp32, pixels = lenet5
    model = onnx.load_from_string(fp32)
    weight = next(i for i in model.graph.initializer if i.name == "net.conv2.weight")
    w = onnx.numpy_helper.to_array(weight)
    scale = np.abs(w).reshape(len(w), -1).max(1) / 7  # 4 bits: levels -7..7
    on_grid = np.round(w / scale[:, None, None, None]) * scale[:, None, None, None]
    weight.CopyFrom(onnx.numpy_helper.from_array(on_grid.astype(np.float32), weight.name))
    options = numerics.Int8Options(weight_scales={"net.conv2.weight": scale})
    quantized = onnx.load_from_string(
        numerics.quantize_int8(model.SerializeToString(), pixels, options)
    )
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in quantized.graph.initializer}
    q = inits["net.conv2.weight_quantized"]
    assert np.abs(q).max() == 7  # the 4-bit levels, not re-spread over -127..127
    np.testing.assert_allclose(inits["net.conv2.weight_scale"], scale.astype(np.float32))


def test_bad_inputs_name_what_was_expected(lenet5):
    fp32, pixels = lenet5
    with pytest.raises(InputError, match="precision 'int4'"):
        numerics.convert(fp32, "int4")
    with pytest.raises(InputError, match="calibration pixels"):
        numerics.convert(fp32, "int8")
    with pytest.raises(InputError, match=r"expected \(N, \[1, 28, 28\]\)"):
        numerics.convert(fp32, "int8", calibration=pixels[:, :, :14])
    with pytest.raises(InputError, match="activations='signed'"):
        numerics.Int8Options(activations="signed")
    with pytest.raises(InputError, match="not a weight"):
        numerics.quantize_int8(fp32, pixels, numerics.Int8Options(weight_scales={"x": [1.0]}))
