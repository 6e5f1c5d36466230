"""Two replicas of the training service on one job store: a real PostgreSQL (the session's
`postgres_uri` fixture, tests/conftest.py, starts Debian's PostgreSQL 15 on 127.0.0.1) and two
`sigdl serve training` processes on loopback ports, both with SIGDL_JOB_STORE pointing at it,
as two pods behind one Kubernetes Service would be.

- a job submitted to one replica is watched to completion, and read, through the other;
- a job running on one replica is cancelled through the other, and its worker really stops;
- when a replica is killed (SIGKILL: no goodbye), the other fails its running job as
  retryable once the replica's heartbeat is older than SIGDL_REPLICA_STALE_S.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from services.protos.sigdl.v1 import common_pb2
from services.training.client import TrainingClient, train_request
from sigdl.core import settings
from sigdl.core.training import TrainConfig

STALE_S = 4.0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_stage(stage: str, home: Path, log: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """`sigdl serve STAGE` as a process of its own session on a free loopback port, with
    SIGDL_HOME `home`, MLflow off and the settings `env`; its output goes to `log`."""
    port = _free_port()
    environment = settings.environment_with(
        SIGDL_HOME=str(home), SIGDL_MLFLOW_TRACKING_URI="off", **env
    )
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sigdl.cli", "serve", stage, "--port", str(port)],
            env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return process, f"127.0.0.1:{port}"


def _serve(home: Path, store_uri: str, name: str, log: Path) -> tuple[subprocess.Popen, str]:
    return serve_stage(
        "training", home, log, SIGDL_JOB_STORE=store_uri, SIGDL_REPLICA_ID=name,
        SIGDL_REPLICA_STALE_S=str(STALE_S), SIGDL_WORKERS="1",
    )  # fmt: skip


def _wait_serving(address: str, process: subprocess.Popen, log: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 120
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and process.poll() is None:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    pytest.fail(f"replica at {address} never became SERVING:\n{log.read_text()[-3000:]}")


@pytest.fixture
def replicas(postgres_uri, tmp_path):
    """Two training replicas sharing one PostgreSQL job store and one artifact folder."""
    home = tmp_path / "home"  # the artifact root both see (a shared volume or S3 in a cluster)
    started = []
    for name in ("replica-a", "replica-b"):
        started.append((*_serve(home, postgres_uri, name, tmp_path / f"{name}.log"), name))
    for process, address, name in started:
        _wait_serving(address, process, tmp_path / f"{name}.log")
    yield [(process, address) for process, address, _ in started]
    for process, _, _ in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def _request(epochs: int, out: Path):
    request = train_request(TrainConfig("lenet-300-100", "digits", epochs=epochs))
    request.out_uri = out.resolve().as_uri()
    return request


def test_a_job_submitted_to_one_replica_is_watched_through_the_other(replicas, tmp_path):
    (_, a), (_, b) = replicas
    out = tmp_path / "home" / "runs" / "t1"
    with TrainingClient(a) as first, TrainingClient(b) as second:
        request = _request(1, out)
        request.request_id = "train-across-replicas"
        job = first.submit(request)
        assert second.submit(request).id == job.id  # idempotent across replicas too
        events = []
        done = second.wait(job.id, on_event=events.append)  # Watch through the other replica
        assert done.state == common_pb2.SUCCEEDED, done.error
        assert [e.index for e in events] == list(range(done.event_count))
        assert any(e.kind == "progress" for e in events)
        again = first.get(job.id)
        assert again.state == common_pb2.SUCCEEDED and again.report_json == done.report_json
    assert (out / "model.safetensors").is_file()


def test_a_job_running_on_one_replica_is_cancelled_through_the_other(replicas, tmp_path):
    (_, a), (_, b) = replicas
    with TrainingClient(a) as first, TrainingClient(b) as second:
        job = first.submit(_request(5000, tmp_path / "home" / "runs" / "long"))
        deadline = time.monotonic() + 120
        while first.get(job.id).state != common_pb2.RUNNING and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = first.get(job.id).worker_pid
        assert pid > 0
        second.cancel(job.id)
        done = second.wait(job.id)
    assert done.state == common_pb2.CANCELLED
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid), "the worker on the owning replica was not stopped"


def test_the_jobs_of_a_killed_replica_fail_retryable_on_the_survivor(replicas, tmp_path):
    (process_a, a), (_, b) = replicas
    with TrainingClient(a) as first:
        job = first.submit(_request(5000, tmp_path / "home" / "runs" / "orphan"))
        deadline = time.monotonic() + 120
        while first.get(job.id).state != common_pb2.RUNNING and time.monotonic() < deadline:
            time.sleep(0.2)
    os.killpg(process_a.pid, signal.SIGKILL)  # the pod is gone: no shutdown, no heartbeat
    process_a.wait(timeout=30)
    with TrainingClient(b) as second:
        done = second.wait(job.id)
    assert done.state == common_pb2.FAILED and done.retryable
    assert "replica" in done.error


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_replicas_starting_together_all_open_the_store(postgres_uri):
    """Replicas of a new service create its schema at the same moment: every one opens the
    store (creating the schema outside the lock once made a concurrent starter fail)."""
    from concurrent.futures import ThreadPoolExecutor

    from sigdl.core.jobs_postgres import PostgresJobStore

    def open_one(index: int) -> str:
        store = PostgresJobStore(postgres_uri, "startrace", replica=f"r{index}")
        store.close()
        return store.replica

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sorted(pool.map(open_one, range(8))) == [f"r{i}" for i in range(8)]


def test_one_replica_adopts_the_running_work_of_a_dead_one(postgres_uri):
    """A job a dead replica left RUNNING with a backend's handle goes to one survivor's
    `adopt`, claimed in one UPDATE; the other finds it claimed; one without a handle fails."""
    from sigdl.core import jobs
    from sigdl.core.jobs_postgres import PostgresJobStore

    service = f"t{os.getpid()}{int(time.time() * 1000) % 100000}"  # a schema of its own
    dead = PostgresJobStore(postgres_uri, service, replica="dead")
    for job_id in ("elsewhere", "here"):
        dead.create(jobs.JobRecord(
            id=job_id, request_id=job_id, service=service, state=jobs.JobState.QUEUED,
            params={}, out_uri="file:///tmp/o", created_at=time.time(),
        ))  # fmt: skip
        dead.transition(job_id, jobs.JobState.RUNNING, "running")
    dead.set_handle("elsewhere", '{"backend": "process"}', 7)
    dead.close()  # it never beat: stale at once
    first, second = (PostgresJobStore(postgres_uri, service, replica=r) for r in ("x", "y"))
    adopted: list[str] = []
    try:
        assert first.recover_interrupted("gone", adopt=lambda j: adopted.append(j.id)) == ["here"]
        assert second.recover_interrupted("gone", adopt=lambda j: adopted.append(j.id)) == []
        assert not second._claim("elsewhere", "dead")  # first took it
        assert adopted == ["elsewhere"]
        assert second.get("elsewhere").state == jobs.JobState.RUNNING
        assert second.get("here").state == jobs.JobState.FAILED
    finally:
        first.close()
        second.close()
