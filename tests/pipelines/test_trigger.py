"""The retraining trigger's parts on a file:// store: sample sets (what training learns from at the
edge, checked against their digests), warm starts from a deployed version's checkpoint, finding
that checkpoint from a package's lineage, and the threshold. The whole loop, with agents, S3 and
a pipeline run, is tests/integration/test_edge_e2e.py::test_the_loop_closes_..."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipelines.controller import LoopConfig
from pipelines.trigger import (
    TriggerConfig,
    dense_checkpoint,
    labelled_samples,
    retrain_if_due,
    retraining_loop,
)
from services.edge.samples import encode, sample_key
from services.training.stage import run_training
from sigdl.core import checkpoint, store
from sigdl.core.errors import InputError
from sigdl.core.sampleset import load_sample_set, make_set
from sigdl.core.training import TrainConfig

FLEET, TARGET = "lab", "arm-cortex-a53"


def put_sample(prefix: str, pixels: np.ndarray, label: int | None, private: bool) -> dict:
    """What an edge agent's uploader leaves in the edge store for one sample."""
    data = encode(pixels)
    sha = hashlib.sha256(data).hexdigest()
    key = sample_key(FLEET, TARGET, sha)
    source = "label" if label is not None else "hard"
    record = {"sha256": sha, "key": key, "source": source, "label": label,
              "private": private, "time": f"2026-11-30T00:00:{sha[:2]}"}  # fmt: skip
    store.put_bytes(f"{prefix}/{key}", data)
    store.put_bytes(f"{prefix}/{key[:-4]}.json", json.dumps(record).encode())
    return record


@pytest.fixture
def edge(tmp_path) -> str:
    prefix = store.as_uri(str(tmp_path / "edge-site"))
    rng = np.random.default_rng(0)
    for i in range(6):
        put_sample(prefix, rng.random((1, 1, 28, 28), np.float32), i % 3, private=i % 2 == 0)
    put_sample(prefix, rng.random((1, 1, 28, 28), np.float32), None, private=True)  # hard only
    return prefix


def entries(prefix: str) -> list[dict]:
    return [{"key": r["key"], "sha256": r["sha256"], "label": r["label"],
             "private": r["private"]} for r in labelled_samples(prefix, FLEET, TARGET)]  # fmt: skip


def test_a_sample_set_holds_the_labelled_samples_and_refuses_a_changed_one(edge, tmp_path):
    assert len(entries(edge)) == 6  # the unlabelled hard example is not training data
    uri = f"{edge}/set.json"
    store.put_bytes(uri, make_set(FLEET, TARGET, edge, entries(edge)))
    got = load_sample_set(uri, 10, (1, 28, 28))
    assert got.images.shape == (6, 1, 28, 28) and sorted(got.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert got.record() == {"uri": uri, "sha256": store.sha256(uri), "count": 6, "private": 3}
    with pytest.raises(InputError, match=r"label 2, expected 0\.\.1"):
        load_sample_set(uri, 2, (1, 28, 28))
    with pytest.raises(InputError, match=r"expected float32 \(1, 1, 32, 32\)"):
        load_sample_set(uri, 10, (1, 32, 32))
    first = entries(edge)[0]
    path = store.FileBackend.path_of(f"{edge}/{first['key']}")
    path.write_bytes(path.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(InputError, match="changed after the set was made"):
        load_sample_set(uri, 10, (1, 28, 28))


def test_a_sample_set_with_a_wrong_entry_is_refused(edge):
    bad = entries(edge)
    bad[1] = {**bad[1], "label": "seven"}
    with pytest.raises(InputError, match=r"samples\[1\].*expected \{key"):
        make_set(FLEET, TARGET, edge, bad)


def test_training_goes_on_from_a_checkpoint_and_learns_from_the_samples(
    edge, seeded_runs, tmp_path
):
    uri = f"{edge}/set.json"
    store.put_bytes(uri, make_set(FLEET, TARGET, edge, entries(edge)))
    start = store.as_uri(str(seeded_runs["a"]))
    # no epochs: the weights are exactly those it started from
    cfg = TrainConfig(model="lenet-300-100", dataset="digits", epochs=0, init_checkpoint=start,
                      extra_samples=uri)  # fmt: skip
    report = run_training(cfg, tmp_path / "zero")
    assert report["inputs"]["init_checkpoint"]["uri"] == start
    assert report["inputs"]["edge_samples"]["count"] == 6
    started_from = checkpoint.recorded_weights_digest(seeded_runs["a"])
    assert report["inputs"]["init_checkpoint"]["weights_sha256"] == started_from
    before = load_file(seeded_runs["a"] / "model.safetensors")
    after = load_file(tmp_path / "zero" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # one epoch moves them, and the samples are in the training split (first)
    cfg = TrainConfig(model="lenet-300-100", dataset="digits", epochs=1, init_checkpoint=start,
                      extra_samples=uri, batch_size=2, max_train_samples=6, lr=0.5)  # fmt: skip
    report = run_training(cfg, tmp_path / "one")
    assert (
        report["artifacts"]["weights_sha256"]
        != report["inputs"]["init_checkpoint"]["weights_sha256"]
    )


def test_a_checkpoint_of_another_model_is_refused_as_a_start(seeded_runs, tmp_path):
    cfg = TrainConfig(model="lenet-5", dataset="digits", epochs=0,
                      init_checkpoint=store.as_uri(str(seeded_runs["a"])))  # fmt: skip
    with pytest.raises(InputError, match=r"a lenet-300-100 of 10 classes .* expected a lenet-5"):
        run_training(cfg, tmp_path / "out")


def test_the_checkpoint_of_a_deployed_version_is_found_by_its_lineage(tmp_path):
    run = store.as_uri(str(tmp_path / "run" / "iteration-1"))
    store.put_bytes(f"{run}/baseline.json", json.dumps({"checkpoint_uri": f"{run}/train"}).encode())
    candidate = {"lineage": {"source": f"{run}/candidates/i1-c0/compress", "stage": "compress"}}
    assert dense_checkpoint(candidate) == f"{run}/train"
    trained = {"lineage": {"source": "file:///runs/dense", "stage": "train"}}
    assert dense_checkpoint(trained) == "file:///runs/dense"
    with pytest.raises(InputError, match="neither a pipeline candidate nor"):
        dense_checkpoint({"version": "v3", "lineage": {"source": "file:///elsewhere"}})


def test_below_the_threshold_nothing_starts(edge, tmp_path):
    cfg = TriggerConfig(FLEET, TARGET, edge, store.as_uri(str(tmp_path / "fleet")), threshold=7)
    lines: list[str] = []
    result = retrain_if_due(cfg, start=lambda loop: pytest.fail("started"), say=lines.append)
    assert (result.labelled, result.new, result.started) == (6, 6, False)
    assert lines == [f"{FLEET}/{TARGET}: 6 new labelled samples of 7: waiting"]
    with pytest.raises(InputError, match="threshold 0: expected an integer >= 1"):
        TriggerConfig(FLEET, TARGET, edge, "file:///x", threshold=0)


def test_a_retraining_run_is_this_target_warm_started_with_the_samples(tmp_path):
    loop = LoopConfig(targets=["a", "b"], train={"seed": 3}, out="/r")
    cfg = TriggerConfig(FLEET, TARGET, "file:///edge", "file:///fleet", threshold=1, loop=loop)
    manifest = {"model": "lenet-300-100", "dataset": "digits"}
    loop = retraining_loop(cfg, "file:///ckpt", "file:///edge/set.json", manifest, "run-1")
    assert (loop.model, loop.dataset, loop.targets, loop.fleet) == (
        "lenet-300-100", "digits", [TARGET], FLEET)  # fmt: skip
    assert loop.train == {"seed": 3, "init_checkpoint": "file:///ckpt",
                          "extra_samples": "file:///edge/set.json"}  # fmt: skip
    assert (loop.store, loop.from_checkpoint, loop.out) == ("file:///fleet", None, "/r/run-1")
