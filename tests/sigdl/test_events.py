"""The one progress event type: what a stage emits is what the job store keeps, the Watch
stream carries and the CLI prints (the gRPC round trip is in tests/integration)."""

import json

import pytest

from sigdl.core import jobs
from sigdl.core.errors import InputError
from sigdl.core.events import ProgressEvent, epoch_event, log


def test_round_trips_through_json():
    event = ProgressEvent.of("upload", 2, 3, file="model.onnx", bytes=1024, skipped=[1, 2])
    data = json.loads(json.dumps(event.to_json()))
    assert data["schema_version"] == 1 and data["figures"] == {"file": "model.onnx", "bytes": 1024}
    assert ProgressEvent.from_json(data) == event
    assert event["file"] == "model.onnx"
    assert event.line() == "upload 2/3: file model.onnx bytes 1024"


def test_epoch_event_from_a_training_row():
    event = epoch_event({"epoch": 3, "loss": 0.123456, "lr": 0.01}, 10)
    assert (event.kind, event.done, event.total) == ("epoch", 3, 10)
    assert event.line() == "epoch 3/10: loss 0.1235 lr 0.01"
    assert log("warming up").line() == "warming up"


@pytest.mark.parametrize(
    "data, message",
    [
        ([1], "expected a mapping"),
        ({"kind": "epoch"}, "schema_version=None: expected 1"),
        ({"schema_version": 2, "kind": "epoch"}, "schema_version=2"),
        ({"schema_version": 1, "kind": ""}, "kind=''"),
        ({"schema_version": 1, "kind": "epoch", "done": "3"}, "done='3'"),
        ({"schema_version": 1, "kind": "epoch", "figures": [1]}, r"figures=\[1\]"),
    ],
)
def test_from_json_refuses_what_is_not_an_event(data, message):
    with pytest.raises(InputError, match=message):
        ProgressEvent.from_json(data)


def test_the_job_pool_stores_the_event_and_its_line(tmp_path):
    """The pool reads what a worker sent with from_json and keeps its to_json and line()
    (the worker's side, through a real service, is tests/integration/test_services.py)."""
    db = jobs.JobStore(tmp_path / "jobs.db")
    pool = jobs.WorkerPool(db, "training", lambda params, job: {}, workers=1, queue_size=0)
    db.create(jobs.JobRecord(id="a", request_id="r", service="training", state=jobs.JobState.QUEUED,
                             params={}, out_uri="file:///tmp/x"))  # fmt: skip
    event = epoch_event({"epoch": 1, "loss": 0.5}, 2)
    pool._progress("a", event.to_json())
    pool._progress("a", log("hello").to_json())
    db.transition("a", jobs.JobState.CANCELLED, "done")
    stored = list(db.events("a", from_index=1))[:2]
    assert [(e.kind, e.message) for e in stored] == [("progress", "epoch 1/2: loss 0.5"),
                                                     ("log", "hello")]  # fmt: skip
    assert ProgressEvent.from_json(stored[0].data) == event
