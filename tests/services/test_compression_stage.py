"""`sigdl compress` / `sigdl decompress` end to end on digits: a LeNet-300-100 trained for a
few epochs, a short user recipe (prune, share, huffman), the .sdc on disk, its decoded ONNX."""

import json
import subprocess
import sys

import numpy as np
import pytest

from services.compression.stage import run_compression
from services.training.stage import run_training
from sigdl.core import onnx_io
from sigdl.core.sdc import read_sdc
from sigdl.core.training import TrainConfig

RECIPE = """
name: smoke
seed: 0
steps:
  - type: prune
    sparsity: {fc1: 0.9, fc2: 0.8, fc3: 0.5}
    rounds: 1
    retrain: {epochs: 1, lr: 0.01}
  - type: share
    bits: {fc: 5}
    retrain: {epochs: 1, lr: 0.0005}
  - type: huffman
    index_bits: {fc: 5}
    raw_dtype: float16
"""


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        mp.setenv("SIGDL_PROGRESS", "0")
        run_training(TrainConfig(model="lenet-300-100", dataset="digits", epochs=4), root / "ck")
        (root / "smoke.yaml").write_text(RECIPE)
        report = run_compression(root / "ck", root / "smoke.yaml", None, root / "out")
    return root, report


def test_outputs_sizes_and_ratio(compressed):
    root, report = compressed
    out = root / "out"
    m = report["metrics"]
    assert sorted(p.name for p in out.iterdir()) == [
        "model.onnx", "model.sdc", "report.json", "report.md"]  # fmt: skip
    assert f"{m['ratio']:.1f}x" in (out / "report.md").read_text()
    assert m["compressed_bytes"] == (out / "model.sdc").stat().st_size
    assert m["dense_bytes"] == 4 * 266_610
    assert m["ratio"] == pytest.approx(m["dense_bytes"] / m["compressed_bytes"])
    assert m["ratio"] > 10
    assert [row["step"] for row in report["ladder"]] == ["dense", "prune", "share", "huffman"]
    assert json.loads((out / "report.json").read_text())["recipe_digest"] == report["recipe_digest"]


def test_decoded_onnx_has_the_evaluated_weights(compressed):
    _, report = compressed
    # the ONNX model is rebuilt from the .sdc; its accuracy is the compressed model's
    assert report["metrics"]["onnx_test_accuracy"] == report["metrics"]["compressed_accuracy"]
    assert report["metrics"]["compressed_accuracy"] > report["metrics"]["dense_accuracy"] - 0.05


def test_shared_layers_hold_few_distinct_values(compressed):
    root, _ = compressed
    state = read_sdc(root / "out" / "model.sdc").state_dict
    fc1 = state["net.fc1.weight"].numpy()
    assert len(np.unique(fc1)) <= 32
    assert (fc1 == 0).mean() >= 0.89
    bias = state["net.fc1.bias"].numpy()  # raw_dtype float16: stored and evaluated as float16
    assert np.array_equal(bias, bias.astype(np.float16).astype(np.float32))


def test_decompress_cli_rebuilds_the_same_model(compressed, tmp_path):
    root, _ = compressed
    onnx_path = tmp_path / "again.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "sigdl.cli", "decompress", str(root / "out" / "model.sdc"),
         "--onnx", str(onnx_path), "--json"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pixels = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    a = onnx_io.predict(onnx_io.session(root / "out" / "model.onnx"), pixels)
    b = onnx_io.predict(onnx_io.session(onnx_path), pixels)
    assert np.array_equal(a, b)


def test_corrupted_sdc_is_exit_2(compressed, tmp_path):
    root, _ = compressed
    blob = bytearray((root / "out" / "model.sdc").read_bytes())
    blob[len(blob) // 2] ^= 0x40
    bad = tmp_path / "bad.sdc"
    bad.write_bytes(bytes(blob))
    proc = subprocess.run(
        [sys.executable, "-m", "sigdl.cli", "decompress", str(bad), "--onnx",
         str(tmp_path / "x.onnx")],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "sha256" in proc.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_bad_recipe_field_is_exit_2(compressed, tmp_path):
    root, _ = compressed
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(RECIPE.replace("bits: {fc: 5}", "bits: {fc: 40}"))
    proc = subprocess.run(
        [sys.executable, "-m", "sigdl.cli", "compress", str(root / "ck"), "--recipe",
         str(recipe), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "bits" in proc.stderr, proc.stderr
