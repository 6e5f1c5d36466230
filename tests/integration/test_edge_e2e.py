"""Signed packages end to end on loopback: a real S3 server (SeaweedFS, the `s3_server`
fixture), `run_deploy` signing with a key from SIGDL_SIGNING_KEY, and two `sigdl edge-agent`
processes (each with only the public key) serving EdgeInferenceService on free ports.

v1 is deployed and answered by both agents; then a version whose model file was changed in the
store (v2) and one whose signature was changed (v3) are made current, as someone with write
access to the bucket could; both agents refuse each, keep answering with v1 and report why;
then a good v4 is deployed and reaches both.

Canaries (services/deploy/canary.py) with one canary agent (SIGDL_AGENT_CANARY) and one that
follows `current` only: a good canary is promoted and reaches both; a canary that does not get
enough healthy agents within its deadline, and one the agents refuse (unsigned), are rolled
back; the other agent never leaves the current version, and the canary agent returns to it."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.deploy.canary import promote_canary
from services.deploy.stage import fleet_status, run_deploy
from services.edge.server import to_tensor
from services.protos.sigdl.v1 import edge_pb2, edge_pb2_grpc
from sigdl.core import signing, store

REPO = Path(__file__).resolve().parents[2]
TARGET = "arm-cortex-a53"
BUCKET = "edge-e2e"
AGENT_START_S = 60.0  # a cold Python importing onnxruntime and grpc on a busy 2-core machine


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path) -> str:
    monkeypatch.setenv("SIGDL_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("SIGDL_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("SIGDL_S3_SECRET_KEY", s3_server.secret_key)
    client = store.S3Config(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    client = client.make_client()
    if not client.bucket_exists(BUCKET):
        client.make_bucket(BUCKET)
    return f"s3://{BUCKET}/{tmp_path.name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


class Agent:
    """One `sigdl edge-agent` process and a channel to it."""

    def __init__(
        self,
        name: str,
        root: str,
        public_key: Path,
        home: Path,
        canary: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "SIGDL_SIGNING_KEY"}  # public only
        env.update(extra_env or {})
        env.update(SIGDL_VERIFY_KEY=str(public_key), SIGDL_AGENT_ID=name,
                   SIGDL_AGENT_POLL_S="0.3", SIGDL_HOME=str(home),
                   SIGDL_AGENT_CANARY="1" if canary else "0")  # fmt: skip
        self.log = home.with_suffix(".log")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sigdl.cli", "edge-agent", "--fleet", "lab", "--target",
                 TARGET, "--store", root, "--port", str(self.port)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = edge_pb2_grpc.EdgeInferenceServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def serving(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"agent exited {self.process.returncode}: {self.log.read_text()[-3000:]}")
        try:
            reply = self.health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def status(self) -> dict:
        return json.loads(self.stub.Status(edge_pb2.AgentStatusRequest(), timeout=5).status_json)

    def predict(self, pixels: np.ndarray) -> edge_pb2.PredictResponse:
        request = edge_pb2.PredictRequest(pixels=to_tensor(pixels))
        return self.stub.Predict(request, timeout=10)

    def stop(self) -> None:
        self.channel.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def keys(tmp_path, monkeypatch) -> Path:
    private, public = signing.generate_keys(tmp_path / "keys")
    monkeypatch.setenv("SIGDL_SIGNING_KEY", str(private))
    return public


@pytest.fixture
def agents(s3_env, keys, tmp_path) -> Iterator[list[Agent]]:
    started = [Agent(f"edge-{i}", f"{s3_env}/live", keys, tmp_path / f"agent{i}") for i in (1, 2)]
    try:
        yield started
    finally:
        for agent in started:
            agent.stop()


def make_current_by_hand(staging: str, live: str, version: str, tamper: str) -> None:
    """Copy `version` from the staging store into the live one with one file changed, and
    point `current` at it: what someone with write access to the bucket could do."""
    src, dst = f"{staging}/fleets/lab/{TARGET}/{version}", f"{live}/fleets/lab/{TARGET}"
    for uri in store.list_uris(src):
        name = uri.rsplit("/", 1)[1]
        data = store.get_bytes(uri)
        if name == tamper == "model.onnx":
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        if name == tamper == "signature":
            doc = json.loads(data)
            raw = bytearray(base64.b64decode(doc["signature"]))
            raw[0] ^= 0x01
            doc["signature"] = base64.b64encode(bytes(raw)).decode()
            data = json.dumps(doc).encode()
        store.put_bytes(f"{dst}/{version}/{name}", data)
    pointer = json.loads(store.get_bytes(f"{dst}/current"))
    manifest_sha256 = store.sha256(f"{dst}/{version}/manifest.json")
    pointer.update(
        version=version, manifest=f"{version}/manifest.json", previous=pointer["version"],
        manifest_sha256=manifest_sha256,
    )  # fmt: skip
    store.put_bytes(f"{dst}/current", json.dumps(pointer).encode())


def refused(agent: Agent, version: str) -> bool:
    return (agent.status()["last_refusal"] or {}).get("version") == version


def test_two_agents_refuse_tampered_packages_and_take_a_good_one(seeded_runs, s3_env, agents):
    live, staging = f"{s3_env}/live", f"{s3_env}/staging"
    run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=live)  # v1
    for agent in agents:
        wait_until(f"agent on {agent.port} serving", agent.serving, AGENT_START_S)
    pixels = np.random.default_rng(0).random((1, 1, 28, 28), np.float32)
    first = [agent.predict(pixels) for agent in agents]
    assert [r.model_version for r in first] == ["v1", "v1"]
    np.testing.assert_allclose(  # the same model on both agents
        np.frombuffer(first[0].logits.data, "<f4"), np.frombuffer(first[1].logits.data, "<f4")
    )
    batch = agents[0].predict(np.concatenate([pixels] * 4))
    assert list(batch.logits.shape) == [4, 10] and batch.top1[0] == first[0].top1[0]

    for version, tamper, reason in [("v2", "model.onnx", "model.onnx has sha256"),
                                    ("v3", "signature", "signature does not match")]:  # fmt: skip
        run_deploy(str(seeded_runs["b"]), TARGET, "lab", store_root=staging, version=version)
        make_current_by_hand(staging, live, version, tamper)
        for agent in agents:
            wait_until(f"{agent.port} refusing {version}", lambda a=agent, v=version: refused(a, v))
            status = agent.status()
            assert reason in status["last_refusal"]["reason"]
            assert (status["version"], status["health"]) == ("v1", "SERVING")
            assert agent.predict(pixels).model_version == "v1"

    reported = fleet_status("lab", live)["targets"][0]["agents"]
    assert [(a["agent_id"], a["version"]) for a in reported] == [("edge-1", "v1"), ("edge-2", "v1")]
    assert all(a["last_refusal"]["version"] == "v3" for a in reported)

    result = run_deploy(str(seeded_runs["b"]), TARGET, "lab", store_root=live)
    assert result["version"] == "v4"
    for agent in agents:
        wait_until(f"{agent.port} serving v4", lambda a=agent: a.status()["version"] == "v4")
        assert agent.predict(pixels).model_version == "v4"
        assert agent.status()["failed_requests"] == 0
    wait_until(
        "the store reporting v4 for both",
        lambda: (
            [a["version"] for a in fleet_status("lab", live)["targets"][0]["agents"]]
            == ["v4", "v4"]
        ),
    )


@pytest.fixture
def canary_agents(s3_env, keys, tmp_path) -> Iterator[list[Agent]]:
    """edge-1 follows `current`; edge-2 is a canary agent."""
    started = [
        Agent(f"edge-{i}", f"{s3_env}/live", keys, tmp_path / f"agent{i}", canary=i == 2)
        for i in (1, 2)
    ]
    try:
        yield started
    finally:
        for agent in started:
            agent.stop()


def serves(agent: Agent, version: str) -> Callable[[], bool]:
    return lambda: agent.status()["version"] == version


def test_a_canary_is_promoted_or_rolled_back(seeded_runs, s3_env, canary_agents, monkeypatch):
    live = f"{s3_env}/live"
    stable, canary = canary_agents
    pixels = np.random.default_rng(0).random((1, 1, 28, 28), np.float32)
    run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=live)  # v1
    for agent in canary_agents:
        wait_until(f"agent on {agent.port} serving", agent.serving, AGENT_START_S)

    # a good canary: only the canary agent takes it, then promotion brings it to both
    run_deploy(str(seeded_runs["b"]), TARGET, "lab", store_root=live, canary=True)  # v2
    wait_until("the canary agent on v2", serves(canary, "v2"))
    assert stable.predict(pixels).model_version == "v1"
    decision = promote_canary("lab", TARGET, live, deadline_s=60, poll_s=0.3)
    assert (decision.action, decision.current, decision.healthy_agents) == (
        "promoted", "v2", ["edge-2"],
    )  # fmt: skip
    wait_until("the other agent on v2", serves(stable, "v2"))

    # a canary short of healthy agents: loaded by the canary agent, then rolled back
    run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=live, canary=True)  # v3
    wait_until("the canary agent on v3", serves(canary, "v3"))
    decision = promote_canary("lab", TARGET, live, deadline_s=2, min_healthy=2, poll_s=0.3)
    assert (decision.action, decision.current) == ("rolled_back", "v2"), decision.reason
    assert decision.healthy_agents == ["edge-2"]
    wait_until("the canary agent back on v2", serves(canary, "v2"))
    assert canary.predict(pixels).model_version == "v2"

    # a canary its agents refuse (unsigned): rolled back on the refusal, not at the deadline
    monkeypatch.delenv("SIGDL_SIGNING_KEY")
    run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=live, canary=True)  # v4
    decision = promote_canary("lab", TARGET, live, deadline_s=120, poll_s=0.3)
    assert (decision.action, decision.refused_by) == ("rolled_back", ["edge-2"])
    assert "v4 is unsigned" in decision.reason and decision.waited_s < 60
    assert canary.status()["version"] == "v2"
    assert canary.predict(pixels).model_version == "v2"

    swaps = [s["version"] for s in stable.status()["swaps"]]
    assert swaps == ["v1", "v2"]  # the other agent never ran a canary that was rolled back
    assert stable.status()["failed_requests"] == canary.status()["failed_requests"] == 0


LOOP_CONFIG = """
model: lenet-300-100
dataset: digits
epochs: 3
targets: [arm-cortex-a53]
recipes: [int8]
requirements: ["accuracy_drop<=5"]
max_iterations: 1
fleet: lab
"""


def sigdl(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """A `sigdl` command as a user runs it, in its own process (the test's settings + `env`)."""
    return subprocess.run([sys.executable, "-m", "sigdl.cli", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})  # fmt: skip


def test_the_loop_closes_from_collected_samples_to_a_retrained_version(
    s3_server, edge_s3_server, s3_env, keys, mlflow_uri, tmp_path, monkeypatch
):
    """The whole edge loop: `sigdl run` trains, compresses, gates and deploys v1 to the live store;
    two agents serve it and refuse a tampered model file (v2) and a tampered signature (v3);
    operators label digits through both agents (one site's labels private, the other's not)
    and the agents upload them; `sigdl fleet retrain` waits below the threshold, then retrains
    where the samples are, from v1's weights, with every labelled sample, through the same gate,
    and deploys v4, which both agents then serve. The edge site has its own S3 server and keys
    (a second SeaweedFS, `edge_s3_server`), which only the agents and the trigger are given:
    `sigdl run` in the cloud never holds them. Private samples are on the edge site's server
    only; the training report and MLflow name the sample set it learnt from."""
    import mlflow

    from sigdl.core.datasets import adapt, load_dataset

    client = store.S3Config(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    client = client.make_client()
    site = store.S3Config(edge_s3_server.endpoint, edge_s3_server.access_key,
                          edge_s3_server.secret_key).make_client()  # fmt: skip
    for server, bucket in ((site, "edge-site-loop"), (client, "cloud-loop")):
        if not server.bucket_exists(bucket):
            server.make_bucket(bucket)
    live, staging = f"{s3_env}/live", f"{s3_env}/staging"
    edge, cloud = f"s3://edge-site-loop/{tmp_path.name}", f"s3://cloud-loop/{tmp_path.name}"
    at_edge = {  # what the edge site's agents and trigger are given, and the cloud is not
        "SIGDL_EDGE_STORE": edge, "SIGDL_CLOUD_STORE": cloud,
        "SIGDL_EDGE_SITE_S3_ENDPOINT": edge_s3_server.endpoint,
        "SIGDL_EDGE_SITE_S3_ACCESS_KEY": edge_s3_server.access_key,
        "SIGDL_EDGE_SITE_S3_SECRET_KEY": edge_s3_server.secret_key,
        "SIGDL_VERIFY_KEY": str(keys),  # the trigger checks what the agents serve
    }  # fmt: skip
    (tmp_path / "loop.yaml").write_text(LOOP_CONFIG + f"store: {live}\n")

    # the cloud's loop: train, compress, retest, gate, deploy v1
    proc = sigdl("run", "--config", str(tmp_path / "loop.yaml"), "--out", str(tmp_path / "run"),
                 "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    first = json.loads(proc.stdout)
    assert first["deployed"][TARGET]["version"] == "v1"
    candidate = tmp_path / "run" / "iteration-1" / "candidates"
    candidate = candidate / first["deployed"][TARGET]["candidate"] / "compress"

    agents = [Agent(f"edge-{i}", live, keys, tmp_path / f"agent{i}", extra_env=at_edge)
              for i in (1, 2)]  # fmt: skip
    try:
        for agent in agents:
            wait_until(f"agent on {agent.port} serving", agent.serving, AGENT_START_S)
        digits = load_dataset("digits")
        pixels = adapt(digits.test.images[:12], 1, 28).numpy()
        assert [agent.predict(pixels[:1]).model_version for agent in agents] == ["v1", "v1"]

        for version, tamper in (("v2", "model.onnx"), ("v3", "signature")):
            run_deploy(str(candidate), TARGET, "lab", store_root=staging, version=version)
            make_current_by_hand(staging, live, version, tamper)
            for agent in agents:
                wait_until(
                    f"{agent.port} refusing {version}", lambda a=agent, v=version: refused(a, v)
                )
                assert agent.predict(pixels[:1]).model_version == "v1"

        def label(agent: Agent, rows: range, private: bool) -> set[str]:
            shas = set()
            for row in rows:
                request = edge_pb2.LabelRequest(pixels=to_tensor(pixels[row : row + 1]),
                                                label=int(digits.test.labels[row]),
                                                private=private)  # fmt: skip
                shas.add(agent.stub.Label(request, timeout=10).sha256)
            return shas

        def uploaded(agent: Agent, n: int) -> Callable[[], bool]:
            return lambda: (
                agent.status()["data"]["uploaded_edge"] >= n
                and (agent.status()["data"]["pending"] == 0)
            )

        config = str(tmp_path / "loop.yaml")
        retrain = ["fleet", "retrain", "lab", "--target", TARGET, "--store", live, "--samples",
                   edge, "--threshold", "6", "--config", config, "--json"]  # fmt: skip
        private = label(agents[0], range(0, 3), private=True)
        wait_until("edge-1's labels uploaded", uploaded(agents[0], 3), 60)
        proc = sigdl(*retrain, env=at_edge)
        assert proc.returncode == 0, proc.stderr[-3000:]
        waiting = json.loads(proc.stdout)
        assert (waiting["labelled"], waiting["new"], waiting["started"]) == (3, 3, False)

        public = label(agents[1], range(3, 6), private=False)
        agents[1].predict(np.random.default_rng(0).random((4, 1, 28, 28), np.float32))
        wait_until("edge-2's labels uploaded and synced", uploaded(agents[1], 3), 60)
        proc = sigdl(*retrain, env=at_edge)
        assert proc.returncode == 0, proc.stderr[-4000:]
        done = json.loads(proc.stdout)
        run = done["run"]
        assert (done["new"], done["started"], run["passed"]) == (6, True, True)
        assert (run["from_version"], run["deployed_version"]) == ("v1", "v4")
        assert (run["samples"], run["private"]) == (6, 3)

        for agent in agents:
            wait_until(f"{agent.port} serving v4", lambda a=agent: a.status()["version"] == "v4")
            assert agent.predict(pixels[:1]).model_version == "v4"
            assert agent.status()["failed_requests"] == 0

        # what the retraining learnt from, and where it started
        report = json.loads(
            (Path(run["out"]) / "iteration-1" / "train" / "report.json").read_text()
        )
        edge_samples = report["inputs"]["edge_samples"]
        assert (edge_samples["uri"], edge_samples["count"], edge_samples["private"]) == (
            run["sample_set"], 6, 3)  # fmt: skip
        assert report["inputs"]["init_checkpoint"]["uri"] == store.as_uri(
            str(tmp_path / "run" / "iteration-1" / "train")
        )
        with monkeypatch.context() as edge_site:  # read the edge site's server as the edge does
            for name, value in at_edge.items():
                edge_site.setenv(name, value)
            chosen = json.loads(store.get_bytes(run["sample_set"]))
            assert report["inputs"]["edge_samples"]["sha256"] == store.sha256(run["sample_set"])
        assert {s["sha256"] for s in chosen["samples"]} == private | public
        tracking = mlflow.MlflowClient(mlflow_uri)
        digest = edge_samples["sha256"]
        tagged = tracking.search_runs(
            [e.experiment_id for e in tracking.search_experiments()],
            filter_string=f"tags.`sigdl.edge_samples_sha256` = '{digest}'",
        )
        assert len(tagged) == 1 and tagged[0].data.tags["sigdl.stage"] == "train"

        # private samples and the sample set stay on the edge site's server
        def names(server, bucket: str) -> set[str]:
            objects = server.list_objects(bucket, prefix=f"{tmp_path.name}/", recursive=True)
            return {o.object_name.rsplit("/", 1)[1] for o in objects}

        edge_names, cloud_names = names(site, "edge-site-loop"), names(client, "cloud-loop")
        assert not client.bucket_exists("edge-site-loop")  # the cloud's server never had it
        assert {f"{sha}.npy" for sha in private | public} <= edge_names
        assert {f"{sha}.npy" for sha in public} <= cloud_names
        assert not {f"{sha}.npy" for sha in private} & cloud_names
        assert "samples.json" in edge_names and "samples.json" not in cloud_names

        proc = sigdl(*retrain, env=at_edge)  # nothing new since: it waits again
        assert proc.returncode == 0 and json.loads(proc.stdout)["new"] == 0
    finally:
        for agent in agents:
            agent.stop()
