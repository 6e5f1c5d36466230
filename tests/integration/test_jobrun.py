"""A job's work outside its service: `python -m sigdl.core.jobrun`, as a Kubernetes Job's container
runs it (sigdl/core/kubejob.py) and as SIGDL_JOB_BACKEND=process runs it on the service's machine.

- the entry point as a real process against a real S3 server (SeaweedFS, the `s3_server`
  fixture), compared with what the service's own worker process gives;
- the process backend (jobrun.WorkRunner + ProcessLauncher, the lifecycle the kubernetes
  backend shares) in a pool: progress, result, Cancel, and a pool that stops leaving the work
  running for the next one to adopt;
- real `sigdl serve compression` processes on loopback ports with SIGDL_JOB_BACKEND=process: a
  service killed (SIGKILL) and replaced by one that adopts its running jobs (SQLite store), and
  two replicas on one real PostgreSQL (the `postgres_uri` fixture, tests/conftest.py: Debian's
  PostgreSQL 15 started with `initdb` and `pg_ctl start` on 127.0.0.1 as the `postgres` user)
  sharing process jobs, the survivor adopting the jobs of a replica that was killed.

    SIGDL_DATA=../shared/datasets .venv/bin/python -m pytest -q tests/integration/test_jobrun.py

The Kubernetes side (creating and following the Job) is tested on a live cluster only:
tests/services/test_kubejob.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_jobs_postgres import _wait_serving, serve_stage

from services.compression.client import CompressionClient
from services.compression.server import run_job as compress_job
from services.protos.sigdl.v1 import common_pb2, compression_pb2
from sigdl.core import jobrun, jobs, store
from sigdl.core.events import ProgressEvent

PARAMS = {"recipe": "int8", "recipe_is_uri": False, "dataset": "digits", "lineage": None}
TIMING = {"wall_seconds", "seconds"}  # report keys that no two runs share
TIMED = {"report.json", "report.md"}  # outputs that hold those (report.md: the ladder's seconds)
SCRATCH = re.compile(r"^/.*/sigdl-job-[^/]+")  # a job's private temporary folder (jobs._run_job)


@pytest.fixture
def bucket(s3_server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the test S3 server, whose identity is in the settings (and so in the
    environment of every process a test starts)."""
    monkeypatch.setenv("SIGDL_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("SIGDL_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("SIGDL_S3_SECRET_KEY", s3_server.secret_key)
    monkeypatch.setenv("SIGDL_S3_SECURE", "false")
    name = f"t-{uuid.uuid4().hex[:12]}"
    store.S3Config.from_settings().make_client().make_bucket(name)
    return name


def jobrun_process(fn_ref: str, job_uri: str, **env: str) -> subprocess.Popen:
    """What a Job's container runs (kubejob.job_command), as a process of this machine."""
    command = [sys.executable, "-m", "sigdl.core.jobrun", "--fn", fn_ref, job_uri]
    return subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def run_local_worker(tmp_path: Path, params: dict, out_uri: str) -> tuple[jobs.JobRecord, list]:
    """The job as the service runs it without a cluster: a worker process of its pool."""
    db = jobs.JobStore(tmp_path / "jobs.db")
    pool = jobs.WorkerPool(db, "compression", compress_job, workers=1, queue_size=1)
    pool.start()
    try:
        job = pool.submit(params, out_uri, None)
        events = list(db.events(job.id))  # follows the job to its end
    finally:
        pool.shutdown(grace_s=5)
    return db.get(job.id), events


def comparable(report: object) -> object:
    """A report without its wall-clock figures (and the digests of the reports that hold them)
    and with its job's scratch folder (where the inputs were downloaded) named alike: no two
    runs share those."""
    if isinstance(report, dict):
        return {k: comparable(v) for k, v in report.items() if k not in TIMING | TIMED}
    if isinstance(report, list):
        return [comparable(v) for v in report]
    if isinstance(report, str):
        return SCRATCH.sub("<scratch>", report)
    return report


def differences(a: object, b: object, path: str = "report") -> list[str]:
    """Where two reports differ, and how."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b))
                for d in differences(a.get(k), b.get(k), f"{path}.{k}")]  # fmt: skip
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def by_name(outputs: list[dict]) -> dict[str, str]:
    return {o["uri"].rsplit("/out/", 1)[1]: o["sha256"] for o in outputs}


def test_the_entry_point_gives_the_local_workers_result(bucket, seeded_runs, tmp_path):
    checkpoint = f"s3://{bucket}/runs/a"
    store.put_dir(checkpoint, seeded_runs["a"])
    params = {**PARAMS, "checkpoint": checkpoint}
    local, local_events = run_local_worker(tmp_path, params, f"s3://{bucket}/local/out")
    assert local.state == jobs.JobState.SUCCEEDED, local.error

    job_uri = f"s3://{bucket}/jobs/compression/{uuid.uuid4().hex}"
    request = jobrun.JobRequest("pod-job", "compression", params, f"s3://{bucket}/pod/out")
    jobrun.write_request(job_uri, request)
    process = jobrun_process(jobrun.function_ref(compress_job), job_uri)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr

    outcome = jobrun.read_result(job_uri)
    assert outcome is not None and "result" in outcome, outcome
    result = outcome["result"]
    # the same files under the pod's out_uri, the models byte for byte (the reports differ
    # in their timings only: report.json is compared below without them)
    pod_files, local_files = by_name(result["outputs"]), by_name(local.outputs)
    assert set(pod_files) == set(local_files) and {"model.sdc", "model.onnx"} <= set(pod_files)
    for name in set(pod_files) - TIMED:
        assert pod_files[name] == local_files[name], name
    for output in result["outputs"]:
        assert output["uri"].startswith(f"s3://{bucket}/pod/out/")
        assert store.sha256(output["uri"]) == output["sha256"]
    moved = jobs.relocate(result["report"], request.out_uri, f"s3://{bucket}/local/out")
    assert differences(comparable(moved), comparable(local.report)) == []
    # the progress the worker sent its pool is what the pod stored, event for event
    stored = jobrun.EventReader(job_uri).new_events()
    sent = [e.data for e in local_events if e.kind in ("progress", "log")]
    assert [e.kind for e in stored] == [d["kind"] for d in sent] and stored


def test_a_failing_job_stores_the_local_workers_error_and_exits_0(bucket):
    params = {**PARAMS, "checkpoint": f"s3://{bucket}/runs/missing"}
    expected = jobs.run_outcome(compress_job, "x", params, f"s3://{bucket}/local/out", print)
    assert "error" in expected and "runs/missing" in expected["error"]

    job_uri = f"s3://{bucket}/jobs/compression/failing"
    jobrun.write_request(
        job_uri, jobrun.JobRequest("x", "compression", params, f"s3://{bucket}/pod/out")
    )
    process = jobrun_process(jobrun.function_ref(compress_job), job_uri)
    _, stderr = process.communicate(timeout=300)
    # stored: the Job completes and the service records the job's own error, not a retry
    assert process.returncode == 0, stderr
    assert jobrun.read_result(job_uri) == expected


@pytest.mark.parametrize(
    ("fn_ref", "stored", "code", "says"),
    [
        ("services.compression.server:run_job", False, jobrun.EXIT_NO_RETRY, "request.json"),
        ("services.compression.server:no_such", True, jobrun.EXIT_NO_RETRY, "no_such"),
        ("services.compression.server", True, jobrun.EXIT_NO_RETRY, "MODULE:FUNCTION"),
    ],
)
def test_what_a_retry_cannot_fix_exits_no_retry(bucket, fn_ref, stored, code, says):
    job_uri = f"s3://{bucket}/jobs/compression/{uuid.uuid4().hex}"
    if stored:
        jobrun.write_request(job_uri, jobrun.JobRequest("x", "compression", {}, "s3://b/o"))
    process = jobrun_process(fn_ref, job_uri)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == code and says in stderr
    assert jobrun.read_result(job_uri) is None


def test_an_unreachable_store_exits_retry(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = jobrun_process(
        "services.compression.server:run_job", "s3://sigdl/jobs/compression/x",
        SIGDL_S3_ENDPOINT=f"127.0.0.1:{port}", SIGDL_S3_ACCESS_KEY="k", SIGDL_S3_SECRET_KEY="s",
    )  # fmt: skip
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == jobrun.EXIT_RETRY, stderr


@pytest.mark.parametrize("scheme", ["file", "s3"])
def test_the_event_log_stores_chunks_in_order_as_they_come(scheme, tmp_path, request):
    if scheme == "s3":
        job_uri = f"s3://{request.getfixturevalue('bucket')}/jobs/x"
    else:
        job_uri = store.as_uri(tmp_path / "jobs" / "x")
    reader = jobrun.EventReader(job_uri)
    with jobrun.EventLog(job_uri, flush_s=0.05) as log:
        log.append(ProgressEvent.of("epoch", 1, 3, loss=0.5))
        deadline = time.monotonic() + 30
        seen: list[ProgressEvent] = []
        while not seen and time.monotonic() < deadline:  # stored before the log closes
            seen = reader.new_events()
            time.sleep(0.02)
        assert [(e.kind, e.done, e["loss"]) for e in seen] == [("epoch", 1, 0.5)]
        for epoch in (2, 3):
            log.append(ProgressEvent.of("epoch", epoch, 3))
    assert [e.done for e in reader.new_events()] == [2, 3]  # each event once
    assert reader.new_events() == []
    # a retried pod numbers its chunks after the first attempt's
    with jobrun.EventLog(job_uri, flush_s=10) as again:
        again.append(ProgressEvent("log", message="attempt 2"))
    assert [e.message for e in reader.new_events()] == ["attempt 2"]
    assert len(store.list_uris(f"{job_uri}/events")) >= 3


# --- the process backend (SIGDL_JOB_BACKEND=process) in a pool -----------------------------------
def process_pool(tmp_path: Path, db: jobs.JobStore | None = None) -> jobs.WorkerPool:
    """A compression pool whose jobs run as `python -m sigdl.core.jobrun` processes, with
    SQLite records in `tmp_path` (or `db`)."""
    backend = jobrun.WorkRunner(jobrun.ProcessLauncher(store.as_uri(tmp_path / "jobs"), poll_s=0.1))
    db = db or jobs.JobStore(tmp_path / "compression.db")
    pool = jobs.WorkerPool(db, "compression", compress_job, workers=1, queue_size=2,
                           backend=backend)  # fmt: skip
    pool.start()
    return pool


def wait_running(db: jobs.JobStore, job_id: str, timeout_s: float = 120) -> jobs.JobRecord:
    """The job once it runs and its work's handle is stored."""
    deadline = time.monotonic() + timeout_s
    while not (job := db.get(job_id)).handle:
        assert time.monotonic() < deadline and not job.state.terminal, job
        time.sleep(0.05)
    return job


def alive(pid: int) -> bool:
    return jobrun._started(pid) is not None


@pytest.fixture(autouse=True)
def fast_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGDL_JOB_EVENTS_FLUSH_S", "0.1")  # the work's processes inherit it


def test_a_process_job_records_its_progress_and_result(tmp_path, seeded_runs):
    pool = process_pool(tmp_path)
    try:
        params = {**PARAMS, "checkpoint": store.as_uri(seeded_runs["a"])}
        job = pool.submit(params, None, "req-1")
        assert job.out_uri == store.as_uri(tmp_path / "jobs" / "compression" / job.id / "out")
        events = list(pool.store.events(job.id))
        done = pool.store.get(job.id)
    finally:
        pool.shutdown(grace_s=5)
    assert done.state == jobs.JobState.SUCCEEDED, done.error
    assert {"model.sdc", "model.onnx"} <= set(by_name(done.outputs))
    # the work ran in a process of its own, which the job's record names
    handle = jobrun.WorkHandle.from_json(done.handle)
    assert (handle.backend, handle.pid) == (
        "process",
        done.worker_pid,
    ) and handle.pid != os.getpid()
    assert not alive(handle.pid) and "succeeded" in Path(handle.log).read_text()
    assert handle.events_read >= 0  # an adopter would resume after the chunks forwarded
    states = [e.message for e in events if e.kind == "state"]
    assert states == ["queued", "running as a process job", "succeeded"]
    assert f"process {handle.pid} on " in events[2].message  # started, at its folder
    progress = [e for e in events if e.kind == "progress"]
    assert progress and all(e.state == jobs.JobState.RUNNING for e in progress)
    assert pool.submit(params, None, "req-1").id == job.id  # idempotent as ever


def test_cancel_stops_a_process_job(tmp_path, seeded_runs):
    pool = process_pool(tmp_path)
    try:
        params = {**PARAMS, "checkpoint": store.as_uri(seeded_runs["a"])}
        job = pool.submit(params, None, None)
        pid = wait_running(pool.store, job.id).worker_pid
        cancelled = pool.cancel(job.id)
    finally:
        pool.shutdown(grace_s=5)
    assert cancelled.state == jobs.JobState.CANCELLED
    assert [e.message for e in pool.store.events(job.id)][-1] == "cancelled; process job stopped"
    assert jobrun.read_result(store.as_uri(tmp_path / "jobs" / "compression" / job.id)) is None
    assert not alive(pid)


def test_a_pool_that_stops_leaves_the_work_running_and_the_next_one_adopts_it(
    tmp_path, seeded_runs
):
    """A service stopped with SIGTERM (a rolling update): its process job runs on, RUNNING
    with its handle, and the next service on the store follows it to its end."""
    first = process_pool(tmp_path)
    params = {**PARAMS, "checkpoint": store.as_uri(seeded_runs["a"])}
    job = first.submit(params, None, None)
    pid = wait_running(first.store, job.id).worker_pid
    os.killpg(pid, signal.SIGSTOP)  # it must still run when the next pool starts
    try:
        first.shutdown(grace_s=5)
        left = first.store.get(job.id)
        first.store.close()
        assert left.state == jobs.JobState.RUNNING and alive(pid)
        second = process_pool(tmp_path)
        os.killpg(pid, signal.SIGCONT)
        try:
            events = list(second.store.events(job.id))
            done = second.store.get(job.id)
        finally:
            second.shutdown(grace_s=5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    assert done.state == jobs.JobState.SUCCEEDED, done.error
    messages = [e.message for e in events]
    assert "the service stopped following the job; its process job runs on" in messages
    adopted = messages.index("adopted by this compression service (the one that ran it stopped)")
    assert f"process {pid} on " in messages[adopted + 1]  # followed again
    # each progress event once: the adopter resumed after the chunks already forwarded
    lines = [e.data.get("message") or json.dumps(e.data) for e in events if e.kind == "progress"]
    assert lines and len(lines) == len(set(lines))


# --- real services: `sigdl serve compression` processes with SIGDL_JOB_BACKEND=process ---------
# Each service is its own process on a loopback port (as tests/integration/test_jobs_postgres.py
# starts them), its jobs' work `python -m sigdl.core.jobrun` processes in sessions of their
# own. The shared job store is SQLite in SIGDL_HOME (one service, restarted) or the session's
# real PostgreSQL (the `postgres_uri` fixture, tests/conftest.py: Debian's PostgreSQL 15,
# `initdb` and `pg_ctl start` on 127.0.0.1 as the `postgres` user). To be sure that the work
# still runs when the next service starts, a test pauses its process (SIGSTOP) before it kills
# the service and resumes it (SIGCONT) once the job was adopted.
def serve_compression(home: Path, log: Path, **env: str) -> tuple[subprocess.Popen, str]:
    process, address = serve_stage(
        "compression", home, log, SIGDL_JOB_BACKEND="process", SIGDL_JOB_POLL_S="0.2",
        SIGDL_WORKERS="2", **env,
    )  # fmt: skip
    _wait_serving(address, process, log)
    return process, address


def compress_request(checkpoint: Path, out: Path) -> compression_pb2.CompressRequest:
    return compression_pb2.CompressRequest(
        checkpoint=common_pb2.ArtifactRef(uri=checkpoint.as_uri()), recipe="int8",
        dataset="digits", out_uri=out.resolve().as_uri(),
    )  # fmt: skip


def running_pid(client: CompressionClient, job_id: str) -> int:
    """The pid of the job's work, once the service started it."""
    deadline = time.monotonic() + 120
    while not (job := client.get(job_id)).worker_pid:
        assert time.monotonic() < deadline, job
        assert job.state in (common_pb2.QUEUED, common_pb2.RUNNING), job
        time.sleep(0.1)
    return job.worker_pid


def watch_resuming(client: CompressionClient, job_id: str, pid: int) -> list[str]:
    """The job's event messages until it ends, resuming its paused work once adopted."""
    messages = []
    for event in client.watch(job_id):
        messages.append(event.message)
        if event.message.startswith("adopted by"):
            os.killpg(pid, signal.SIGCONT)
    return messages


def kill(*pids: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def home(tmp_path: Path, seeded_runs) -> Path:
    """The services' SIGDL_HOME (their artifact root), holding a trained checkpoint."""
    shutil.copytree(seeded_runs["a"], tmp_path / "home" / "runs" / "a")
    return tmp_path / "home"


@pytest.mark.timeout(600)
def test_a_killed_service_is_replaced_by_one_that_adopts_its_running_jobs(home, tmp_path):
    """SIGKILL, no goodbye: of its two running jobs, the one whose process still runs is
    followed to its end by the next service on the store; the one whose process died with it
    fails, saying so."""
    checkpoint, pids = home / "runs" / "a", []
    first, address = serve_compression(home, tmp_path / "first.log")
    try:
        with CompressionClient(address) as client:
            paused = client.submit(compress_request(checkpoint, home / "out" / "paused"))
            lost = client.submit(compress_request(checkpoint, home / "out" / "lost"))
            pids += [running_pid(client, paused.id), running_pid(client, lost.id)]
        assert first.pid not in pids and alive(pids[0])
        os.killpg(pids[0], signal.SIGSTOP)
        kill(first.pid, pids[1])  # the service, and the work of one of its jobs
        first.wait(timeout=30)
        second, address = serve_compression(home, tmp_path / "second.log")
        pids.append(second.pid)
        with CompressionClient(address) as client:
            messages = watch_resuming(client, paused.id, pids[0])
            done, gone = client.get(paused.id), client.get(lost.id)
    finally:
        kill(*pids)
    assert done.state == common_pb2.SUCCEEDED, done.error
    assert done.worker_pid == pids[0] and (home / "out" / "paused" / "model.sdc").is_file()
    assert "adopted by this compression service (the one that ran it stopped)" in messages
    assert gone.state == common_pb2.FAILED and gone.retryable
    assert f"process {pids[1]} on " in gone.error and " is gone " in gone.error, gone.error


@pytest.mark.timeout(600)
def test_two_replicas_on_one_postgresql_share_process_jobs(postgres_uri, home, tmp_path):
    """A job submitted to one replica runs as a process of its own and is watched to its end
    through the other; when the replica that runs a job is killed, the survivor adopts the job
    once the dead one's heartbeat is stale, and follows it to its end."""
    checkpoint, pids = home / "runs" / "a", []
    shared = {"SIGDL_JOB_STORE": postgres_uri, "SIGDL_REPLICA_STALE_S": "4"}
    a, address_a = serve_compression(home, tmp_path / "a.log", SIGDL_REPLICA_ID="a", **shared)
    pids.append(a.pid)
    b, address_b = serve_compression(home, tmp_path / "b.log", SIGDL_REPLICA_ID="b", **shared)
    pids.append(b.pid)
    try:
        with CompressionClient(address_a) as first, CompressionClient(address_b) as second:
            job = first.submit(compress_request(checkpoint, home / "out" / "shared"))
            work = running_pid(second, job.id)
            assert work not in (a.pid, b.pid)
            shared_done = second.wait(job.id)
            orphan = first.submit(compress_request(checkpoint, home / "out" / "orphan"))
            pids.append(running_pid(first, orphan.id))
        os.killpg(pids[-1], signal.SIGSTOP)
        kill(a.pid)
        a.wait(timeout=30)
        with CompressionClient(address_b) as second:
            messages = watch_resuming(second, orphan.id, pids[-1])
            adopted = second.get(orphan.id)
    finally:
        kill(*pids)
    assert shared_done.state == common_pb2.SUCCEEDED, shared_done.error
    assert (home / "out" / "shared" / "model.sdc").is_file()
    assert adopted.state == common_pb2.SUCCEEDED, adopted.error
    assert "adopted by this compression service (the one that ran it stopped)" in messages
    assert (home / "out" / "orphan" / "model.sdc").is_file()
