"""ONNX Runtime's DFT operator computing convolutions: `fft_conv_onnx` rewrites eligible Conv
nodes (padding, stride, bias or none) into DFT-domain nodes whose outputs equal the direct
model's within float tolerance, and leaves the convolutions it cannot handle as they are."""

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from services.compression.fft_onnx import DFT_OPSET, fft_conv_onnx
from sigdl.core.errors import InputError


def _export(net: nn.Module, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(
        net.eval(), (torch.rand(*shape),), buf, dynamo=False, opset_version=17,
        input_names=["x"], dynamic_axes={"x": {0: "N"}},
    )  # fmt: skip
    return buf.getvalue()


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_convolutions_run_through_dft_nodes_and_equal_the_direct_model():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2),  # padded, strided, biased
        nn.ReLU(),
        nn.Conv2d(8, 4, (3, 5), padding=(1, 2), bias=False),  # rectangular, no bias
        nn.Conv2d(4, 4, 3, groups=2),  # grouped: left a direct Conv
    )
    direct = _export(net, (1, 3, 17, 19))
    fft, layers = fft_conv_onnx(direct)
    model = onnx.load_from_string(fft)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DFT") == 8 and ops.count("Conv") == 1
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == DFT_OPSET
    assert [v["kernel"] for v in layers.values()] == [[5, 5], [3, 5]]
    # the padded 21 x 23 input on fast FFT sizes: 21 = 3 * 7, 24 = 2^3 * 3
    assert next(iter(layers.values()))["grid"] == [21, 24]
    x = np.random.default_rng(1).random((3, 3, 17, 19), dtype=np.float32)  # another batch
    expected = net(torch.from_numpy(x)).detach().numpy()
    got = _run(fft, x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(_run(direct, x), expected, rtol=0, atol=1e-5)


def test_not_an_onnx_model_is_refused():
    with pytest.raises(InputError, match="not an ONNX model"):
        fft_conv_onnx(b"not a protobuf at all")
