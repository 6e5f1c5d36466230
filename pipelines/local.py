"""The CICD loop on one machine, on embedded defaults (`sigdl run`, `make run`).

train -> compress -> retest -> (gate) -> deploy: LeNet-5 trained on the bundled `digits` data
set, checkpointed, exported to ONNX and verified with ONNX Runtime; compressed with its Deep
Compression recipe (prune, share, Huffman) into a `.sdc` and its decoded ONNX model; retested on
the emulated target (accuracy at the target's numerics, predicted latency, power, memory,
operator support) against the requirements; and, only when the gate passes, packaged and
published as the fleet's current version in the local artifact store. Each stage logs to the
local MLflow store. A failed gate ends the run before deploy (`sigdl run` exits 1).

    sigdl run                         # or: make run
    sigdl run --config loop.yaml      # keys: the fields of LoopConfig
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from services.compression.recipe import list_recipes
from services.compression.stage import run_compression
from services.deploy.stage import run_deploy
from services.retest.stage import run_retest
from services.training.stage import ProgressFn, run_training
from sigdl import settings
from sigdl.errors import InputError
from sigdl.training import TrainConfig


@dataclass
class LoopConfig:
    """One iteration of the loop; a YAML file given to `sigdl run --config` sets these keys."""

    model: str = "lenet-5"  # zoo name
    dataset: str = "digits"  # needs no download: scikit-learn ships it
    epochs: int = 15
    out: str | None = None  # None: $SIGDL_HOME/runs/run-<timestamp>
    nproc: int = 1  # data-parallel processes for training
    recipe: str | None = None  # None: deep-compression-<model> if built in, else deep-compression
    train: dict = field(default_factory=dict)  # any other TrainConfig option
    target: str = "arm-cortex-a53"  # the emulated device (`sigdl targets list`)
    precision: str | None = None  # None: the target's native numerics
    requirements: list[str] = field(
        default_factory=lambda: ["accuracy_drop<=1", "fps>=30", "size_kb<=512"]
    )  # the gate before deploy (`sigdl retest --require` syntax)
    fleet: str = "local"  # deploy publishes to fleets/<fleet>/<target>/ ...
    store: str | None = None  # ... under this artifact root (None: $SIGDL_HOME/artifacts)

    @classmethod
    def from_file(cls, path: str | Path) -> LoopConfig:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"--config {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"--config {str(path)!r} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise InputError(f"--config {str(path)!r}: expected a mapping of options")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(
                f"--config {str(path)!r}: unknown key(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(sorted(known))}"
            )
        return cls(**data)

    def recipe_name(self) -> str:
        if self.recipe:
            return self.recipe
        own = f"deep-compression-{self.model}"
        return own if own in list_recipes() else "deep-compression"

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(
            {**self.train, "model": self.model, "dataset": self.dataset, "epochs": self.epochs}
        )


def run_loop(cfg: LoopConfig, on_epoch: ProgressFn | None = None) -> dict:
    """Run one iteration of the loop; return its report (stage reports and where things are)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(cfg.out) if cfg.out else settings.SIGDL_HOME.get() / "runs" / f"run-{stamp}"
    train = run_training(cfg.train_config(), out / "train", nproc=cfg.nproc, on_epoch=on_epoch)
    compressed = run_compression(out / "train", cfg.recipe_name(), cfg.dataset, out / "compress")
    retest = run_retest(
        str(out / "compress"), cfg.target, out / "compress" / "retest", dataset=cfg.dataset,
        precision=cfg.precision, requirements=cfg.requirements,
    )  # fmt: skip
    stages = {"train": train, "compress": compressed, "retest": retest}
    passed = bool(retest["verdict"]["passed"])
    if passed:
        stages["deploy"] = run_deploy(
            str(out / "compress"), cfg.target, cfg.fleet, store_root=cfg.store
        )
    return {
        "command": "run", "config": asdict(cfg), "out": str(out), "gate_passed": passed,
        "stages": stages,
    }  # fmt: skip
