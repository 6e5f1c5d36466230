"""Signed packages and the edge agent in process: real training runs (LeNet-300-100, 1 epoch on
digits: seconds), published by `run_deploy` to a `file://` store, followed by a real
`EdgeAgent` (ONNX Runtime) and served by a real `EdgeServer` on a loopback port."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.deploy.stage import run_deploy
from services.edge.agent import AgentConfig, EdgeAgent, NotReadyError, check_pixels
from services.edge.server import EdgeServer, to_tensor
from services.protos.sigdl.v1 import edge_pb2, edge_pb2_grpc
from sigdl.cli import main
from sigdl.core import signing
from sigdl.core.errors import InputError

TARGET = "arm-cortex-a53"  # a CPU target with 4 cores: the agent pins ONNX Runtime to them


@pytest.fixture
def keys(tmp_path, monkeypatch) -> tuple[Path, Path]:
    private, public = signing.generate_keys(tmp_path / "keys")
    monkeypatch.setenv("SIGDL_SIGNING_KEY", str(private))
    monkeypatch.setenv("SIGDL_VERIFY_KEY", str(public))
    return private, public


def make_agent(root: Path, agent_id: str = "edge-1") -> EdgeAgent:
    config = AgentConfig.from_settings("lab", TARGET, str(root), 0)
    return EdgeAgent(AgentConfig(**{**config.__dict__, "agent_id": agent_id}))


def version_dir(root: Path, version: str) -> Path:
    return root / "fleets" / "lab" / TARGET / version


# --- signatures -------------------------------------------------------------------------------
def test_signatures_verify_only_the_signed_bytes_under_the_trusted_key(tmp_path):
    private, public = signing.generate_keys(tmp_path / "a")
    _, other_public = signing.generate_keys(tmp_path / "b")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    key = signing.load_private_key(private)
    doc = signing.sign(b'{"files": {}}', key)
    assert signing.verify(b'{"files": {}}', doc, signing.load_public_key(public))
    with pytest.raises(signing.SignatureError, match="does not match"):
        signing.verify(b'{"files": {} }', doc, signing.load_public_key(public))
    with pytest.raises(signing.SignatureError, match="signed by key"):
        signing.verify(b'{"files": {}}', doc, signing.load_public_key(other_public))
    forged = json.loads(doc)
    forged["signature"] = forged["signature"][:-4] + "AAA="
    with pytest.raises(signing.SignatureError):
        signing.verify(b'{"files": {}}', json.dumps(forged).encode(), key.public_key())
    with pytest.raises(signing.SignatureError, match="not a JSON"):
        signing.verify(b"{}", b"\x00garbage", signing.load_public_key(public))
    with pytest.raises(InputError, match="never overwritten"):
        signing.generate_keys(tmp_path / "a")
    with pytest.raises(InputError, match="not an unencrypted PEM"):
        signing.load_private_key(public)


def test_cli_keys_generate(tmp_path, capsys):
    assert main(["keys", "generate", "--out", str(tmp_path / "k"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["private_key"]).is_file() and len(result["key_id"]) == 16
    assert main(["keys", "generate", "--out", str(tmp_path / "k")]) == 2
    assert "never overwritten" in capsys.readouterr().err


def test_deploy_signs_the_manifest_and_names_what_the_agent_needs(seeded_runs, keys, tmp_path):
    root = tmp_path / "store"
    result = run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=str(root))
    folder = version_dir(root, "v1")
    manifest = (folder / "manifest.json").read_bytes()
    public = signing.load_public_key(keys[1])
    assert (
        signing.verify(manifest, (folder / "signature").read_bytes(), public)
        == (result["signed_by"])
    )
    fields = json.loads(manifest)
    assert fields["min_agent_version"] == "0.1.0" and fields["target"] == TARGET
    assert "accuracy" in fields["metrics"] and fields["lineage"]["stage"] == "train"
    assert not any(p.suffix in (".key", ".pem") for p in folder.iterdir())  # no key inside


def test_an_unsigned_package_is_published_but_refused_by_agents(
    seeded_runs, keys, tmp_path, monkeypatch
):
    root = tmp_path / "store"
    monkeypatch.delenv("SIGDL_SIGNING_KEY")
    result = run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=str(root))
    assert result["signed_by"] is None and not (version_dir(root, "v1") / "signature").exists()
    agent = make_agent(root)
    assert agent.poll_once() == "refused"
    assert "unsigned" in agent.status().last_refusal["reason"]
    with pytest.raises(NotReadyError):
        agent.predict(np.zeros((1, 1, 28, 28), np.float32))


# --- the agent --------------------------------------------------------------------------------
def test_agent_loads_refuses_tampering_and_swaps(seeded_runs, keys, tmp_path):
    root = tmp_path / "store"
    run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=str(root))
    agent = make_agent(root)
    assert agent.poll_once() == "loaded" and agent.poll_once() == "unchanged"
    model = agent.model
    assert (model.version, model.threads) == ("v1", min(4, os.cpu_count()))
    shape = model.input_shape
    single = agent.predict(np.random.default_rng(0).random(shape, np.float32))
    batch = agent.predict(np.random.default_rng(0).random((5, *shape), np.float32))
    assert single.logits.shape == (1, 10) and batch.logits.shape == (5, 10)
    np.testing.assert_allclose(batch.logits[0], single.logits[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="expected"):
        agent.predict(np.zeros((1, 3, 8, 8), np.float32))

    # v2 is published, then one byte of its model changes in the store
    run_deploy(str(seeded_runs["b"]), TARGET, "lab", store_root=str(root), version="v2")
    onnx_file = version_dir(root, "v2") / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    assert agent.poll_once() == "refused"
    status = agent.status()
    assert status.version == "v1" and status.health == "SERVING"
    assert "model.onnx has sha256" in status.last_refusal["reason"]
    assert agent.predict(np.zeros(shape, np.float32)).version == "v1"
    assert agent.poll_once() == "unchanged"  # not downloaded again until `current` moves

    # the manifest rewritten to match the tampered file: the signature no longer matches
    manifest_file = version_dir(root, "v2") / "manifest.json"
    manifest = json.loads(manifest_file.read_bytes())
    manifest["files"]["model.onnx"]["sha256"] = hashlib.sha256(data).hexdigest()
    manifest_file.write_bytes(json.dumps(manifest).encode())
    pointer_file = root / "fleets" / "lab" / TARGET / "current"
    pointer = json.loads(pointer_file.read_bytes())
    pointer["manifest_sha256"] = hashlib.sha256(manifest_file.read_bytes()).hexdigest()
    pointer_file.write_text(json.dumps(pointer))
    assert agent.poll_once() == "refused"
    assert "signature does not match" in agent.status().last_refusal["reason"]
    assert agent.model is model

    # a good version swaps in; the status file in the store says so
    run_deploy(str(seeded_runs["b"]), TARGET, "lab", store_root=str(root), version="v3")
    assert agent.poll_once() == "loaded" and agent.model.version == "v3"
    reported = json.loads((root / "fleets/lab/_agents" / TARGET / "edge-1.json").read_text())
    assert reported["version"] == "v3" and reported["requests"] == 3
    assert reported["latency_ms"]["p50"] > 0 and reported["failed_requests"] == 1


def test_check_pixels():
    assert check_pixels(np.zeros((1, 2, 2), np.float32), (1, 2, 2)).shape == (1, 1, 2, 2)
    with pytest.raises(InputError, match="NaN"):
        check_pixels(np.full((1, 1, 2, 2), np.nan, np.float32), (1, 2, 2))
    with pytest.raises(InputError, match="shape"):
        check_pixels(np.zeros((2, 2), np.float32), (1, 2, 2))


def test_agent_needs_a_verify_key_and_valid_names(tmp_path, monkeypatch):
    monkeypatch.delenv("SIGDL_VERIFY_KEY", raising=False)
    with pytest.raises(InputError, match="SIGDL_VERIFY_KEY"):
        AgentConfig.from_settings("lab", TARGET, str(tmp_path), 0)
    monkeypatch.setenv("SIGDL_VERIFY_KEY", str(tmp_path / "none.pub"))
    with pytest.raises(InputError, match="unknown target"):
        AgentConfig.from_settings("lab", "no-such-target", str(tmp_path), 0)
    with pytest.raises(InputError, match="fleet 'Lab'"):
        AgentConfig.from_settings("Lab", TARGET, str(tmp_path), 0)
    assert main(["edge-agent", "--fleet", "lab", "--target", TARGET, "--store",
                 str(tmp_path), "--port", "0"]) == 2  # fmt: skip


# --- the gRPC service, fleet status and rollback ------------------------------------------------
def test_server_health_predict_status_and_the_fleet_commands(seeded_runs, keys, tmp_path, capsys):
    root = tmp_path / "store"
    agent = make_agent(root)
    server = EdgeServer(agent, port=0)
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = edge_pb2_grpc.EdgeInferenceServiceStub(channel)
            request = health_pb2.HealthCheckRequest(service="sigdl.v1.EdgeInferenceService")
            assert health.Check(request).status == health_pb2.HealthCheckResponse.NOT_SERVING
            pixels = edge_pb2.PredictRequest(pixels=to_tensor(np.zeros((1, 1, 28, 28))))
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(pixels)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=str(root))
            agent.poll_once()
            assert health.Check(request).status == health_pb2.HealthCheckResponse.SERVING
            shape = agent.model.input_shape
            reply = stub.Predict(
                edge_pb2.PredictRequest(pixels=to_tensor(np.zeros((3, *shape), np.float32)))
            )
            assert (list(reply.logits.shape), reply.model_version) == ([3, 10], "v1")
            assert len(reply.top1) == 3 and 0 < reply.top1_probability[0] <= 1
            bad = edge_pb2.PredictRequest(pixels=edge_pb2.Tensor(shape=[1, 1, 28, 28], data=b"x"))
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(bad)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "pixels" in info.value.details()
            status = json.loads(stub.Status(edge_pb2.AgentStatusRequest()).status_json)
            assert status["version"] == "v1" and status["address"] == f"127.0.0.1:{port}"
    finally:
        server.stop()
    run_deploy(str(seeded_runs["b"]), TARGET, "lab", store_root=str(root))
    assert main(["fleet", "status", "lab", "--store", str(root), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    (row,) = status["targets"]
    assert row["current"] == "v2" and [v["signed"] for v in row["versions"]] == [True, True]
    (reported,) = row["agents"]
    assert reported["agent_id"] == "edge-1" and reported["health"] == "STOPPED"
    assert reported["version"] == "v1" and reported["on_current"] is False
    assert main(["fleet", "status", "lab", "--store", str(root)]) == 0
    assert "agent edge-1: STOPPED v1" in capsys.readouterr().out
    args = ["fleet", "rollback", "lab", "--target", TARGET, "--store", str(root)]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
    shutil.rmtree(version_dir(root, "v2"))
    assert main([*args, "--to", "v2"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["fleet", "status", "nothing", "--store", str(root)]) == 2
