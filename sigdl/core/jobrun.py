"""A job's work in a pod of its own, sharing nothing with its service but the artifact store.

Under SIGDL_JOB_BACKEND=kubernetes a service runs each job as a Kubernetes Job
(sigdl/core/kubejob.py) whose one container runs

    python -m sigdl.core.jobrun --fn services.compression.server:run_job s3://sigdl/jobs/compression/<id>

and everything between the two passes through the job's folder, JOB_URI:

    request.json            the service writes it before it creates the Job: JobRequest (job
                            id, service, params, out_uri)
    events/00000000.jsonl   the pod appends progress while it works: ProgressEvent.to_json(),
    events/00000001.jsonl   one a line, a numbered chunk per flush (S3 has no append)
    result.json             the pod writes it last: what a local worker would send its pool,
                            {"result": {"report", "outputs"}} or {"error": one line}

The function to run is named on the command line, which only the service writes (in the Job
spec), never in the store. It runs through `jobs.run_outcome`, the same code as a local
worker process, so the report and outputs are the ones a local worker would give. The pod
exits 0 once `result.json` is stored, a failed job included (retrying a bad input is useless);
EXIT_RETRY when the store was unreachable (the Job's backoffLimit retries it), EXIT_NO_RETRY
when a retry would fail the same (no request, no such function; the Job fails at once).

A TrainJob's rank 0 logs its epoch events through the same `EventLog` (sigdl/core/distributed.py),
and the training service reads them with `EventReader` while it follows the TrainJob.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import ClassVar

from sigdl.core import settings, store
from sigdl.core.errors import InputError
from sigdl.core.events import ProgressEvent

REQUEST = "request.json"
RESULT = "result.json"
EVENTS = "events"  # the folder of event chunks
_CHUNK = "{:08d}.jsonl"
_FN_REF = "MODULE:FUNCTION"
EXIT_RETRY = 1  # the store was unreachable: another pod may do better (the Job's backoffLimit)
EXIT_NO_RETRY = 2  # no request, no such function, a store that refuses: a retry fails the same


def file_uri(job_uri: str, name: str) -> str:
    return f"{job_uri.rstrip('/')}/{name}"


# --- the request -------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobRequest:
    """What a job's pod runs: the parameters its service parsed from the gRPC request."""

    schema_version: ClassVar[int] = 1

    job_id: str  # the service's job id
    service: str  # compression | retest
    params: dict  # the job function's parameters (JSON)
    out_uri: str  # where its outputs go (s3:// on a cluster)

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "job_id": self.job_id,
            "service": self.service,
            "params": self.params,
            "out_uri": self.out_uri,
        }

    @classmethod
    def from_json(cls, data: object, where: str) -> JobRequest:
        fields = {"job_id": str, "service": str, "params": dict, "out_uri": str}
        if not isinstance(data, dict) or data.get("schema_version") != cls.schema_version:
            raise InputError(
                f"{where}: expected a job request with schema_version {cls.schema_version}"
            )
        for name, kind in fields.items():
            if not isinstance(data.get(name), kind):
                raise InputError(f"{where}: field {name!r} missing or not a {kind.__name__}")
        return cls(**{name: data[name] for name in fields})


def write_request(job_uri: str, request: JobRequest) -> None:
    store.put_bytes(file_uri(job_uri, REQUEST), json.dumps(request.to_json()).encode())


def read_request(job_uri: str) -> JobRequest:
    uri = file_uri(job_uri, REQUEST)
    try:
        data = json.loads(store.get_bytes(uri))
    except json.JSONDecodeError as exc:
        raise InputError(f"{uri}: not JSON ({exc.msg} at char {exc.pos})") from None
    return JobRequest.from_json(data, uri)


def write_result(job_uri: str, outcome: dict) -> None:
    store.put_bytes(file_uri(job_uri, RESULT), json.dumps(outcome, default=str).encode())


def read_result(job_uri: str) -> dict | None:
    """The stored outcome, or None while there is none (or it is unreadable)."""
    uri = file_uri(job_uri, RESULT)
    try:
        outcome = json.loads(store.get_bytes(uri))
    except store.ArtifactNotFoundError:
        return None
    except json.JSONDecodeError:
        return {"error": f"{uri} is not JSON", "retryable": True}
    if not isinstance(outcome, dict) or not ({"result", "error"} & set(outcome)):
        return {"error": f"{uri} holds neither a result nor an error", "retryable": True}
    return outcome


# --- events ------------------------------------------------------------------------------------
class EventLog:
    """Progress events appended under JOB_URI/events/ as numbered chunks, at most one chunk
    per `flush_s` (a background thread stores what waits), and everything on `close()`.
    A retried pod numbers its chunks after the ones an earlier attempt stored."""

    def __init__(self, job_uri: str, flush_s: float | None = None) -> None:
        self.prefix = file_uri(job_uri, EVENTS)
        self.flush_s = settings.SIGDL_JOB_EVENTS_FLUSH_S.get() if flush_s is None else flush_s
        self._pending: list[str] = []
        self._lock = threading.Lock()  # guards _pending
        self._flushing = threading.Lock()
        self._wake = threading.Event()  # something waits to be stored
        self._stop = threading.Event()
        self._next = 1 + max((_chunk_number(u) for u in store.list_uris(self.prefix)), default=-1)
        self._thread = threading.Thread(target=self._run, name="sigdl-event-log", daemon=True)
        self._thread.start()

    def append(self, event: ProgressEvent) -> None:
        with self._lock:
            self._pending.append(json.dumps(event.to_json(), default=str))
        self._wake.set()

    def flush(self) -> None:
        """Store what waits as the next chunk; on a StoreError it waits for the next flush."""
        # one flush at a time, so chunks are stored in their order and a reader skips none;
        # append() only takes the short lock and never waits for the store
        with self._flushing:
            with self._lock:
                lines = list(self._pending)
            if not lines:
                return
            chunk = f"{self.prefix}/{_CHUNK.format(self._next)}"
            store.put_bytes(chunk, "\n".join(lines).encode())
            self._next += 1
            with self._lock:
                del self._pending[: len(lines)]

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._stop.wait(self.flush_s)  # gather what comes meanwhile into one chunk
            if self._stop.is_set():
                return  # close() stores the rest
            self._wake.clear()
            try:
                self.flush()
            except store.StoreError:  # the store is down: keep the events, try again later
                self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self.flush()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventReader:
    """Reads the events an `EventLog` stores, each once, in order."""

    def __init__(self, job_uri: str) -> None:
        self.prefix = file_uri(job_uri, EVENTS)
        self._read = -1  # the last chunk number read

    def new_events(self) -> list[ProgressEvent]:
        events: list[ProgressEvent] = []
        for uri in store.list_uris(self.prefix):  # sorted: zero-padded numbers
            number = _chunk_number(uri)
            if number <= self._read:
                continue
            for line in store.get_bytes(uri).decode(errors="replace").splitlines():
                try:
                    events.append(ProgressEvent.from_json(json.loads(line)))
                except (ValueError, TypeError, InputError):
                    events.append(ProgressEvent("log", message=f"unreadable event in {uri}"))
            self._read = number
        return events


def _chunk_number(uri: str) -> int:
    stem = PurePosixPath(uri).name.removesuffix(".jsonl")
    return int(stem) if stem.isdigit() else -1


# --- the entry point ---------------------------------------------------------------------------
def resolve(ref: str) -> Callable:
    """The function `MODULE:FUNCTION` names."""
    module_name, _, name = ref.partition(":")
    if not module_name or not name:
        raise InputError(f"--fn {ref!r}: expected {_FN_REF}")
    try:
        value = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"--fn {ref!r}: {exc}") from None
    if not callable(value):
        raise InputError(f"--fn {ref!r}: expected a function, got {type(value).__name__}")
    return value


def function_ref(fn: Callable) -> str:
    """`MODULE:FUNCTION` of a module-level function, which `resolve` turns back into it."""
    ref = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in ref or "." in fn.__qualname__:
        raise InputError(f"job function {ref}: expected a module-level function")
    return ref


def run(fn_ref: str, job_uri: str) -> dict:
    """Run the job stored at `job_uri` with the function `fn_ref`; store and return its
    outcome, exactly what a local worker process would have sent its pool."""
    from sigdl.core.jobs import run_outcome

    fn = resolve(fn_ref)
    request = read_request(job_uri)
    with EventLog(job_uri) as log:
        outcome = run_outcome(fn, request.job_id, request.params, request.out_uri, log.append)
    write_result(job_uri, outcome)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sigdl.core.jobrun",
        description="Run one service job stored under an artifact URI (a Kubernetes Job's pod).",
    )
    parser.add_argument("--fn", required=True, help=f"the job function, {_FN_REF}")
    parser.add_argument("job_uri", help="the job's folder: request.json, events/, result.json")
    args = parser.parse_args(argv)
    try:
        outcome = run(args.fn, args.job_uri)
    except store.StoreUnreachableError as exc:
        print(f"sigdl.core.jobrun: {exc}", file=sys.stderr)
        return EXIT_RETRY
    except (InputError, store.StoreError) as exc:
        print(f"sigdl.core.jobrun: {exc}", file=sys.stderr)
        return EXIT_NO_RETRY
    state = "failed: " + outcome["error"] if "error" in outcome else "succeeded"
    print(f"job {args.job_uri} {state}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
