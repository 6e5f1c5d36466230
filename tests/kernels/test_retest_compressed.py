"""services/retest/compressed.py: a candidate scored from its .sdc through the kernels agrees
with ONNX Runtime on the decoded model.onnx, within the stated logit tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.compression.share import share_weights
from services.retest import compressed
from sigdl.core import onnx_io, sdc
from sigdl.core.checkpoint import build
from sigdl.core.datasets import load_dataset
from sigdl.core.evaluation import pixel_batches, score_onnx
from sigdl.core.exporting import zoo_meta
from sigdl.core.training import TrainConfig, fit

# layer -> (kept fraction, bits): sparse and dense shared layouts, an int8 layer, and raw ones
PLANS = {
    "lenet-300-100": {"fc1": (0.08, 5), "fc2": (0.09, 5), "fc3": (1.0, 5)},
    "lenet-5": {"conv1": (1.0, 6), "conv2": (0.12, 8), "fc1": (0.08, 5), "fc2": "int8"},
}


def _train(name: str, data) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    meta = zoo_meta(name, None, None, None)
    model = build(meta)
    cfg = TrainConfig(model=name, dataset="digits", epochs=3, lr=0.05, schedule="constant")
    fit(model, data.train, cfg, meta.channels, meta.input_size)
    return model.eval(), meta


def _compress(model: torch.nn.Module, plan: dict) -> dict:
    tensors = {}
    for key, value in model.state_dict().items():
        layer = key.removeprefix("net.").rpartition(".")[0]
        if not key.endswith(".weight") or layer not in plan:
            tensors[key] = value
        elif plan[layer] == "int8":
            scale = value.abs().reshape(len(value), -1).amax(1) / 127
            q = torch.round(value / scale.reshape(-1, *[1] * (value.ndim - 1)))
            tensors[key] = sdc.Int8Tensor(scale.numpy(), q.to(torch.int8).numpy())
        else:
            kept, bits = plan[layer]
            threshold = value.abs().flatten().quantile(1 - kept) if kept < 1 else -1.0
            codebook, assignments = share_weights(value * (value.abs() > threshold), bits)
            index_bits = 8 if value.ndim == 4 else 5
            tensors[key] = sdc.SharedTensor(codebook.numpy(), assignments.numpy(), index_bits)
    return tensors


@pytest.fixture(scope="module")
def candidates(tmp_path_factory) -> dict[str, Path]:
    data = load_dataset("digits")
    out = {}
    for name, plan in PLANS.items():
        model, meta = _train(name, data)
        folder = tmp_path_factory.mktemp(name)
        sdc.write_sdc(folder / "model.sdc", _compress(model, plan), meta.to_json())
        decoded, _ = sdc.load_model(folder / "model.sdc")
        onnx_io.export_onnx(decoded, folder / "model.onnx", meta.input_shape)
        out[name] = folder
    return out


@pytest.mark.parametrize("name", list(PLANS))
def test_compressed_logits_and_accuracy_match_onnx_runtime(name, candidates):
    folder = candidates[name]
    model = compressed.load_compressed(folder / "model.sdc")
    kinds = {
        k: ("csr" if w.csr else "codebook" if w.assignments is not None else "dense")
        for k, w in model.weights.items()
    }
    assert "csr" in kinds.values()  # the pruned layers really run sparse
    test = load_dataset("digits").test
    ours = compressed.logits(model, test)
    sess = onnx_io.session(folder / "model.onnx")
    ort = np.concatenate(
        [onnx_io.predict(sess, p.numpy()) for p, _ in pixel_batches(test, 1, 28, "resize", 256)]
    )
    np.testing.assert_allclose(ours, ort, atol=compressed.LOGIT_ATOL, rtol=compressed.LOGIT_RTOL)
    top2 = np.sort(ort, axis=1)[:, -2:]
    ambiguous = top2[:, 1] - top2[:, 0] <= 2 * (
        compressed.LOGIT_ATOL + compressed.LOGIT_RTOL * np.abs(top2[:, 1])
    )
    differ = ours.argmax(1) != ort.argmax(1)
    assert not np.any(differ & ~ambiguous)
    [score] = compressed.score_candidates([folder / "model.sdc"], "digits", device="cpu")
    reference = score_onnx(folder / "model.onnx", test)
    assert abs(score.correct - reference.correct) <= int(ambiguous.sum())
    assert score.accuracy > 0.5  # a trained model, so the comparison means something


def test_several_candidates_are_scored_concurrently_in_order(candidates):
    paths = [candidates["lenet-5"] / "model.sdc", candidates["lenet-300-100"] / "model.sdc"] * 2
    scores = compressed.score_candidates(paths, "digits", device="cpu", workers=4)
    assert [s.path for s in scores] == [str(p) for p in paths]
    assert scores[0].correct == scores[2].correct and scores[1].correct == scores[3].correct
    assert {s.device for s in scores} == {"cpu"}


def test_unsupported_models_and_devices_are_refused(tmp_path, candidates):
    with pytest.raises(compressed.InputError, match="device="):
        compressed.score_candidates([], "digits", device="tpu")
    meta = zoo_meta("mobilenet-v1", 32, 1, 10)
    sdc.write_sdc(tmp_path / "m.sdc", {"w": np.zeros(2, np.float32)}, meta.to_json())
    with pytest.raises(compressed.InputError, match="supports lenet-300-100, lenet-5"):
        compressed.load_compressed(tmp_path / "m.sdc")
