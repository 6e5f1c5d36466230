"""The deploy stage end to end: real runs (LeNet-300-100 trained 1 epoch on digits, then
compressed by a short recipe with a quantize step, so it also writes model.int8.onnx: seconds),
published to real stores: a `file://` folder under tmp_path and a real S3 server (SeaweedFS,
the `s3_server` fixture of tests/conftest.py, started as `weed mini` on 127.0.0.1 ports)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from services.compression.stage import run_compression
from services.deploy.fleet import FleetTarget
from services.deploy.stage import list_versions, rollback, run_deploy
from services.retest.stage import run_retest
from services.training.stage import run_training
from sigdl.cli import main
from sigdl.core import onnx_io, store
from sigdl.core.errors import InputError
from sigdl.core.lineage import Lineage, open_lineage
from sigdl.core.training import TrainConfig

RECIPE = """
name: deploy-smoke
seed: 0
steps:
  - type: prune
    sparsity: {fc1: 0.9, fc2: 0.8, fc3: 0.5}
    rounds: 1
  - type: quantize
    weight_bits: {fc: 8}
    calibration_samples: 128
  - type: huffman
"""
TARGET = "jetson-tx2"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A training run (model.onnx, report.json) and a compression run (+ model.sdc)."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        mp.setenv("SIGDL_PROGRESS", "0")
        cfg = TrainConfig(model="lenet-300-100", dataset="digits", epochs=1)
        run_training(cfg, root / "train")
        (root / "recipe.yaml").write_text(RECIPE)
        run_compression(root / "train", root / "recipe.yaml", None, root / "compress")
    return {"train": root / "train", "compress": root / "compress"}


@pytest.fixture
def copy_of(runs, tmp_path):
    """A private copy of a run, for tests that change files in it."""

    def make(name: str) -> Path:
        return Path(shutil.copytree(runs[name], tmp_path / f"copy-{name}"))

    return make


def pointer(root: str, fleet: str = "lab", target: str = TARGET) -> dict | None:
    return FleetTarget.at(root, fleet, target).read_pointer()


def folders(root: str, fleet: str = "lab", target: str = TARGET) -> dict[str, set[str]]:
    return FleetTarget.at(root, fleet, target).version_folders()


# --- publishing -------------------------------------------------------------------------------
def test_compressed_run_becomes_a_verified_package(runs, tmp_path):
    root = store.as_uri(tmp_path / "store")
    events: list = []
    result = run_deploy(
        str(runs["compress"]), TARGET, "lab", store_root=root, on_event=events.append
    )
    assert (result["version"], result["action"], result["previous_version"]) == (
        "v1",
        "publish",
        None,
    )
    package = tmp_path / "store" / "fleets" / "lab" / TARGET / "v1"
    shipped = ["model.int8.onnx", "model.onnx", "model.sdc"]
    assert sorted(p.name for p in package.iterdir()) == ["manifest.json", *shipped]
    manifest = json.loads((package / "manifest.json").read_text())
    for name in shipped:  # digests and sizes are those of the bytes shipped
        assert manifest["files"][name] == {
            "sha256": store.sha256(store.as_uri(package / name)),
            "size": (runs["compress"] / name).stat().st_size,
        }
        assert (package / name).read_bytes() == (runs["compress"] / name).read_bytes()
    report = json.loads((runs["compress"] / "report.json").read_text())
    m = manifest["metrics"]
    assert m["accuracy"] == report["metrics"]["onnx_test_accuracy"]
    assert m["int8_accuracy"] == report["metrics"]["int8_onnx_test_accuracy"]
    assert m["compression_ratio"] == report["metrics"]["ratio"]
    assert m["size_bytes"] == m["sdc_bytes"] == report["metrics"]["compressed_bytes"]
    assert manifest["target"] == TARGET and manifest["fleet"] == "lab"
    assert manifest["model"] == "lenet-300-100"
    assert manifest["lineage"]["recipe_digest"] == report["recipe_digest"]
    # the pointer names the version and the sha256 of the manifest's bytes
    current = pointer(root)
    assert current["version"] == "v1" and current["manifest"] == "v1/manifest.json"
    assert (
        current["manifest_sha256"]
        == result["manifest_sha256"]
        == store.sha256(store.as_uri(package / "manifest.json"))
    )
    uploads = [e for e in events if e.kind == "upload"]
    assert [e["file"] for e in uploads] == [*shipped, "manifest.json"]
    assert [e.done for e in uploads] == list(range(1, len(uploads) + 1))
    # what the edge will run: the published model.onnx under ONNX Runtime
    for name in ("model.onnx", "model.int8.onnx"):
        logits = onnx_io.predict(
            onnx_io.session(package / name), np.zeros((2, 1, 28, 28), np.float32)
        )
        assert logits.shape == (2, 10)


def test_default_store_is_under_sigdl_home(runs, sigdl_env):
    result = run_deploy(str(runs["train"]), TARGET, "lab")
    published = sigdl_env / "artifacts" / "fleets" / "lab" / TARGET / "v1"
    assert result["package_uri"] == published.as_uri() + "/"
    assert sorted(p.name for p in published.iterdir()) == ["manifest.json", "model.onnx"]
    assert "model.sdc" not in result["files"] and "sdc_bytes" not in result["metrics"]


def test_new_versions_keep_the_old_and_identical_content_is_a_no_op(runs, tmp_path):
    root = store.as_uri(tmp_path / "store")
    first = run_deploy(str(runs["train"]), TARGET, "lab", store_root=root)
    again = run_deploy(store.as_uri(runs["train"]), TARGET, "lab", store_root=root)
    assert (again["action"], again["version"]) == ("unchanged", "v1")
    assert again["manifest_sha256"] == first["manifest_sha256"]
    assert set(folders(root)) == {"v1"}
    second = run_deploy(str(runs["compress"]), TARGET, "lab", store_root=root)
    assert (second["version"], second["previous_version"]) == ("v2", "v1")
    assert set(folders(root)) == {"v1", "v2"}
    assert FleetTarget.at(root, "lab", TARGET).verify_version("v1")[1] == first["manifest_sha256"]
    history = pointer(root)["history"]
    assert [(h["version"], h["action"]) for h in history] == [("v1", "publish"), ("v2", "publish")]
    # another fleet or target is another pointer
    other = run_deploy(str(runs["train"]), "arm-cortex-a53", "lab", store_root=root)
    assert other["version"] == "v1" and pointer(root)["version"] == "v2"


def test_explicit_versions_are_immutable(runs, tmp_path):
    root = store.as_uri(tmp_path / "store")
    run_deploy(str(runs["train"]), TARGET, "lab", store_root=root, version="2026.11.24-rc1")
    same = run_deploy(str(runs["train"]), TARGET, "lab", store_root=root, version="2026.11.24-rc1")
    assert same["action"] == "unchanged"
    with pytest.raises(
        InputError, match=re.escape("'2026.11.24-rc1' of lab/jetson-tx2 already exists")
    ):
        run_deploy(str(runs["compress"]), TARGET, "lab", store_root=root, version="2026.11.24-rc1")
    assert run_deploy(str(runs["compress"]), TARGET, "lab", store_root=root)["version"] == "v1"


# --- failures leave `current` where it was ----------------------------------------------------
def test_a_source_without_model_onnx_changes_nothing(runs, copy_of, tmp_path):
    root = store.as_uri(tmp_path / "store")
    run_deploy(str(runs["train"]), TARGET, "lab", store_root=root)
    before = pointer(root)
    broken = copy_of("compress")
    (broken / "model.onnx").unlink()
    with pytest.raises(InputError, match=re.escape("has no model.onnx")):
        run_deploy(str(broken), TARGET, "lab", store_root=root)
    assert pointer(root) == before and set(folders(root)) == {"v1"}


def test_a_corrupt_sdc_is_refused_before_upload(runs, copy_of, tmp_path):
    root = store.as_uri(tmp_path / "store")
    broken = copy_of("compress")
    data = bytearray((broken / "model.sdc").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.sdc").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"model\.sdc"):
        run_deploy(str(broken), TARGET, "lab", store_root=root)
    assert pointer(root) is None and folders(root) == {}


def test_a_failure_midway_removes_the_partial_version(runs, tmp_path):
    """A real failure after model.onnx is uploaded: a folder squats where v2's model.sdc goes,
    so writing it fails (the rename onto a directory). `current` must stay at v1, and v2 must
    hold nothing, so the next publish can take the number."""
    root = store.as_uri(tmp_path / "store")
    run_deploy(str(runs["train"]), TARGET, "lab", store_root=root)
    before = pointer(root)
    squatter = tmp_path / "store" / "fleets" / "lab" / TARGET / "v2" / "model.sdc"
    squatter.mkdir(parents=True)
    with pytest.raises(OSError):
        run_deploy(str(runs["compress"]), TARGET, "lab", store_root=root)
    assert pointer(root) == before
    assert set(folders(root)) == {"v1"}  # model.onnx of v2 was uploaded, then removed
    squatter.rmdir()
    assert run_deploy(str(runs["compress"]), TARGET, "lab", store_root=root)["version"] == "v2"


def test_an_unknown_target_changes_nothing(runs, tmp_path):
    root = store.as_uri(tmp_path / "store")
    run_deploy(str(runs["train"]), TARGET, "lab", store_root=root)
    before = pointer(root)
    with pytest.raises(InputError, match=r"unknown target 'jetson-nano'; available: .*jetson-tx2"):
        run_deploy(str(runs["compress"]), "jetson-nano", "lab", store_root=root)
    assert pointer(root) == before and set(folders(root)) == {"v1"}
    assert not (tmp_path / "store" / "fleets" / "lab" / "jetson-nano").exists()


@pytest.mark.parametrize(
    ("fleet", "target", "version", "expected"),
    [
        ("Lab", TARGET, None, "fleet 'Lab' is not valid"),
        ("lab/../x", TARGET, None, "fleet 'lab/../x' is not valid"),
        ("-lab", TARGET, None, "fleet '-lab' is not valid"),
        ("lab", "jetson_tx2", None, "target 'jetson_tx2' is not valid"),
        ("lab", TARGET, "current", "version 'current' is not valid"),
        ("lab", TARGET, "../v1", "version '../v1' is not valid"),
    ],
)
def test_bad_names(runs, tmp_path, fleet, target, version, expected):
    with pytest.raises(InputError, match=expected):
        run_deploy(str(runs["train"]), target, fleet, store_root=str(tmp_path), version=version)
    assert not (tmp_path / "fleets").exists()


def test_missing_source_is_not_found(tmp_path):
    with pytest.raises(store.ArtifactNotFoundError):
        run_deploy(str(tmp_path / "nothing"), TARGET, "lab", store_root=str(tmp_path / "s"))


# --- rollback and listing ---------------------------------------------------------------------
def test_rollback_verifies_and_keeps_history(runs, tmp_path):
    root = store.as_uri(tmp_path / "store")
    v1 = run_deploy(str(runs["train"]), TARGET, "lab", store_root=root)
    run_deploy(str(runs["compress"]), TARGET, "lab", store_root=root)
    back = rollback("lab", TARGET, store_root=root)
    assert (back["action"], back["version"], back["previous_version"]) == ("rollback", "v1", "v2")
    assert pointer(root)["manifest_sha256"] == v1["manifest_sha256"]
    with pytest.raises(InputError, match="'v1' is already current"):
        rollback("lab", TARGET, store_root=root, to_version="v1")
    with pytest.raises(InputError, match="'v9' of lab/jetson-tx2 does not exist"):
        rollback("lab", TARGET, store_root=root, to_version="v9")
    # a stored file that no longer matches its manifest is never made current
    (tmp_path / "store" / "fleets" / "lab" / TARGET / "v2" / "model.sdc").write_bytes(b"x")
    with pytest.raises(store.StoreError, match="differs from the manifest"):
        rollback("lab", TARGET, store_root=root)
    assert pointer(root)["version"] == "v1"
    rows = list_versions("lab", TARGET, store_root=root)
    assert [(r["version"], r["current"], r["complete"]) for r in rows] == [
        ("v1", True, True),
        ("v2", False, True),
    ]
    assert [h["action"] for h in pointer(root)["history"]] == ["publish", "publish", "rollback"]


def test_rollback_needs_something_published(tmp_path):
    with pytest.raises(InputError, match="nothing is published for lab/jetson-tx2"):
        rollback("lab", TARGET, store_root=str(tmp_path))


# --- packages and retest reports as sources ---------------------------------------------------
def test_a_package_can_be_promoted_to_another_fleet(runs, tmp_path):
    root = store.as_uri(tmp_path / "store")
    staged = run_deploy(str(runs["compress"]), TARGET, "staging", store_root=root)
    package = staged["package_uri"]
    prod = run_deploy(package, TARGET, "prod", store_root=root)
    assert prod["content_sha256"] == staged["content_sha256"]
    assert prod["metrics"] == staged["metrics"]
    assert prod["lineage"]["parent_package"] == {"fleet": "staging", "version": "v1"}
    with pytest.raises(InputError, match="was built for target 'jetson-tx2', not 'ti-c66x'"):
        run_deploy(package, "ti-c66x", "prod", store_root=root)


def test_a_tampered_package_is_refused(runs, tmp_path):
    root = store.as_uri(tmp_path / "store")
    run_deploy(str(runs["compress"]), TARGET, "staging", store_root=root)
    copy = Path(
        shutil.copytree(tmp_path / "store" / "fleets" / "staging" / TARGET / "v1", tmp_path / "pkg")
    )
    onnx_bytes = bytearray((copy / "model.onnx").read_bytes())
    onnx_bytes[-1] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(onnx_bytes))
    with pytest.raises(
        InputError, match=re.escape("model.onnx does not match the sha256 in manifest.json")
    ):
        run_deploy(str(copy), TARGET, "prod", store_root=root)
    assert pointer(root, "prod") is None


def test_a_retest_report_beside_the_run_adds_latency(runs, copy_of, tmp_path):
    """The retest stage's own report (predictions only: no data set, an emulated target)."""
    root = store.as_uri(tmp_path / "store")
    run = copy_of("compress")
    retest = run_retest(str(run), TARGET, run / "retest")
    m = run_deploy(str(run), TARGET, "lab", store_root=root)["metrics"]
    assert m["latency_ms"] == retest["latency_ms"] > 0 and m["fps"] == retest["fps"]
    assert m["power_w"] == retest["power_w"] and m["precision"] == retest["precision"]
    assert m["retest_passed"] is retest["verdict"]["passed"]
    assert m["memory_mb"] == retest["memory"]["memory_mb"] > 0  # what a rollout sizes pods by
    other = run_retest(str(run), "ti-c66x", tmp_path / "retest-ti")
    with pytest.raises(InputError, match="retest report is for target 'ti-c66x'"):
        run_deploy(str(runs["compress"]), TARGET, "lab", store_root=root,
                   retest_report=other["artifacts"]["report"])  # fmt: skip
    assert pointer(root)["version"] == "v1"


def _register(run: Path, tracking: Lineage, name: str) -> dict:
    """Register `run` as a new version in the real MLflow store, as the stages do, and write
    the ids into its report.json."""
    with tracking.run(f"compress {name}") as run_id:
        tracking.log_dir(run_id, run, "model")
        version = tracking.register(name, run_id, "model")
    report = json.loads((run / "report.json").read_text())
    report["mlflow"] = {"tracking_uri": tracking.tracking_uri, "run_id": run_id,
                        "registered_model": name, "version": version.version}  # fmt: skip
    (run / "report.json").write_text(json.dumps(report))
    return report["mlflow"]


def test_the_deployed_alias_follows_current(copy_of, tmp_path, mlflow_uri):
    """A real MLflow store (SQLite in tmp_path, the `mlflow_uri` fixture)."""
    tracking = open_lineage()
    first, second = copy_of("train"), copy_of("compress")
    ids = [_register(run, tracking, "lenet-300-100-digits") for run in (first, second)]
    root = str(tmp_path / "store")

    def deployed() -> str:
        alias = tracking.client.get_model_version_by_alias("lenet-300-100-digits",
                                                           "deployed_lab_jetson-tx2")  # fmt: skip
        return str(alias.version)

    result = run_deploy(str(first), TARGET, "lab", store_root=root)
    assert result["lineage"] == {
        "source": store.as_uri(first), "stage": "train",
        "mlflow_tracking_uri": mlflow_uri, "mlflow_run_id": ids[0]["run_id"],
        "registered_model": "lenet-300-100-digits", "model_version": "1",
    }  # fmt: skip
    assert result["mlflow"]["alias"] == "deployed_lab_jetson-tx2" and deployed() == "1"
    run_deploy(str(second), TARGET, "lab", store_root=root)
    assert deployed() == "2"
    rollback("lab", TARGET, store_root=root)
    assert deployed() == "1"
    tags = tracking.client.get_model_version("lenet-300-100-digits", "1").tags
    assert tags["sigdl.target"] == TARGET


# --- S3 ---------------------------------------------------------------------------------------
@pytest.fixture
def bucket(s3_server, monkeypatch) -> str:
    monkeypatch.setenv("SIGDL_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("SIGDL_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("SIGDL_S3_SECRET_KEY", s3_server.secret_key)
    config = store.S3Config(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    name = "deploy-test"
    client = config.make_client()
    if not client.bucket_exists(name):
        client.make_bucket(name)
    return name


def test_s3_source_and_store(runs, bucket, tmp_path):
    prefix = f"s3://{bucket}/{tmp_path.name}"
    store.put_dir(f"{prefix}/runs/compress", runs["compress"])
    store.put_dir(f"{prefix}/runs/train", runs["train"])
    root = f"{prefix}/store"
    first = run_deploy(f"{prefix}/runs/train", TARGET, "lab", store_root=root)
    second = run_deploy(f"{prefix}/runs/compress", TARGET, "lab", store_root=root)
    assert second["package_uri"] == f"{root}/fleets/lab/{TARGET}/v2/"
    current = json.loads(store.get_bytes(f"{root}/fleets/lab/{TARGET}/current"))
    assert (current["version"], current["previous"]) == ("v2", "v1")
    assert current["manifest_sha256"] == store.sha256(second["manifest_uri"])
    manifest = json.loads(store.get_bytes(second["manifest_uri"]))
    assert manifest["files"]["model.sdc"]["sha256"] == store.sha256(
        store.as_uri(runs["compress"] / "model.sdc")
    )
    # a remote source lacking model.onnx fails and leaves `current` alone
    store.put_file(f"{prefix}/runs/broken/report.json", runs["compress"] / "report.json")
    with pytest.raises(InputError, match=re.escape("has no model.onnx")):
        run_deploy(f"{prefix}/runs/broken", TARGET, "lab", store_root=root)
    assert json.loads(store.get_bytes(f"{root}/fleets/lab/{TARGET}/current")) == current
    assert rollback("lab", TARGET, store_root=root)["manifest_sha256"] == first["manifest_sha256"]
    with pytest.raises(store.ArtifactNotFoundError):
        run_deploy(f"{prefix}/runs/none", TARGET, "lab", store_root=root)


# --- the CLI ----------------------------------------------------------------------------------
def test_cli_deploy(runs, tmp_path, capsys):
    root = str(tmp_path / "store")
    args = ["deploy", str(runs["compress"]), "--target", TARGET, "--fleet", "lab", "--store", root]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["version"] == "v1" and result["published"] is True
    assert main(args) == 0
    human = capsys.readouterr().out
    assert f"unchanged: lab/{TARGET} v1" in human and result["manifest_sha256"] in human
    assert main([*args[:2], "--target", TARGET, "--fleet", "Lab", "--store", root]) == 2
    assert "fleet 'Lab' is not valid" in capsys.readouterr().err
    assert main(["deploy", str(tmp_path / "none"), "--target", TARGET, "--fleet", "lab"]) == 2
    assert "artifact not found" in capsys.readouterr().err
