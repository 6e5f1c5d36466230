"""A job's work outside its service, sharing nothing with it but the artifact store.

Under SIGDL_JOB_BACKEND=kubernetes a service runs each job as a Kubernetes Job
(sigdl/core/kubejob.py), under SIGDL_JOB_BACKEND=process as a process of its own on the
service's machine (`ProcessLauncher`, below); either runs

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

On the service's side one lifecycle serves both backends (`WorkRunner`, the pool's JobBackend):
store the request, have the launcher start the work, keep its `WorkHandle` with the job record,
forward the stored events, take the stored result (else the launcher's word on how the work
ended), stop the work on Cancel, and leave it running when the service stops, for the next
service on the job store to adopt. Only starting, looking at and stopping the work differ:
`ProcessLauncher` / `ProcessWork` here, `KubeJobLauncher` / `KubeJobWork` in kubejob.py.

A TrainJob's rank 0 logs its epoch events through the same `EventLog` (sigdl/core/distributed.py).
The TrainJob is only the fit of a training job, whose worker follows it with the same
`WorkRunner.follow`, `WorkHandle` and a `Work` of its own (`TrainJobWork`,
services/training/trainjob.py): the handle goes to the job's record through the worker's
`JobContext.record`, and a service that restarts runs the job again with it, following the
TrainJob rather than creating another.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar, Protocol

from sigdl.core import jobs, settings, store
from sigdl.core.errors import InputError, one_line
from sigdl.core.events import EventFn, ProgressEvent, log
from sigdl.core.jobs import BackendHooks, JobRecord

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
    """Reads the events an `EventLog` stores, each once, in order, from the chunk after
    `after` (the last one a reader before it forwarded)."""

    def __init__(self, job_uri: str, after: int = -1) -> None:
        self.prefix = file_uri(job_uri, EVENTS)
        self._read = after  # the last chunk number read

    @property
    def last(self) -> int:
        """The number of the last chunk read (-1: none)."""
        return self._read

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


# --- following the work from the service (SIGDL_JOB_BACKEND process | kubernetes) -------------
BACKENDS = ("local", "process", "kubernetes")


def job_backend() -> str:
    """SIGDL_JOB_BACKEND, checked (InputError if unknown)."""
    backend = settings.SIGDL_JOB_BACKEND.get().strip().lower()
    if backend not in BACKENDS:
        raise InputError(f"SIGDL_JOB_BACKEND={backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend


def backend_from_settings() -> WorkRunner | None:
    """The pool backend SIGDL_JOB_BACKEND asks for: None for local (the pool's own workers)."""
    backend = job_backend()
    if backend == "local":
        return None
    if backend == "process":
        return WorkRunner(ProcessLauncher.from_settings())
    from sigdl.core.kubejob import JobSpec, KubeJobLauncher

    return WorkRunner(KubeJobLauncher(JobSpec.from_settings()))


@dataclass(frozen=True)
class WorkHandle:
    """Where a job's work runs, kept with the job (JobRecord.handle) so that a service that
    restarts, or another replica, follows it again."""

    schema_version: ClassVar[int] = 1

    backend: str  # process | kubernetes | trainjob
    job_uri: str  # the job's folder (request, events, result; a TrainJob's inputs, outputs)
    namespace: str = ""  # kubernetes, trainjob: the Job's (TrainJob's) namespace
    job: str = ""  # kubernetes, trainjob: the Job's (TrainJob's) name
    host: str = ""  # process: the machine it runs on
    pid: int = 0  # process: its id, the leader of its own process group
    started: int = 0  # process: its start (clock ticks after boot), which a reused pid lacks
    log: str = ""  # process: the file holding its output
    events_read: int = -1  # the last event chunk forwarded to the job's events

    @property
    def name(self) -> str:
        if self.backend == "kubernetes":
            return f"Kubernetes Job {self.namespace}/{self.job}"
        if self.backend == "trainjob":
            return f"TrainJob {self.namespace}/{self.job}"
        return f"process {self.pid} on {self.host}"

    def to_json(self) -> str:
        return json.dumps({"schema_version": self.schema_version, **dataclasses.asdict(self)})

    @classmethod
    def from_json(cls, raw: str) -> WorkHandle:
        try:
            data = json.loads(raw)
            if data.pop("schema_version") != cls.schema_version:
                raise ValueError("another schema_version")
            return cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InputError(f"job handle {raw[:80]!r}: unreadable ({exc})") from None


class Work(Protocol):
    """One job's work where a launcher started it."""

    handle: WorkHandle

    def look(self, emit: EventFn) -> dict | None:
        """None while it runs (sending what changed to `emit`); once it ended, the outcome to
        record if it stored none: {"error": one line, "retryable": bool}."""
        ...

    def wait(self) -> None:
        """Return when it may have changed, after the backend's poll interval at most."""

    def stop(self) -> None:
        """Stop the work (Cancel); work already gone is no error."""


class Launcher(Protocol):
    """Starts a job's work outside the service (`start`), or finds it again (`attach`)."""

    name: str  # the SIGDL_JOB_BACKEND value

    def job_uri(self, service: str, job_id: str) -> str: ...

    def check_out(self, out_uri: str) -> None:
        """Refuse (FieldError on out_uri) an out_uri that the work cannot reach."""

    def start(self, service: str, job_id: str, fn_ref: str, job_uri: str) -> Work: ...

    def attach(self, handle: WorkHandle) -> Work: ...

    def abandon(self, service: str, job_ids: list[str]) -> None:
        """Stop what may run of jobs a stopped server left with no handle (failed)."""


class WorkRunner:
    """The pool's JobBackend (sigdl/core/jobs.py) for work that runs outside the service: one
    lifecycle for every launcher. The request goes to the job's folder, the launcher starts
    the work, its handle goes to the job's record, and the runner follows it: the progress
    the work stores becomes the job's events, the result it stores the job's outcome (else
    the launcher says why it ended), a Cancel stops it, and a service that stops leaves it
    running for the next one to `adopt`."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.name = launcher.name

    def default_out(self, service: str, job_id: str) -> str:
        return file_uri(self.launcher.job_uri(service, job_id), "out")

    def check_out(self, out_uri: str) -> None:
        self.launcher.check_out(out_uri)

    def abandon(self, service: str, job_ids: list[str]) -> None:
        self.launcher.abandon(service, job_ids)

    def run(self, job: JobRecord, fn: Callable, hooks: BackendHooks) -> dict:
        uri = self.launcher.job_uri(job.service, job.id)
        write_request(uri, JobRequest(job.id, job.service, job.params, job.out_uri))
        work = self.launcher.start(job.service, job.id, function_ref(fn), uri)
        return self.follow(work, hooks, f"{work.handle.name}: started, at {uri}")

    def adopt(self, job: JobRecord, hooks: BackendHooks) -> dict:
        handle = WorkHandle.from_json(job.handle)
        if handle.backend != self.name:
            return {"error": f"its work, {handle.name}, was started by the {handle.backend} "
                    f"job backend; this service runs {self.name} jobs: retry the job",
                    "retryable": True}  # fmt: skip
        work = self.launcher.attach(handle)
        return self.follow(work, hooks, f"{handle.name}: followed again, at {handle.job_uri}")

    @staticmethod
    def follow(work: Work, hooks: BackendHooks, line: str) -> dict:
        """Record `work`'s handle with the job and send `line`, then follow the work until it
        ends (its outcome) or `hooks.stop()` asks ({}). A training job's worker follows its
        TrainJob with it too (services/training/trainjob.py)."""
        events = EventReader(work.handle.job_uri, after=work.handle.events_read)
        try:
            hooks.record(work.handle.to_json(), work.handle.pid)
            hooks.emit(log(line))
            while True:
                ended = work.look(hooks.emit)
                for event in events.new_events():
                    hooks.emit(event)
                if events.last != work.handle.events_read:  # an adopter resumes after them
                    work.handle = dataclasses.replace(work.handle, events_read=events.last)
                    hooks.record(work.handle.to_json(), work.handle.pid)
                if ended is not None:
                    return read_result(work.handle.job_uri) or ended
                why = hooks.stop()
                if why == jobs.CANCEL:
                    work.stop()
                if why:
                    return {}
                work.wait()
        except Exception:
            with contextlib.suppress(Exception):  # it cannot be followed (or adopted): stop it
                work.stop()
            raise


class ProcessLauncher:
    """SIGDL_JOB_BACKEND=process: each job's work is `python -m sigdl.core.jobrun` on the
    service's machine, in a session of its own, so that it outlives the service (SIGTERM or
    SIGKILL) and the next service on the job store adopts it; replicas on one machine that
    share a PostgreSQL job store share the work. Its output goes to
    $SIGDL_HOME/jobs/logs/<service>/<job id>.log."""

    name = "process"

    def __init__(self, root_uri: str, poll_s: float) -> None:
        self.root_uri, self.poll_s = root_uri.rstrip("/"), poll_s

    @classmethod
    def from_settings(cls) -> ProcessLauncher:
        root = settings.SIGDL_JOB_URI.get() or store.as_uri(
            settings.SIGDL_HOME.get() / "jobs" / "work"
        )
        return cls(root, settings.SIGDL_JOB_POLL_S.get())

    def job_uri(self, service: str, job_id: str) -> str:
        return f"{self.root_uri}/{service}/{job_id}"

    def check_out(self, out_uri: str) -> None:
        pass  # the work runs where the service does and reaches what it reaches

    def start(self, service: str, job_id: str, fn_ref: str, job_uri: str) -> ProcessWork:
        path = settings.SIGDL_HOME.get() / "jobs" / "logs" / service / f"{job_id}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "sigdl.core.jobrun", "--fn", fn_ref, job_uri]
        with path.open("ab") as output:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                env=settings.environment_with(SIGDL_PROGRESS="0"), start_new_session=True,
            )  # fmt: skip
        handle = WorkHandle(
            self.name, job_uri, host=socket.gethostname(), pid=process.pid,
            started=_started(process.pid) or 0, log=str(path),
        )  # fmt: skip
        return ProcessWork(handle, self.poll_s, process)

    def attach(self, handle: WorkHandle) -> ProcessWork:
        return ProcessWork(handle, self.poll_s)

    def abandon(self, service: str, job_ids: list[str]) -> None:
        pass  # a process whose handle was never stored cannot be told from any other


class ProcessWork:
    """A `python -m sigdl.core.jobrun` process: this service's child (`process`), or one a
    stopped service started, known by its pid and start time."""

    def __init__(self, handle: WorkHandle, poll_s: float, process=None) -> None:
        self.handle, self.poll_s, self.process = handle, poll_s, process

    def look(self, emit: EventFn) -> dict | None:
        here = socket.gethostname()
        if self.process is None and self.handle.host != here:
            return {"error": f"{self.handle.name} cannot be followed from {here}: retry the "
                    "job, or restart the service on its machine", "retryable": True}  # fmt: skip
        if self._alive():
            return None
        code = self.process.returncode if self.process is not None else None
        if code is None:
            why = "is gone (killed, or its machine restarted, while no service followed it)"
        else:
            why = f"exited with code {code}"
        tail = _last_line(Path(self.handle.log)) if self.handle.log else ""
        return {"error": f"{self.handle.name} {why} without storing {RESULT}"
                         + (f": {tail}" if tail else ""),
                "retryable": code != EXIT_NO_RETRY}  # fmt: skip

    def wait(self) -> None:
        if self.process is None:
            time.sleep(self.poll_s)
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=self.poll_s)

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after KILL_AFTER_S."""
        deadline = time.monotonic() + jobs.KILL_AFTER_S
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self._alive():
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.handle.pid, sig)
            while self._alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.process is not None:
            self.process.wait()

    def _alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _started(self.handle.pid) == self.handle.started


def _started(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot), None if there is none running
    (a zombie has ended). Linux's /proc; elsewhere 0 for any live pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _last_line(path: Path) -> str:
    try:
        lines = path.read_bytes()[-4096:].decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return one_line(lines[-1])[:300] if lines else ""


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
    fn = resolve(fn_ref)
    request = read_request(job_uri)
    with EventLog(job_uri) as events:
        outcome = jobs.run_outcome(
            fn, request.job_id, request.params, request.out_uri, events.append
        )
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
