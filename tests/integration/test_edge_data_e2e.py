"""Data acquisition end to end on loopback: a real S3 server (SeaweedFS, the `s3_server` fixture)
holding the fleet's packages, an edge site's bucket and a cloud bucket, and one
`sigdl edge-agent` process that keeps hard examples from Predict and labelled samples from Label.

The cloud bucket does not exist when the agent starts, so its syncs fail and are retried while
the edge site's uploads go on; once it exists, the non-private samples reach it. Listing both
buckets then shows every sample in the edge bucket and exactly the non-private ones in the cloud
bucket, under keys named by their sha256 that a repeated sample does not change."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.deploy.stage import run_deploy
from services.edge.samples import encode, sample_key
from services.edge.server import to_tensor
from services.protos.sigdl.v1 import edge_pb2, edge_pb2_grpc
from services.training.stage import run_training
from sigdl.cli import main
from sigdl.core import signing, store
from sigdl.core.training import TrainConfig

REPO = Path(__file__).resolve().parents[2]
TARGET = "arm-cortex-a53"
PACKAGES, EDGE_SITE, CLOUD = "edge-data-e2e", "edge-site-e2e", "cloud-e2e"
AGENT_START_S = 60.0
HARD_TOP1, HARD_MARGIN = 0.9, 0.1  # what the agent is told, and what the test recomputes


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keys_under(client, bucket: str, prefix: str) -> set[str]:
    objects = client.list_objects(bucket, prefix=f"{prefix}/", recursive=True)
    return {o.object_name[len(prefix) + 1 :] for o in objects}


def _sha(pixels: np.ndarray) -> str:
    return hashlib.sha256(encode(pixels)).hexdigest()


def hard_rows(logits: np.ndarray) -> np.ndarray:
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = np.sort(p / p.sum(axis=1, keepdims=True), axis=1)
    return (p[:, -1] < HARD_TOP1) | (p[:, -1] - p[:, -2] < HARD_MARGIN)


def test_private_samples_stay_in_the_edge_bucket(s3_server, monkeypatch, tmp_path, capsys):
    for name, value in (("SIGDL_S3_ENDPOINT", s3_server.endpoint),
                        ("SIGDL_S3_ACCESS_KEY", s3_server.access_key),
                        ("SIGDL_S3_SECRET_KEY", s3_server.secret_key),
                        ("SIGDL_MLFLOW_TRACKING_URI", "off"), ("SIGDL_PROGRESS", "0")):  # fmt: skip
        monkeypatch.setenv(name, value)
    client = store.S3Config(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    client = client.make_client()
    for bucket in (PACKAGES, EDGE_SITE):
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
    assert not client.bucket_exists(CLOUD)  # made later: the agent's syncs must retry
    run = tmp_path / "run"
    run_training(TrainConfig(model="lenet-300-100", dataset="digits", epochs=1), run)
    private_key, public_key = signing.generate_keys(tmp_path / "keys")
    monkeypatch.setenv("SIGDL_SIGNING_KEY", str(private_key))
    live = f"s3://{PACKAGES}/{tmp_path.name}"
    run_deploy(str(run), TARGET, "lab", store_root=live)

    prefix = tmp_path.name
    env = {k: v for k, v in os.environ.items() if k != "SIGDL_SIGNING_KEY"}
    env.update(SIGDL_VERIFY_KEY=str(public_key), SIGDL_AGENT_ID="edge-1",
               SIGDL_AGENT_POLL_S="0.3", SIGDL_HOME=str(tmp_path / "agent-home"),
               SIGDL_EDGE_STORE=f"s3://{EDGE_SITE}/{prefix}",
               SIGDL_CLOUD_STORE=f"s3://{CLOUD}/{prefix}",
               SIGDL_EDGE_HARD_TOP1=str(HARD_TOP1), SIGDL_EDGE_HARD_MARGIN=str(HARD_MARGIN),
               SIGDL_EDGE_UPLOAD_BYTES_PER_S="200000")  # fmt: skip
    port, log = free_port(), tmp_path / "agent.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sigdl.cli", "edge-agent", "--fleet", "lab", "--target",
             TARGET, "--store", live, "--port", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = edge_pb2_grpc.EdgeInferenceServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)

    def serving() -> bool:
        if process.poll() is not None:
            pytest.fail(f"agent exited {process.returncode}: {log.read_text()[-3000:]}")
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def data() -> dict:
        return json.loads(stub.Status(edge_pb2.AgentStatusRequest(), timeout=5).status_json)["data"]

    try:
        wait_until("the agent serving", serving, AGENT_START_S)
        rng = np.random.default_rng(0)
        private_shas, public_shas = set(), set()
        # Predict: noise (the model is unsure of much of it) and blank images, half marked
        # public, half left to the agent's default (private); blank images differ per half
        for marked_public in (True, False):
            blank = np.full((2, 1, 28, 28), 0.5 if marked_public else 0.25, np.float32)
            batch = np.concatenate([rng.random((4, 1, 28, 28), np.float32), blank])
            request = edge_pb2.PredictRequest(pixels=to_tensor(batch))
            if marked_public:
                request.private = False
            reply = stub.Predict(request, timeout=10)
            logits = np.frombuffer(reply.logits.data, "<f4").reshape(list(reply.logits.shape))
            for row in np.flatnonzero(hard_rows(logits)):
                (public_shas if marked_public else private_shas).add(_sha(batch[row : row + 1]))
        hard = len(private_shas | public_shas)
        assert hard >= 1, "no input was a hard example: the test's inputs no longer probe that"
        # Label: two private, two public samples an operator submits
        for i in range(4):
            pixels = rng.random((1, 1, 28, 28), np.float32)
            reply = stub.Label(edge_pb2.LabelRequest(pixels=to_tensor(pixels), label=i,
                                                     private=i % 2 == 0), timeout=10)  # fmt: skip
            assert reply.sha256 == _sha(pixels) and reply.private == (i % 2 == 0)
            (private_shas if reply.private else public_shas).add(reply.sha256)
        last_public = pixels

        wait_until("the edge site's uploads", lambda: data()["uploaded_edge"] == hard + 4)
        status = data()
        assert (status["kept"], status["labelled"], status["synced_cloud"]) == (hard + 4, 4, 0)
        assert status["last_upload_error"]["destination"] == "cloud"  # no bucket yet: retrying
        client.make_bucket(CLOUD)
        wait_until("the cloud syncs", lambda: data()["pending"] == 0, 60)
        assert data()["synced_cloud"] == len(public_shas)

        def npy_keys(bucket: str) -> set[str]:
            found = keys_under(client, bucket, prefix)
            assert {k[: -len(".json")] for k in found if k.endswith(".json")} == {
                k[: -len(".npy")] for k in found if k.endswith(".npy")
            }  # every sample with its record
            return {k for k in found if k.endswith(".npy")}

        def expected(shas: set[str]) -> set[str]:
            return {sample_key("lab", TARGET, sha) for sha in shas}

        edge_keys, cloud_keys = npy_keys(EDGE_SITE), npy_keys(CLOUD)
        assert edge_keys == expected(private_shas | public_shas)
        assert cloud_keys == expected(public_shas)
        assert not cloud_keys & expected(private_shas)  # private samples never reach the cloud
        record = json.loads(client.get_object(CLOUD, f"{prefix}/{sorted(cloud_keys)[0][:-4]}"
                                                     ".json").read())  # fmt: skip
        assert record["private"] is False and record["model_version"] == "v1"

        # the same sample again: the same key, nothing new in either bucket
        again = stub.Label(edge_pb2.LabelRequest(pixels=to_tensor(last_public), label=3,
                                                 private=False), timeout=10)  # fmt: skip
        assert again.key == sample_key("lab", TARGET, _sha(last_public))
        wait_until("the repeat uploaded", lambda: data()["pending"] == 0)
        assert (npy_keys(EDGE_SITE), npy_keys(CLOUD)) == (edge_keys, cloud_keys)

        # the agent's status file (written at every poll) says the same to `sigdl fleet status`;
        # the repeat was kept (and counted) again, then uploaded to the same keys
        def shown() -> str:
            assert main(["fleet", "status", "lab", "--store", live]) == 0
            return capsys.readouterr().out

        line = f"kept {hard + 5} ({hard} hard, 5 labelled), uploaded to edge {hard + 5}"

        def repeat_shown() -> bool:  # the file from before the repeat also says "pending 0"
            out = shown()
            return line in out and "pending 0 " in out

        wait_until("fleet status showing the repeat and nothing pending", repeat_shown)
        assert line in shown()
    finally:
        channel.close()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
