"""Shared fixtures of the bad-input suite: one real training run and one compression of it
(with a quantize step, so the folder holds model.int8.onnx), made once per session on digits,
and helpers that copy a run and fingerprint folders."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

CHAIN_RECIPE = """
name: chain-smoke
seed: 0
steps:
  - type: prune
    sparsity: {fc1: 0.9, fc2: 0.8, fc3: 0.5}
    rounds: 1
  - type: quantize
    weight_bits: {fc: 8}
    calibration_samples: 64
  - type: huffman
"""


@pytest.fixture(scope="session")
def chain_runs(tmp_path_factory) -> dict[str, Path]:
    """{"train": a `sigdl train` output, "compress": a `sigdl compress` output of it,
    "recipe": the recipe file}: LeNet-300-100, one epoch on digits, MLflow and progress off."""
    from services.compression.stage import run_compression
    from services.training.stage import run_training
    from sigdl.core.training import TrainConfig

    root = tmp_path_factory.mktemp("chain-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        mp.setenv("SIGDL_PROGRESS", "0")
        mp.setenv("SIGDL_HOME", str(root / "home"))
        cfg = TrainConfig(model="lenet-300-100", dataset="digits", epochs=1)
        run_training(cfg, root / "train")
        (root / "recipe.yaml").write_text(CHAIN_RECIPE)
        run_compression(root / "train", root / "recipe.yaml", None, root / "compress")
    return {"train": root / "train", "compress": root / "compress", "recipe": root / "recipe.yaml"}


@pytest.fixture
def run_copy(chain_runs, tmp_path):
    """A private copy of a run (train or compress), for tests that change files in it."""

    def make(name: str) -> Path:
        return Path(shutil.copytree(chain_runs[name], tmp_path / f"copy-{name}"))

    return make


def _tree_digest(path: Path) -> dict[str, str] | None:
    """{relative name: sha256} of every file under `path` (None: `path` does not exist), to
    show that a refused command lost or half-wrote nothing."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def tree_digest():
    """`tree_digest(path)`: {relative name: sha256} of every file under `path`, None when
    absent (what a refused command must leave unchanged)."""
    return _tree_digest
