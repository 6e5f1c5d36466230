"""The job store (a real SQLite file) and report relocation.

The worker pool itself runs real jobs in tests/integration/test_services.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sigdl.core import jobs


def record(job_id: str, request_id: str, params: dict | None = None) -> jobs.JobRecord:
    return jobs.JobRecord(
        id=job_id, request_id=request_id, service="training", state=jobs.JobState.QUEUED,
        params=params or {"epochs": 1}, out_uri="file:///tmp/out", created_at=time.time(),
    )  # fmt: skip


def test_a_request_id_names_one_job(tmp_path: Path):
    db = jobs.JobStore(tmp_path / "jobs.db")
    first, created = db.create(record("a", "req-1"))
    assert created and first.state == jobs.JobState.QUEUED and first.event_count == 1
    again, created = db.create(record("b", "req-1"))
    assert not created and again.id == "a"
    with pytest.raises(jobs.RequestConflictError, match="req-1"):
        db.create(record("c", "req-1", {"epochs": 2}))
    with pytest.raises(jobs.JobNotFoundError):
        db.get("b")


def test_events_follow_a_job_to_its_end(tmp_path: Path):
    db = jobs.JobStore(tmp_path / "jobs.db")
    db.create(record("a", "req-1"))

    def run() -> None:
        time.sleep(0.2)
        db.transition("a", jobs.JobState.RUNNING, "running", worker_pid=123)
        db.add_event("a", "progress", "epoch 1", {"epoch": 1, "loss": 0.5})
        db.transition("a", jobs.JobState.SUCCEEDED, "done", report={"ok": True}, outputs=[])

    threading.Thread(target=run).start()
    events = list(db.events("a"))  # waits for the thread's events, ends with the job
    assert [e.index for e in events] == [0, 1, 2, 3]
    assert [e.state for e in events] == ["QUEUED", "RUNNING", "RUNNING", "SUCCEEDED"]
    assert events[2].data == {"epoch": 1, "loss": 0.5}
    assert [e.index for e in db.events("a", from_index=2)] == [2, 3]
    job = db.get("a")
    assert job.report == {"ok": True} and job.worker_pid == 123 and job.finished_at > 0


def test_a_restart_fails_unfinished_jobs_as_retryable(tmp_path: Path):
    db = jobs.JobStore(tmp_path / "jobs.db")
    for job_id in ("queued", "running", "done"):
        db.create(record(job_id, job_id))
    db.transition("running", jobs.JobState.RUNNING, "running")
    db.transition("done", jobs.JobState.SUCCEEDED, "done", report={}, outputs=[])
    db.close()
    reopened = jobs.JobStore(tmp_path / "jobs.db")  # what a restarted server sees
    assert sorted(reopened.recover_interrupted("restarted")) == ["queued", "running"]
    for job_id in ("queued", "running"):
        job = reopened.get(job_id)
        assert job.state == jobs.JobState.FAILED and job.retryable and job.error == "restarted"
    assert reopened.get("done").state == jobs.JobState.SUCCEEDED


def test_a_restart_hands_running_jobs_with_a_handle_to_adopt(tmp_path: Path):
    """Work a backend runs outside the service (a handle stored) is adopted, not failed; a
    RUNNING job with no handle (its work never started, or a worker process) still fails."""
    db = jobs.JobStore(tmp_path / "jobs.db")
    for job_id in ("elsewhere", "here", "queued"):
        db.create(record(job_id, job_id))
    for job_id in ("elsewhere", "here"):
        db.transition(job_id, jobs.JobState.RUNNING, "running")
    db.set_handle("elsewhere", '{"backend": "process"}', 4242)
    adopted: list[jobs.JobRecord] = []
    assert sorted(db.recover_interrupted("restarted", adopt=adopted.append)) == ["here", "queued"]
    assert [(j.id, j.handle, j.worker_pid) for j in adopted] == [
        ("elsewhere", '{"backend": "process"}', 4242)
    ]
    assert db.get("elsewhere").state == jobs.JobState.RUNNING


def test_a_store_from_before_handles_gets_the_column(tmp_path: Path):
    import sqlite3

    old_schema = jobs._SCHEMA.replace(", handle TEXT NOT NULL DEFAULT ''", "")
    assert "handle" not in old_schema
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        conn.executescript(old_schema)
        conn.execute(
            "INSERT INTO jobs VALUES ('a', 'r', 'training', 'SUCCEEDED', '{}', 'file:///o', '', 0,"
            " '[]', NULL, 1.0, 1.0, 2.0, 0, 0)"
        )
    db = jobs.JobStore(tmp_path / "jobs.db")
    assert db.get("a").handle == "" and db.get("a").state == jobs.JobState.SUCCEEDED
    db.create(record("b", "req-b"))
    db.set_handle("b", "{}", 1)
    assert db.get("b").handle == "{}"


def test_relocate_rebases_paths_only_at_a_path_boundary():
    report = {"artifacts": {"onnx": "/srv/job/model.onnx", "other": "/srv/jobs/x"},
              "list": ["/srv/job", 3]}  # fmt: skip
    moved = jobs.relocate(report, "/srv/job", "s3://b/run")
    assert moved == {"artifacts": {"onnx": "s3://b/run/model.onnx", "other": "/srv/jobs/x"},
                     "list": ["s3://b/run", 3]}  # fmt: skip
