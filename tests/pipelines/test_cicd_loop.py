"""The whole loop as a user runs it: `sigdl run` starts a real `sigdl serve all` on loopback,
runs the Kubeflow pipeline with kfp.local (SubprocessRunner, no containers), iterates, and
logs to a real MLflow store (SQLite in the test's folder). Checked through MLflow's own client.

The default targets are used: the Cortex-A53 passes in the first iteration, the Myriad 2
refuses the LeNet-5's fully-connected input of 500 (not a multiple of 8), so a second
iteration with a proposed structured-pruning recipe is needed, and passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CONFIG = """
epochs: 3
recipes: [deep-compression-lenet-5]
train: {seed: 1}
"""


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("loop")
    (root / "loop.yaml").write_text(CONFIG)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "SIGDL_HOME": str(root / "home"), "SIGDL_MLFLOW_TRACKING_URI": uri,
           "SIGDL_OFFLINE": "1"}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "sigdl.cli", "run", "--config", str(root / "loop.yaml"),
         "--out", str(root / "run"), "--json"],
        capture_output=True, text=True, env=env, timeout=1200, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"root": root, "uri": uri, "report": json.loads(proc.stdout), "stderr": proc.stderr}


def test_a_failed_gate_makes_a_second_iteration_that_passes_and_deploys(loop):
    report = loop["report"]
    assert report["passed"] is True
    first, second = report["iterations"]
    assert first["targets"]["arm-cortex-a53"]["passed"] is True
    myriad = first["targets"]["movidius-ma2450"]
    assert myriad["passed"] is False and "operators supported" in myriad["why"]
    assert [p["target"] for p in first["proposals"]] == ["movidius-ma2450"]
    assert "multiple of 8" in first["proposals"][0]["why"]
    assert second["targets"]["movidius-ma2450"]["passed"] is True
    assert set(report["deployed"]) == {"arm-cortex-a53", "movidius-ma2450"}
    assert report["deployed"]["movidius-ma2450"]["iteration"] == 2
    # one line per stage and candidate, no carriage returns when stderr is not a terminal
    lines = loop["stderr"].splitlines()
    assert any(line.startswith("train: lenet-5 on digits") for line in lines)
    assert sum(line.startswith("retest i1-c") for line in lines) == 2
    assert "\r" not in loop["stderr"]


def test_the_gate_compares_with_the_dense_model(loop):
    run = Path(loop["root"]) / "run"
    results = json.loads((run / "iteration-1" / "results.json").read_text())
    baseline = json.loads((run / "iteration-1" / "baseline.json").read_text())
    for r in results:
        assert r["baseline_accuracy"] == pytest.approx(baseline["dense_accuracy"])
        drop = 100 * (r["baseline_accuracy"] - r["accuracy"])
        assert r["accuracy_drop_pp"] == pytest.approx(drop)


def test_report_has_the_table_and_the_plots(loop):
    md = Path(loop["report"]["report"])
    text = md.read_text()
    for cid in ("i1-c0", "i1-c1", "i2-c0"):
        assert cid in text
    for plot in ("accuracy_vs_size.png", "accuracy_vs_latency.png"):
        assert (md.parent / plot).stat().st_size > 10_000
    assert (md.parent / "report.html").is_file()


def test_lineage_parent_and_nested_runs_versions_and_aliases(loop):
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(loop["uri"], registry_uri=loop["uri"])
    experiment = client.get_experiment_by_name("sigdl").experiment_id
    runs = client.search_runs([experiment], max_results=500)
    parents = [r for r in runs if r.data.tags.get("sigdl.stage") == "pipeline"]
    assert sorted(r.data.tags["sigdl.iteration"] for r in parents) == ["1", "2"]
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        stages = sorted({r.data.tags.get("sigdl.stage") for r in children})
        assert {"compress", "retest"} <= set(stages), stages
        assert parent.info.status == "FINISHED"
        assert "report/report.md" in [f.path for f in client.list_artifacts(parent.info.run_id,
                                                                            "report")]  # fmt: skip
    name = "lenet-5-digits"
    versions = client.search_model_versions(f"name='{name}'")
    train = [v for v in versions if v.tags.get("sigdl.stage") == "train"]
    assert len(train) == 1
    compressed = [v for v in versions if v.tags.get("sigdl.stage") == "compress"]
    assert len(compressed) == 3  # two in iteration 1, one proposed in iteration 2
    for v in compressed:
        assert v.tags["sigdl.parent_version"] == f"{name}/{train[0].version}"
        assert v.tags["sigdl.recipe_digest"] and v.tags["sigdl.pipeline_run_id"]
        assert v.tags["sigdl.target"] in ("arm-cortex-a53", "movidius-ma2450")
    assert {v.tags["sigdl.iteration"] for v in compressed} == {"1", "2"}
    aliases = client.get_registered_model(name).aliases
    for alias in ("best_arm-cortex-a53", "best_movidius-ma2450",
                  "deployed_local_arm-cortex-a53", "deployed_local_movidius-ma2450"):  # fmt: skip
        assert alias in aliases, aliases
    mlflow.set_tracking_uri(loop["uri"])  # else MLflow 3 opens ./mlflow.db in the working dir
    mlflow.set_registry_uri(loop["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{name}@best_movidius-ma2450")
    from sigdl.core.datasets import adapt, load_dataset

    test = load_dataset("digits").test
    pixels = adapt(test.images[:200], 1, 28, "resize").numpy()
    logits = model.predict(pixels)["logits"]
    labels = np.asarray(test.labels[:200])
    accuracy = float(np.mean(logits.argmax(1) == labels))
    assert accuracy > 0.7, accuracy


def test_lineage_command_prints_the_tree_with_aliases(loop):
    env = {**os.environ, "SIGDL_HOME": str(Path(loop["root"]) / "home"),
           "SIGDL_MLFLOW_TRACKING_URI": loop["uri"]}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "sigdl.cli", "lineage", "lenet-5-digits"],
                          capture_output=True, text=True, env=env, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "@best_movidius-ma2450" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "sigdl.cli", "lineage", "lenet-5-digits", "--json"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    rows = json.loads(proc.stdout)
    assert any("best_arm-cortex-a53" in r["aliases"] for r in rows)
