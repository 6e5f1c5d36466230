"""Per-layer pruning sensitivity of the MNIST baselines: test accuracy with one layer at a time
pruned by magnitude to each sparsity, without retraining (Han et al. 2015, Figure 5).

    SIGDL_DATA=../shared/datasets python benchmarks/sensitivity.py

Reads the checkpoints of `benchmarks/baselines.py` and writes, per model,
benchmarks/results/sensitivity-<model>.{json,md,png}. The recipes' per-layer sparsities were
chosen where these curves stay flat.
"""

from __future__ import annotations

import sys

from common import RESULTS, ROOT, WORK

sys.path.insert(0, str(ROOT))
from services.compression.prune import sensitivity
from sigdl.core.checkpoint import load_checkpoint
from sigdl.core.datasets import load_dataset

SPARSITIES = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98]


def main() -> None:
    data = load_dataset("mnist")
    for model_name in ("lenet-300-100", "lenet-5"):
        ckpt = WORK / "baselines" / f"{model_name}-mnist"
        if not (ckpt / "model.json").is_file():
            raise SystemExit(f"no baseline at {ckpt}: run benchmarks/baselines.py first")
        model, meta = load_checkpoint(ckpt)
        table = sensitivity(model, data, meta, None, SPARSITIES)
        stage = WORK / "sensitivity" / model_name
        for path in table.write(stage):
            target = RESULTS / f"sensitivity-{model_name}{path.suffix}"
            target.write_bytes(path.read_bytes())
            print(target.relative_to(ROOT))


if __name__ == "__main__":
    main()
