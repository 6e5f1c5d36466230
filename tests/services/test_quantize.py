"""Fixed-point quantization: the weight grid primitives, quantization-aware training through the
one trainer, the .sdc holding the int8 levels, and `model.int8.onnx` (QDQ) run by ONNX Runtime.

The end-to-end tests train LeNet-5 on digits for a few epochs in-process (seconds) and run the
real compression stage on it."""

import numpy as np
import onnx
import pytest
import torch

from services.compression.engine import compress, plan_recipe
from services.compression.prune import find_layers
from services.compression.quantize import (
    ActivationQuant,
    dequantize_weight,
    fake_quant_weight,
    quantize_weight,
    weight_scale,
)
from services.compression.recipe import Recipe
from services.compression.stage import run_compression
from services.training.stage import run_training
from sigdl.core import checkpoint, numerics
from sigdl.core.errors import InputError
from sigdl.core.sdc import read_sdc
from sigdl.core.training import TrainConfig

QAT_RECIPE = """
name: qat-smoke
seed: 0
steps:
  - type: prune
    sparsity: {fc: 0.8, conv: 0.5}
    rounds: 1
    retrain: {epochs: 1, lr: 0.01}
  - type: quantize
    weight_bits: {conv: 8, fc: 4}
    calibration_samples: 256
    retrain: {epochs: 1, lr: 0.002}
  - type: huffman
"""


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_grid_round_trips_and_keeps_zeros(bits):
    torch.manual_seed(bits)
    w = torch.randn(6, 3, 5, 5)
    w[2] = 0  # a pruned-away channel
    w[0, 0, 0, 0] = 0  # a pruned weight
    scale = weight_scale(w, bits)
    q = quantize_weight(w, scale, bits)
    limit = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and int(q.abs().max()) == limit  # the largest weight is a level
    on_grid = dequantize_weight(q, scale)
    assert on_grid[0, 0, 0, 0] == 0 and not on_grid[2].any()
    assert torch.equal(quantize_weight(on_grid, scale, bits), q)  # projecting is idempotent
    assert float((on_grid - w).abs().max()) <= float(scale.max()) / 2 + 1e-6


def test_fake_quant_weight_passes_gradients_straight_through():
    w = torch.randn(4, 8, requires_grad=True)
    fake_quant_weight(w, 4).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


@pytest.mark.parametrize(("scheme", "qmin", "qmax"), [("affine", 0, 255), ("symmetric", -128, 127)])
def test_activation_quant_represents_zero_exactly(scheme, qmin, qmax):
    act = ActivationQuant.from_range(-0.3, 2.0, scheme)
    assert (act.qmin, act.qmax) == (qmin, qmax)
    x = torch.tensor([0.0, -0.3, 2.0, 1.0])
    y = act(x)
    assert y[0] == 0 and torch.allclose(y, x, atol=act.scale / 2 + 1e-7)


def _lenet5_layers():
    meta = checkpoint.ModelMeta(
        model="lenet-5", input_size=28, channels=1, classes=10, mean=[0.1], std=[0.3]
    )
    return find_layers(checkpoint.build(meta))


@pytest.mark.parametrize(
    "steps",
    [
        [{"type": "quantize"}, {"type": "share"}],
        [{"type": "share"}, {"type": "quantize", "layers": ["fc1"]}],
        [{"type": "quantize", "layers": ["conv"]}, {"type": "prune", "quality": 1.0}],
    ],
)
def test_a_fixed_weight_is_never_moved_by_a_later_step(steps):
    recipe = Recipe.from_dict({"name": "bad", "steps": steps})
    with pytest.raises(InputError, match="already fixed on a codebook or grid by steps"):
        plan_recipe(recipe, _lenet5_layers(), "lenet-5")


def test_bad_quantize_fields_are_named():
    with pytest.raises(InputError, match=r"weight_bits=9: expected an integer in 2\.\.8"):
        Recipe.from_dict({"name": "x", "steps": [{"type": "quantize", "weight_bits": 9}]})
    with pytest.raises(InputError, match="activations='float'"):
        Recipe.from_dict({"name": "x", "steps": [{"type": "quantize", "activations": "float"}]})


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        mp.setenv("SIGDL_PROGRESS", "0")
        run_training(TrainConfig(model="lenet-5", dataset="digits", epochs=4), root / "ck")
        (root / "qat.yaml").write_text(QAT_RECIPE)
        report = run_compression(root / "ck", root / "qat.yaml", None, root / "out")
    return root, report


def test_qat_weights_are_stored_as_their_int8_levels(qat_run):
    root, report = qat_run
    assert report["weight_bits"]["net.fc1.weight"] == 4
    assert report["weight_bits"]["net.conv1.weight"] == 8
    sdc = read_sdc(root / "out" / "model.sdc")
    encodings = {t["name"]: t["encoding"] for t in sdc.header["tensors"]}
    assert encodings["net.fc1.weight"] == "int8" and encodings["net.conv2.weight"] == "int8"
    fc1 = sdc.state_dict["net.fc1.weight"]
    levels = np.unique(np.round(fc1.numpy() / np.abs(fc1.numpy()).max(1, keepdims=True) * 7))
    assert set(levels.tolist()) <= set(range(-7, 8))  # a 4-bit grid per output channel
    quantize_row = next(r for r in report["ladder"] if r["step"] == "quantize")
    assert quantize_row["epochs"] == 1 and quantize_row["weight_sparsity"] > 0.5


def test_int8_onnx_is_qdq_on_the_trained_grid_and_keeps_accuracy(qat_run):
    root, report = qat_run
    int8 = (root / "out" / "model.int8.onnx").read_bytes()
    assert numerics.precision_of(int8) == "int8"
    inits = {
        i.name: onnx.numpy_helper.to_array(i) for i in onnx.load_from_string(int8).graph.initializer
    }
    assert int(np.abs(inits["net.fc1.weight_quantized"]).max()) == 7  # 4-bit levels kept
    stored = read_sdc(root / "out" / "model.sdc").state_dict["net.fc1.weight"].numpy()
    dequantized = inits["net.fc1.weight_quantized"] * inits["net.fc1.weight_scale"][:, None]
    np.testing.assert_array_equal(dequantized.astype(np.float32), stored)
    m = report["metrics"]
    assert m["int8_onnx_bytes"] == (root / "out" / "model.int8.onnx").stat().st_size
    assert m["int8_onnx_test_accuracy"] >= m["dense_accuracy"] - 0.03


def test_post_training_quantization_runs_without_retraining(qat_run):
    root, _ = qat_run
    model, meta = checkpoint.load_checkpoint(root / "ck")
    from sigdl.core.datasets import load_dataset

    recipe = Recipe.from_dict({"name": "ptq", "steps": [{"type": "quantize"}]})
    result = compress(model, recipe, load_dataset("digits"), meta)
    assert result.ladder[-1]["epochs"] == 0 and result.int8["calibration_samples"] == 512
    assert set(result.quantized) == set(find_layers(model))
    assert result.ladder[-1]["accuracy"] >= result.ladder[0]["accuracy"] - 0.02
