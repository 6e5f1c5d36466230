"""The four stage services over real gRPC, driven with the generated clients.

Servers are real: `StageServer` (the one `sigdl serve` runs) started in this process on
127.0.0.1 port 0, or `sigdl serve` as a subprocess where a test kills it. Jobs run in real
worker processes (forked from the server's forkserver) on the bundled `digits` data set with
LeNet-300-100 and one epoch. TLS tests make a throwaway CA and certificates with `cryptography`.
S3 tests use the real SeaweedFS server of the `s3_server` fixture (tests/conftest.py).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.compression.client import CompressionClient
from services.deploy.client import DeployClient
from services.grpc_common.security import TlsFiles
from services.grpc_common.server import ServerConfig, StageServer
from services.protos.sigdl.v1 import (
    common_pb2,
    compression_pb2,
    deploy_pb2,
    retest_pb2,
    training_pb2,
    training_pb2_grpc,
)
from services.retest.client import RetestClient
from services.training.client import TrainingClient, train_request
from sigdl.core import jobs, store
from sigdl.core.errors import InputError
from sigdl.core.events import ProgressEvent
from sigdl.core.training import TrainConfig

TOKEN = "test-token-5f2c"
FOUR = ["sigdl.v1.TrainingService", "sigdl.v1.CompressionService", "sigdl.v1.RetestService",
        "sigdl.v1.DeployService"]  # fmt: skip
TINY_RECIPE = """name: tiny
description: one short round of each step, for tests
seed: 0
steps:
  - {type: prune, sparsity: {fc: 0.5}, rounds: 1, retrain: {epochs: 1}}
  - {type: share, bits: {fc: 5}, retrain: {epochs: 1}}
  - {type: huffman, index_bits: {fc: 8}}
"""


def tiny_training(epochs: int = 1) -> training_pb2.TrainRequest:
    return train_request(TrainConfig("lenet-300-100", "digits", epochs=epochs))


@pytest.fixture
def serve():
    """Start StageServers in this process; each is stopped at the end of the test."""
    servers: list[StageServer] = []

    def start(stages=("training",), **options) -> str:
        config = ServerConfig(port=0, token=TOKEN, grace_s=2.0, **options)
        server = StageServer(list(stages), config)
        port = server.start()
        servers.append(server)
        assert server.wait_ready(30), "the server never became SERVING"
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(grace_s=0)


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def wait_for(predicate, timeout_s: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def first_progress(client, job_id: str) -> common_pb2.JobEvent:
    return next(e for e in client.watch(job_id) if e.kind == "progress")


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie has exited too: it only waits for its parent to read its status
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z"


# --- the job API -------------------------------------------------------------------------------
def test_train_compress_retest_deploy_through_the_services(serve, sigdl_env):
    address = serve(("training", "compression", "retest", "deploy"))
    with TrainingClient(address, token=TOKEN) as client:
        request = tiny_training()
        request.request_id = "train-1"
        job = client.submit(request)
        assert client.submit(request).id == job.id  # idempotent on the request id
        events = []
        done = client.wait(job.id, on_event=events.append)
        assert done.state == common_pb2.SUCCEEDED, done.error
        assert [e.index for e in events] == list(range(done.event_count))
        assert [e.state for e in events if e.kind == "state"] == [
            common_pb2.QUEUED, common_pb2.RUNNING, common_pb2.SUCCEEDED]  # fmt: skip
        epoch = next(e for e in events if e.kind == "progress")
        first = ProgressEvent.from_json(json.loads(epoch.data_json))  # what the stage emitted
        assert (first.kind, first.done, first.total) == ("epoch", 1, 1) and first["loss"] > 0
        assert epoch.message == first.line()
        # a reconnecting watcher resumes from an index: exactly the events after it
        tail = list(client.watch(job.id, from_index=2))
        assert [e.index for e in tail] == list(range(2, done.event_count))
        outputs = {o.uri.rsplit("/", 1)[1]: o for o in done.outputs}
        assert {"model.onnx", "model.json", "model.safetensors", "report.json"} <= set(outputs)
        assert store.sha256(outputs["model.onnx"].uri) == outputs["model.onnx"].sha256
        metrics = {m.name: m.value for m in done.metrics}
        assert 0.5 < metrics["onnx_test_accuracy"] <= 1.0
        report = json.loads(done.report_json)
        assert report["artifacts"]["checkpoint"] == done.out_uri  # paths became URIs
        assert done.out_uri.startswith(store.as_uri(sigdl_env / "jobs" / "training"))
        request.epochs = 2  # the same request id with other parameters is refused
        assert code_of(lambda: client.submit(request))[0] == grpc.StatusCode.ALREADY_EXISTS

    recipe_uri = store.as_uri(sigdl_env / "recipes" / "tiny.yaml")
    store.put_bytes(recipe_uri, TINY_RECIPE.encode())
    with CompressionClient(address, token=TOKEN) as client:
        checkpoint = common_pb2.ArtifactRef(uri=done.out_uri)
        job = client.submit(compression_pb2.CompressRequest(checkpoint=checkpoint,
                                                            recipe=recipe_uri))  # fmt: skip
        compressed = client.wait(job.id)
        assert compressed.state == common_pb2.SUCCEEDED, compressed.error
        assert {m.name: m.value for m in compressed.metrics}["ratio"] > 2

    source = common_pb2.ArtifactRef(uri=compressed.out_uri)
    with RetestClient(address, token=TOKEN) as client:
        request = retest_pb2.RetestRequest(model=source, target="jetson-tx2", dataset="digits",
                                           requirements=["accuracy>=0.2"])  # fmt: skip
        retested = client.wait(client.submit(request).id)
        assert retested.state == common_pb2.SUCCEEDED, retested.error
        metrics = {m.name: m.value for m in retested.metrics}
        assert metrics["passed"] == 1.0 and metrics["latency_ms"] > 0
        request.requirements[:] = ["accuracy>=1.5"]  # a failed gate is a finished job
        failed_gate = client.wait(client.submit(request).id)
        assert failed_gate.state == common_pb2.SUCCEEDED
        assert {m.name: m.value for m in failed_gate.metrics}["passed"] == 0.0

    with DeployClient(address, token=TOKEN) as client:
        retest_report = common_pb2.ArtifactRef(uri=retested.out_uri + "/report.json")
        job = client.submit(
            deploy_pb2.DeployRequest(
                source=source, target="jetson-tx2", fleet="lab", retest_report=retest_report
            )
        )
        deployed = client.wait(job.id)
        assert deployed.state == common_pb2.SUCCEEDED, deployed.error
        result = json.loads(deployed.report_json)
        assert result["version"] == "v1" and result["published"]
        assert store.exists(result["manifest_uri"])
        assert result["metrics"]["retest_passed"] is True


def test_cancel_stops_a_running_job(serve):
    address = serve()
    with TrainingClient(address, token=TOKEN) as client:
        job = client.submit(tiny_training(epochs=500))
        first_progress(client, job.id)  # it is really training
        running = client.get(job.id)
        assert running.state == common_pb2.RUNNING and running.worker_pid > 0
        cancelled = client.cancel(job.id)
        assert cancelled.state == common_pb2.CANCELLED
        assert wait_for(lambda: process_gone(running.worker_pid), 10, "the worker to exit")
        events = list(client.watch(job.id))
        assert events[-1].state == common_pb2.CANCELLED
        count = client.get(job.id).event_count
        time.sleep(1.0)
        assert client.get(job.id).event_count == count  # nothing runs any more
        out = store.FileBackend.path_of(cancelled.out_uri)
        assert not (out / "report.json").exists()


def test_a_full_queue_is_resource_exhausted(serve):
    address = serve(workers=1, queue_size=1)
    with TrainingClient(address, token=TOKEN) as client:
        running = client.submit(tiny_training(epochs=500))
        queued = client.submit(tiny_training(epochs=501))
        code, details = code_of(lambda: client.submit(tiny_training(epochs=502)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in details
        assert client.get(queued.id).state == common_pb2.QUEUED
        assert client.cancel(queued.id).state == common_pb2.CANCELLED
        assert client.cancel(running.id).state == common_pb2.CANCELLED
        again = client.submit(tiny_training(epochs=500))  # room again
        assert client.cancel(again.id).state == common_pb2.CANCELLED


def test_bad_requests_get_the_status_that_names_the_problem(serve, sigdl_env):
    address = serve(("training", "compression"))
    with TrainingClient(address, token=TOKEN) as client:
        for field, change in [("model", {"model": "resnet-9000"}), ("epochs", {"epochs": -1}),
                              ("config_json", {"config_json": "[1, 2]"}),
                              ("dataset", {"dataset": ""})]:  # fmt: skip
            request = tiny_training()
            for key, value in change.items():
                setattr(request, key, value)
            code, details = code_of(lambda r=request: client.submit(r))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details, details
        assert code_of(lambda: client.get("no-such-job"))[0] == grpc.StatusCode.NOT_FOUND
        assert code_of(lambda: client.get(""))[0] == grpc.StatusCode.INVALID_ARGUMENT

    missing = store.as_uri(sigdl_env / "runs" / "nothing-here")
    broken = sigdl_env / "runs" / "broken"
    broken.mkdir(parents=True)
    (broken / "model.json").write_text('{"model": "lenet-300-100"}')
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with CompressionClient(address, token=TOKEN) as client:
        request = compression_pb2.CompressRequest(
            checkpoint=common_pb2.ArtifactRef(uri=missing), recipe="deep-compression"
        )
        code, details = code_of(lambda: client.submit(request))
        assert code == grpc.StatusCode.NOT_FOUND and "nothing-here" in details
        request.checkpoint.uri = store.as_uri(broken)
        request.recipe = "no-such-recipe"
        code, details = code_of(lambda: client.submit(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "recipe" in details
        request.recipe = "deep-compression"
        failed = client.wait(client.submit(request).id)  # fails inside the job
        assert failed.state == common_pb2.FAILED and not failed.retryable
        assert failed.error, "a failed job says why"
    with TrainingClient(address, token=TOKEN) as client:  # the service is still up
        assert client.wait(client.submit(tiny_training()).id).state == common_pb2.SUCCEEDED


def test_cli_remote_prints_what_in_process_prints(serve, sigdl_env, tmp_path, monkeypatch, capsys):
    from sigdl.cli import main

    address = serve(("training", "retest"))
    monkeypatch.setenv("SIGDL_TOKEN", TOKEN)  # what the CLI's client sends
    outputs = {}
    for mode, extra in (("local", []), ("remote", ["--remote", address])):
        out = tmp_path / mode
        train = ["train", "--model", "lenet-300-100", "--dataset", "digits", "--epochs", "1"]
        assert main([*train, "--out", str(out / "train"), *extra]) == 0
        retest = ["retest", str(out / "train"), "--target", "jetson-tx2", "--dataset", "digits"]
        assert main([*retest, "--out", str(out / "retest"), *extra]) == 0
        printed = capsys.readouterr().out.replace(str(out), "OUT")
        outputs[mode] = re.sub(r"\d+\.\d s\b", "N s", printed)  # training wall time
        files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        assert {"train/model.onnx", "train/report.json", "retest/report.json"} <= files
    assert outputs["remote"] == outputs["local"]
    assert (
        main(
            [
                "train",
                "--model",
                "lenet-300-100",
                "--dataset",
                "digits",
                "--out",
                str(tmp_path / "x"),
                "--remote",
                address,
                "--data-dir",
                "/data",
            ]
        )
        == 2
    )


# --- security ----------------------------------------------------------------------------------
def test_tokens_traversal_and_message_size(serve, sigdl_env, tmp_path):
    address = serve(("training", "compression"))
    for token in ("", "wrong-token"):
        with TrainingClient(address, token=token) as client:
            code, details = code_of(lambda c=client: c.get("any"))
            assert code == grpc.StatusCode.UNAUTHENTICATED, details
            code, _ = code_of(lambda c=client: list(c.watch("any")))
            assert code == grpc.StatusCode.UNAUTHENTICATED
    outside = tmp_path / "outside"
    outside.mkdir()
    (sigdl_env / "link").symlink_to(outside)  # a symlink inside the root leading out
    attempts = [
        "file:///etc/passwd",
        store.as_uri(sigdl_env) + "/../../../../etc",
        store.as_uri(sigdl_env) + "/runs/%2e%2e/%2e%2e/etc",
        store.as_uri(sigdl_env / "link"),
        store.as_uri(outside),
        "s3://someone-elses-bucket/run",
    ]
    with CompressionClient(address, token=TOKEN) as client:
        for uri in attempts:
            request = compression_pb2.CompressRequest(
                checkpoint=common_pb2.ArtifactRef(uri=uri), recipe="deep-compression"
            )
            code, details = code_of(lambda r=request: client.submit(r))
            assert code == grpc.StatusCode.PERMISSION_DENIED, (uri, details)
            assert "checkpoint.uri" in details
        request = compression_pb2.CompressRequest(
            checkpoint=common_pb2.ArtifactRef(uri="relative/path"), recipe="deep-compression"
        )
        assert code_of(lambda: client.submit(request))[0] == grpc.StatusCode.INVALID_ARGUMENT
    with TrainingClient(address, token=TOKEN) as client:
        request = tiny_training()
        request.out_uri = "file:///tmp/elsewhere"
        assert code_of(lambda: client.submit(request))[0] == grpc.StatusCode.PERMISSION_DENIED
    # a client that would send 5 MiB: the server's 4 MiB limit refuses it
    options = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(address, options=options) as channel:
        request = tiny_training()
        request.config_json = json.dumps({"pad": "x" * (5 << 20)})
        submit = training_pb2_grpc.TrainingServiceStub(channel).Submit
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        code, details = code_of(lambda: submit(request, metadata=metadata, timeout=30))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(name, key, issuer_name, issuer_key, *, ca=False, san=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(stem, cert, key):
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))  # fmt: skip

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sigdl test CA")])
    ca = issue("sigdl test CA", ca_key, ca_name, ca_key, ca=True)
    write("ca", ca, ca_key)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for stem in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        write(stem, issue(f"sigdl {stem}", key, ca_name, ca_key, san=san), key)
    return {stem: folder / f"{stem}.pem" for stem in ("ca", "server", "client")}


def test_tls_and_mutual_tls(serve, tmp_path):
    pem = make_certificates(tmp_path)
    key = {name: path.with_suffix(".key") for name, path in pem.items()}
    server_tls = TlsFiles(cert=pem["server"], key=key["server"])
    address = serve(tls=server_tls)
    with TrainingClient(address, token=TOKEN, tls=TlsFiles(ca=pem["ca"])) as client:
        assert code_of(lambda: client.get("none"))[0] == grpc.StatusCode.NOT_FOUND  # got in
    with TrainingClient(address, token=TOKEN, tls=TlsFiles()) as client:  # plaintext
        assert code_of(lambda: client.get("none"))[0] == grpc.StatusCode.UNAVAILABLE

    mutual = TlsFiles(cert=pem["server"], key=key["server"], ca=pem["ca"])
    address = serve(tls=mutual, home=tmp_path / "second-home")  # one server per job store
    with TrainingClient(address, token=TOKEN, tls=TlsFiles(ca=pem["ca"])) as client:
        assert code_of(lambda: client.get("none"))[0] == grpc.StatusCode.UNAVAILABLE  # no cert
    client_tls = TlsFiles(cert=pem["client"], key=key["client"], ca=pem["ca"])
    with TrainingClient(address, token=TOKEN, tls=client_tls) as client:
        assert code_of(lambda: client.get("none"))[0] == grpc.StatusCode.NOT_FOUND


# --- health and reflection ---------------------------------------------------------------------
def test_a_generic_client_sees_the_four_services_serving(serve):
    address = serve(("training", "compression", "retest", "deploy"))
    channel = grpc.insecure_channel(address)
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(reflection.ServerReflectionInfo(iter([request]), metadata=metadata))
    listed = {s.name for s in answer.list_services_response.service}
    assert set(FOUR) | {"grpc.health.v1.Health"} <= listed
    health = health_pb2_grpc.HealthStub(channel)  # no token: probes cannot send one
    for name in ["", *FOUR]:
        status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
    channel.close()


def test_one_server_per_job_store(serve):
    serve()
    second = StageServer(["training"], ServerConfig(port=0))
    with pytest.raises(InputError, match="in use by another running training service"):
        second.start()
    second.grpc_server.stop(grace=0)


def test_not_serving_until_the_store_answers(sigdl_env, monkeypatch):
    monkeypatch.setenv("SIGDL_S3_ENDPOINT", "127.0.0.1:9")  # nothing listens on discard
    roots = [store.as_uri(sigdl_env), "s3://sigdl-artifacts"]
    server = StageServer(["training"], ServerConfig(port=0, roots=roots))
    port = server.start()
    try:
        assert not server.wait_ready(3)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service=FOUR[0])).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.stop(grace_s=0)


def test_outputs_to_s3(serve, s3_server, monkeypatch, sigdl_env):
    monkeypatch.setenv("SIGDL_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("SIGDL_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("SIGDL_S3_SECRET_KEY", s3_server.secret_key)
    store.S3Backend().client.make_bucket("sigdl-jobs")
    monkeypatch.setenv("SIGDL_ARTIFACT_ROOTS", f"{store.as_uri(sigdl_env)},s3://sigdl-jobs")
    address = serve()
    with TrainingClient(address, token=TOKEN) as client:
        request = tiny_training()
        request.out_uri = "s3://sigdl-jobs/runs/one"
        done = client.wait(client.submit(request).id)
        assert done.state == common_pb2.SUCCEEDED, done.error
    report = json.loads(store.get_bytes("s3://sigdl-jobs/runs/one/report.json"))
    assert report["model"] == "lenet-300-100"
    assert {o.uri for o in done.outputs} == set(store.list_uris("s3://sigdl-jobs/runs/one"))


# --- a real `sigdl serve` killed and restarted -------------------------------------------------
def start_cli_server(home: Path, log: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """`python -m sigdl.cli serve training --port 0`; the port comes from its first line."""
    command = [sys.executable, "-m", "sigdl.cli", "serve", "training", "--port", "0"]
    full_env = {**os.environ, "SIGDL_HOME": str(home), "SIGDL_TOKEN": TOKEN, **env}
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as sink:
        process = subprocess.Popen(command, env=full_env, stderr=sink, stdout=sink)

    def bound() -> str | None:
        assert process.poll() is None, log.read_text()
        found = re.search(r" on 127\.0\.0\.1:(\d+) ", log.read_text()[offset:])
        return f"127.0.0.1:{found.group(1)}" if found else None

    return process, wait_for(bound, 60, "sigdl serve to listen")


def test_killed_and_restarted_service_fails_the_job_as_retryable(sigdl_env, tmp_path):
    log = tmp_path / "serve.log"
    process, address = start_cli_server(sigdl_env, log)
    with TrainingClient(address, token=TOKEN) as client:
        finished = client.wait(client.submit(tiny_training()).id)
        assert finished.state == common_pb2.SUCCEEDED, finished.error
        job = client.submit(tiny_training(epochs=500))
        first_progress(client, job.id)
        pid = client.get(job.id).worker_pid
    process.send_signal(signal.SIGKILL)  # no chance to clean up
    process.wait(10)
    assert wait_for(lambda: process_gone(pid), 10, "the orphaned worker to exit")

    process, address = start_cli_server(sigdl_env, log, SIGDL_SHUTDOWN_GRACE_S="0.5")
    with TrainingClient(address, token=TOKEN) as client:
        after = client.get(job.id)
        assert after.state == common_pb2.FAILED and after.retryable, after
        assert "restart" in after.error
        assert client.get(finished.id).state == common_pb2.SUCCEEDED  # finished jobs stay
        second = client.submit(tiny_training(epochs=500))
        first_progress(client, second.id)
    process.send_signal(signal.SIGTERM)  # graceful: the job gets 0.5 s, then is failed
    assert process.wait(30) == 0, log.read_text()
    assert "stopped" in log.read_text()
    # what the next server will answer is in the job store the stopped one left
    after = jobs.JobStore(sigdl_env / "jobs" / "training.db").get(second.id)
    assert after.state == jobs.JobState.FAILED and after.retryable
    assert "shut down" in after.error
