"""A job's pod without the cluster: `python -m sigdl.core.jobrun` run as a real process against a
real S3 server (SeaweedFS, the `s3_server` fixture), exactly as a Kubernetes Job's container runs
it (sigdl/core/kubejob.py), compared with what the service's own worker process gives.

    SIGDL_DATA=../shared/datasets .venv/bin/python -m pytest -q tests/integration/test_jobrun.py

The Kubernetes side (creating and following the Job) is tested on a live cluster only:
tests/services/test_kubejob.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from services.compression.server import run_job as compress_job
from sigdl.core import jobrun, jobs, store
from sigdl.core.events import ProgressEvent

PARAMS = {"recipe": "int8", "recipe_is_uri": False, "dataset": "digits", "lineage": None}
TIMING = {"wall_seconds", "seconds"}  # report keys that no two runs share
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
    """A report without its wall-clock figures and with its job's scratch folder (where the
    inputs were downloaded) named alike: no two runs share those."""
    if isinstance(report, dict):
        return {k: comparable(v) for k, v in report.items() if k not in TIMING}
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
    # the same files under the pod's out_uri, the models byte for byte (the report differs
    # in its timings only, compared below)
    pod_files, local_files = by_name(result["outputs"]), by_name(local.outputs)
    assert set(pod_files) == set(local_files) and {"model.sdc", "model.onnx"} <= set(pod_files)
    for name in set(pod_files) - {"report.json"}:
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


# --- the pool's backend hook --------------------------------------------------------------------
class ProcessBackend:
    """The pool's JobBackend with the Job's container run as a process of this machine: the
    same request, entry point, event chunks and result as the pod of a Kubernetes Job
    (kubejob.KubeJobRunner); only who starts and stops the process differs (there, the Job
    controller and a delete of the Job)."""

    name = "process"

    def __init__(self, root: str) -> None:
        self.root = root

    def default_out(self, service: str, job_id: str) -> str:
        return f"{self.root}/{service}/{job_id}/out"

    def check_out(self, out_uri: str) -> None:
        pass  # this machine reaches every URI the pool does

    def abandon(self, service: str, job_ids: list[str]) -> None:
        pass  # a fresh pool in a test finds no job that a stopped one left

    def run(self, job: jobs.JobRecord, fn, emit, stop) -> dict:
        uri = f"{self.root}/{job.service}/{job.id}"
        jobrun.write_request(uri, jobrun.JobRequest(job.id, job.service, job.params, job.out_uri))
        process = jobrun_process(jobrun.function_ref(fn), uri, SIGDL_JOB_EVENTS_FLUSH_S="0.1")
        events = jobrun.EventReader(uri)
        try:
            while process.poll() is None:
                for event in events.new_events():
                    emit(event)
                if stop():
                    return {}
                time.sleep(0.05)
        finally:
            process.kill()
            process.communicate()
        for event in events.new_events():
            emit(event)
        return jobrun.read_result(uri) or {"error": f"exit {process.returncode}", "retryable": True}


def backend_pool(tmp_path: Path) -> jobs.WorkerPool:
    backend = ProcessBackend(store.as_uri(tmp_path / "jobs"))
    db = jobs.JobStore(tmp_path / "compression.db")
    pool = jobs.WorkerPool(db, "compression", compress_job, workers=1, queue_size=2,
                           backend=backend)  # fmt: skip
    pool.start()
    return pool


def test_a_pool_with_a_backend_records_the_jobs_progress_and_result(tmp_path, seeded_runs):
    pool = backend_pool(tmp_path)
    try:
        params = {**PARAMS, "checkpoint": store.as_uri(seeded_runs["a"])}
        job = pool.submit(params, None, "req-1")
        assert job.out_uri == store.as_uri(tmp_path / "jobs" / "compression" / job.id / "out")
        events = list(pool.store.events(job.id))
        done = pool.store.get(job.id)
    finally:
        pool.shutdown(grace_s=5)
    assert done.state == jobs.JobState.SUCCEEDED, done.error
    assert done.worker_pid == 0 and {"model.sdc", "model.onnx"} <= set(by_name(done.outputs))
    states = [e.message for e in events if e.kind == "state"]
    assert states == ["queued", "running as a process job", "succeeded"]
    progress = [e for e in events if e.kind == "progress"]
    assert progress and all(e.state == jobs.JobState.RUNNING for e in progress)
    assert pool.submit(params, None, "req-1").id == job.id  # idempotent as ever


def test_cancel_stops_a_job_a_backend_runs(tmp_path, seeded_runs):
    pool = backend_pool(tmp_path)
    try:
        params = {**PARAMS, "checkpoint": store.as_uri(seeded_runs["a"])}
        job = pool.submit(params, None, None)
        deadline = time.monotonic() + 60
        while pool.store.get(job.id).state == jobs.JobState.QUEUED:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        cancelled = pool.cancel(job.id)
    finally:
        pool.shutdown(grace_s=5)
    assert cancelled.state == jobs.JobState.CANCELLED
    assert [e.message for e in pool.store.events(job.id)][-1] == "cancelled; process job stopped"
    assert jobrun.read_result(store.as_uri(tmp_path / "jobs" / "compression" / job.id)) is None
