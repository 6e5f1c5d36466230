"""Jobs that outlive a request: a SQLite record per job, its events, and a bounded pool of worker
processes that runs them. The gRPC job API of every stage service sits on top of this module,
which knows no gRPC.

    store = JobStore(settings.SIGDL_HOME.get() / "jobs" / "training.db")
    pool = WorkerPool(store, "training", run_job, workers=2, queue_size=16)
    pool.start()                                     # jobs a dead server left RUNNING -> FAILED
    job = pool.submit({"model": "lenet-5"}, out_uri=None, request_id="client-key-1")
    for event in store.events(job.id, from_index=0): print(event.message)
    pool.cancel(job.id)                              # terminates the job's worker process

Each job runs in its own child process (multiprocessing "forkserver": a clean single-threaded
parent whose stage modules are imported once, so a job starts in milliseconds instead of the
seconds torch takes to import). Cancel terminates the child's whole process group, so the work
really stops; the child exits by itself when the server dies. Events and the result come back as
JSON over a pipe, and the child adopts the submitter's settings, never the forkserver's.
A pool given a `JobBackend` runs no worker process: each worker slot follows a job that the
backend runs elsewhere (sigdl/core/jobrun.py: a `python -m sigdl.core.jobrun` process each, or a
Kubernetes Job each, sigdl/core/kubejob.py, whose pod runs the same `run_outcome`), with the same
records, events and Cancel. Such work outlives the service: the job keeps its backend's handle
(`JobRecord.handle`), a service that stops leaves it running, and the next one to start on the
store (or a surviving replica) adopts it and follows it to its end.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import gc
import hashlib
import json
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from sigdl.core import settings, store
from sigdl.core.errors import InputError, one_line
from sigdl.core.events import ProgressEvent

EmitFn = Callable[[ProgressEvent], None]
KILL_AFTER_S = 5.0  # a cancelled worker that ignores SIGTERM this long gets SIGKILL
POLL_S = 0.2  # how often a job's supervising thread looks at its worker


class JobState(enum.StrEnum):
    """Names match sigdl.v1.JobState in the protos."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


# --- errors the service layer maps to status codes ---------------------------------------------
class JobNotFoundError(LookupError):
    """No job with this id."""


class RequestConflictError(InputError):
    """A request id reused with different parameters."""


class QueueFullError(RuntimeError):
    """Every worker is busy and the queue is full."""


class ShuttingDownError(RuntimeError):
    """The pool no longer takes jobs."""


class RetryableError(RuntimeError):
    """A job's work ended for a reason a retry may not meet (a TrainJob deleted or suspended
    under it): the job ends FAILED and retryable, with this one line."""


class FieldError(InputError):
    """A malformed request field; the message starts with the field's name."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.field = name


# --- records -----------------------------------------------------------------------------------
@dataclass
class JobRecord:
    """One job as stored. `params` and `report` are the stage's own JSON."""

    id: str  # unique per service
    request_id: str  # the client's idempotency key
    service: str  # training | compression | retest | deploy
    state: JobState
    params: dict  # what it was submitted with
    out_uri: str  # where its outputs go
    error: str = ""  # why it failed
    retryable: bool = False  # failed because of the service, not the input
    outputs: list[dict] = field(default_factory=list)  # [{"uri", "sha256"}] once SUCCEEDED
    report: dict | None = None  # the stage's report once SUCCEEDED
    created_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    event_count: int = 0
    worker_pid: int = 0
    handle: str = ""  # where a backend runs its work (jobrun.WorkHandle as JSON); '' otherwise


@dataclass
class JobEvent:
    """One thing that happened to a job; `index` counts from 0 per job."""

    job_id: str
    index: int
    time: float
    kind: str  # state | progress | log
    state: JobState  # the job's state after the event
    message: str
    data: dict = field(default_factory=dict)  # ProgressEvent.to_json(); {} for a state change


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, request_id TEXT UNIQUE NOT NULL, service TEXT NOT NULL,
    state TEXT NOT NULL, params TEXT NOT NULL, out_uri TEXT NOT NULL, error TEXT NOT NULL,
    retryable INTEGER NOT NULL, outputs TEXT NOT NULL, report TEXT, created_at REAL NOT NULL,
    started_at REAL NOT NULL, finished_at REAL NOT NULL, event_count INTEGER NOT NULL,
    worker_pid INTEGER NOT NULL, handle TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, time REAL NOT NULL, kind TEXT NOT NULL,
    state TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (job_id, idx));
"""
_JSON_COLUMNS = {"params", "outputs", "report"}
_RECORD_FIELDS = {f.name for f in fields(JobRecord)}


class JobStore:
    """Job records and events in one SQLite file, shared by the threads of one server.

    Every write is a transaction, so a server killed at any moment leaves whole records; events
    wake the threads that wait for them (`events(...)` follows a job until it ends). One server
    owns the file (WorkerPool takes a lock); a cluster shares `PostgresJobStore` instead.
    """

    shared = False  # several servers (replicas) use the store at once
    _BEGIN = "BEGIN IMMEDIATE"  # SQLite: take the write lock now, not at the first write

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._cond = threading.Condition()
        with self._cond:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "handle" not in columns:  # a store written before backends kept a handle
                self._db.execute("ALTER TABLE jobs ADD COLUMN handle TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        with self._cond:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._cond:
            self._db.execute(self._BEGIN)
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._cond.notify_all()

    def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Insert a QUEUED job; return (the job, True), or (the existing one, False) when its
        request id was seen before with the same parameters."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE request_id = ?", (record.request_id,)
            ).fetchone()
            if row is not None:
                existing = _record(row)
                if existing.params != record.params:
                    raise RequestConflictError(
                        f"request_id {record.request_id!r} was used for job {existing.id} "
                        "with other parameters: expected a new request id"
                    )
                return existing, False
            values = self._insert_values(record)
            db.execute(
                f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
            self._append(db, record.id, "state", JobState.QUEUED, "queued", {})
        return self.get(record.id), True

    def _insert_values(self, record: JobRecord) -> dict[str, object]:
        return _columns(record)

    def request_cancel(self, job_id: str) -> None:
        """Ask whichever server runs the job to stop it (a shared store); one server: nothing
        to ask, its pool holds every job."""

    def cancel_requested(self, job_id: str) -> bool:
        return False

    def get(self, job_id: str) -> JobRecord:
        with self._cond:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return _record(row)

    def find_request(self, request_id: str) -> JobRecord | None:
        with self._cond:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE request_id = ?", (request_id,)
            ).fetchone()
        return None if row is None else _record(row)

    def ids_in(self, *states: JobState) -> list[str]:
        marks = ", ".join("?" * len(states))
        with self._cond:
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE state IN ({marks}) ORDER BY created_at", states
            ).fetchall()
        return [r["id"] for r in rows]

    def transition(self, job_id: str, state: JobState, message: str, **fields: object) -> None:
        """Set the job's state (and other columns) and record the change as an event. An error
        is kept to one short line: the record must stay readable under the gRPC message limit,
        whatever a forged input put in the message."""
        message = one_line(message)
        if isinstance(fields.get("error"), str):
            fields["error"] = one_line(fields["error"])
        now = time.time()
        if state == JobState.RUNNING:
            fields.setdefault("started_at", now)
        if state.terminal:
            fields.setdefault("finished_at", now)
        values = _columns_subset({"state": state, **fields})
        with self._transaction() as db:
            sets = ", ".join(f"{k} = ?" for k in values)
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*values.values(), job_id))
            self._append(db, job_id, "state", state, message, {})

    def set_handle(self, job_id: str, handle: str, worker_pid: int) -> None:
        """Keep where a backend runs the job's work, so that a restarted service adopts it."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET handle = ?, worker_pid = ? WHERE id = ?",
                       (handle, worker_pid, job_id))  # fmt: skip

    def add_event(self, job_id: str, kind: str, message: str, data: dict) -> None:
        with self._transaction() as db:
            state = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            self._append(db, job_id, kind, JobState(state), message, data)

    def _append(self, db, job_id: str, kind: str, state: JobState, message: str, data: dict):
        index = db.execute("SELECT event_count FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        db.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, index, time.time(), kind, str(state), message, json.dumps(data)),
        )
        db.execute("UPDATE jobs SET event_count = ? WHERE id = ?", (index + 1, job_id))

    def events(
        self, job_id: str, from_index: int = 0, alive: Callable[[], bool] = lambda: True
    ) -> Iterator[JobEvent]:
        """The job's events from `from_index` on, waiting for new ones until the job has ended
        and all are delivered, or until `alive()` turns false (the watcher went away)."""
        self.get(job_id)  # JobNotFoundError before the first yield
        next_index = max(0, from_index)
        while alive():
            with self._cond:
                rows = self._db.execute(
                    "SELECT * FROM events WHERE job_id = ? AND idx >= ? ORDER BY idx",
                    (job_id, next_index),
                ).fetchall()
                ended = not rows and JobState(self.get(job_id).state).terminal
                if not rows and not ended:
                    self._cond.wait(timeout=0.5)
            if ended:
                return
            for row in rows:
                next_index = row["idx"] + 1
                yield JobEvent(
                    job_id, row["idx"], row["time"], row["kind"], JobState(row["state"]),
                    row["message"], json.loads(row["data"]),
                )  # fmt: skip

    def recover_interrupted(self, reason: str, adopt: AdoptFn | None = None) -> list[str]:
        """Jobs a previous server left QUEUED or RUNNING end FAILED and retryable, never lost;
        a RUNNING one whose work runs elsewhere (it has a handle) goes to `adopt` instead,
        when given. Returns the ids of the jobs failed."""
        ids = self.ids_in(JobState.QUEUED, JobState.RUNNING)
        return [i for i in ids if not self._recover(i, reason, adopt, owner=None)]

    def _recover(self, job_id: str, reason: str, adopt: AdoptFn | None, owner: str | None) -> bool:
        """Adopt the job (True) or fail it as retryable (False). `owner`: the replica that ran
        it, in a shared store."""
        job = self.get(job_id)
        if adopt is not None and job.state == JobState.RUNNING and job.handle:
            if self._claim(job_id, owner):  # else another replica adopted it first
                adopt(job)
            return True
        self.transition(job_id, JobState.FAILED, reason, error=reason, retryable=True)
        return False

    def _claim(self, job_id: str, owner: str | None) -> bool:
        return True  # one server owns the file


def _columns(record: JobRecord) -> dict[str, object]:
    return _columns_subset(record.__dict__)


def _columns_subset(values: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in values.items():
        if key in _JSON_COLUMNS:
            out[key] = None if value is None else json.dumps(value)
        elif isinstance(value, JobState):
            out[key] = str(value)
        elif isinstance(value, bool):
            out[key] = int(value)
        else:
            out[key] = value
    return out


def _record(row: sqlite3.Row) -> JobRecord:
    # a shared store keeps more columns (replica, cancel_requested) than a JobRecord has
    values = {k: row[k] for k in row.keys() if k in _RECORD_FIELDS}  # noqa: SIM118
    for key in _JSON_COLUMNS:
        values[key] = None if values[key] is None else json.loads(values[key])
    values["state"] = JobState(values["state"])
    values["retryable"] = bool(values["retryable"])
    return JobRecord(**values)


# --- what a job's worker process does ----------------------------------------------------------
@dataclass
class JobContext:
    """What a stage's job function gets: where to write, how to report, how to read inputs."""

    job_id: str
    out_dir: Path  # a local directory; uploaded to the job's out_uri when that is s3://
    emit: EmitFn  # send a progress event to the job's watchers
    scratch: Path  # a private temporary directory, removed after the job
    # where work the job started outside its worker runs (a TrainJob: jobrun.WorkHandle as
    # JSON): `record` keeps it with the job, and a service that restarts runs the job again
    # with it as `handle`, to follow that work rather than start it anew
    handle: str = ""
    record: Callable[[str], None] = field(default=lambda handle: None, repr=False)

    def local(self, uri: str) -> Path:
        """A local path holding the artifact at `uri`: the file itself for file://, else a
        download (one object, or every object under a directory-like prefix)."""
        if uri.lower().startswith("file:"):
            return store.FileBackend.path_of(uri)
        target = self.scratch / "inputs" / hashlib.sha256(uri.encode()).hexdigest()[:16]
        if store.exists(uri):
            store.get_file(uri, target / PurePosixPath(uri).name)
            return target / PurePosixPath(uri).name
        if not store.get_dir(uri, target):
            raise store.ArtifactNotFoundError(uri)
        return target


JobFn = Callable[[dict, JobContext], dict]  # (params, context) -> the stage's report
AdoptFn = Callable[[JobRecord], None]  # follow again a job whose work runs elsewhere


def _exit_with_parent() -> None:
    # A worker must not outlive a server that was killed: its job is already FAILED/retryable
    # in the store and a rerun would race its outputs.
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(70)

    threading.Thread(target=watch, name="sigdl-parent-watch", daemon=True).start()


def _send(conn, message: dict) -> None:
    conn.send_bytes(json.dumps(message, default=str).encode())


def _worker_main(
    fn: JobFn, job_id: str, params: dict, out_uri: str, env: dict, handle: str, conn
) -> None:
    """Entry point of a job's worker process: run `fn`, send events and the result as JSON."""
    # What the forkserver imported is shared copy-on-write: keep the collector from walking
    # (and so copying) those objects in every job
    gc.freeze()
    os.setpgid(0, 0)  # its own process group: Cancel stops every process the job started
    settings.adopt_environment(env)
    _exit_with_parent()
    try:

        def emit(event: ProgressEvent) -> None:
            _send(conn, {"event": event.to_json()})

        def record(work: str) -> None:
            _send(conn, {"handle": work})

        _send(conn, run_outcome(fn, job_id, params, out_uri, emit, handle, record))
    finally:
        conn.close()


def run_outcome(
    fn: JobFn,
    job_id: str,
    params: dict,
    out_uri: str,
    emit: EmitFn,
    handle: str = "",
    record: Callable[[str], None] | None = None,
) -> dict:
    """Run a job; return {"result": {"report", "outputs"}} or {"error": one line}. What a
    local worker sends its pool and a Kubernetes Job's pod stores (sigdl/core/jobrun.py).
    `handle` and `record`: JobContext's."""
    try:
        return {"result": _run_job(fn, job_id, params, out_uri, emit, handle, record)}
    except RetryableError as exc:
        return {"error": one_line(str(exc)), "retryable": True}
    except (InputError, store.StoreError, FileNotFoundError, PermissionError) as exc:
        return {"error": one_line(str(exc))}
    except Exception as exc:  # a bug in the stage: the job fails with its reason, not the server
        return {"error": one_line(f"{type(exc).__name__}: {exc}")}


def _run_job(
    fn: JobFn,
    job_id: str,
    params: dict,
    out_uri: str,
    emit: EmitFn,
    handle: str,
    record: Callable[[str], None] | None,
) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"sigdl-job-{job_id[:8]}-") as tmp:
        scratch = Path(tmp)
        local_out = out_uri.lower().startswith("file:")
        out_dir = store.FileBackend.path_of(out_uri) if local_out else scratch / "out"
        if not local_out:  # a local out_dir is the stage's to create, when it succeeds
            out_dir.mkdir(parents=True, exist_ok=True)
        out_dir = out_dir.resolve()
        context = JobContext(job_id, out_dir, emit, scratch, handle)
        if record is not None:
            context.record = record
        report = fn(params, context)
        report = relocate(report, str(out_dir), out_uri.rstrip("/"))
        if local_out:
            names = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*"))
            digests = {n: store.sha256((out_dir / n).as_uri()) for n in names
                       if (out_dir / n).is_file()}  # fmt: skip
        else:
            digests = store.replace_dir(out_uri, out_dir)  # only this run's files stay
    outputs = [{"uri": f"{out_uri.rstrip('/')}/{n}", "sha256": d} for n, d in digests.items()]
    return {"report": report, "outputs": outputs}


def relocate(value: object, old: str, new: str) -> object:
    """`value` with every string that starts with the path `old` rebased onto `new`: a report
    names its outputs by the paths the stage wrote, which mean nothing to another machine."""
    if isinstance(value, str):
        if value == old or value.startswith(old.rstrip("/") + "/"):
            return new + value[len(old) :]
        return value
    if isinstance(value, dict):
        return {k: relocate(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, old, new) for v in value]
    return value


# --- the pool ----------------------------------------------------------------------------------
CANCEL, DETACH = "cancel", "detach"  # what BackendHooks.stop() asks of a backend


@dataclass(frozen=True)
class BackendHooks:
    """What a pool gives the backend that runs one of its jobs elsewhere."""

    emit: EmitFn  # the job's progress, to its events
    stop: Callable[[], str]  # '' go on; CANCEL: stop the work; DETACH: stop following it only
    record: Callable[[str, int], None]  # (handle, pid): store where the work runs, to adopt it


class JobBackend(Protocol):
    """Where a pool runs its jobs instead of its own worker processes: a process or a Kubernetes
    Job each (sigdl/core/jobrun.py, sigdl/core/kubejob.py). A worker slot of the pool follows
    each such job; a job adopted after a restart gets a thread of its own."""

    name: str  # for messages: "kubernetes", "process"

    def default_out(self, service: str, job_id: str) -> str:
        """Where a job's outputs go when the request names no out_uri."""
        ...

    def check_out(self, out_uri: str) -> None:
        """Refuse (FieldError on out_uri) an out_uri that the job's work cannot reach."""
        ...

    def run(self, job: JobRecord, fn: JobFn, hooks: BackendHooks) -> dict:
        """Start `job`'s work with `fn` there, record its handle, send its progress, until it
        ends or `hooks.stop()` asks (then return {}); return what a local worker sends:
        {"result": ...} or {"error": ..., "retryable": bool}."""
        ...

    def adopt(self, job: JobRecord, hooks: BackendHooks) -> dict:
        """Follow again, as `run` does, the work `job.handle` names (started by a service that
        stopped); work that is gone is an error saying so."""
        ...

    def abandon(self, service: str, job_ids: list[str]) -> None:
        """Stop whatever still runs of jobs that a stopped server left and the store failed
        as retryable: a retry must not race their outputs."""
        ...


@dataclass
class _Running:
    process: multiprocessing.process.BaseProcess | None  # None: a backend runs the job
    cancelled_at: float = 0.0  # when Cancel asked it to stop (0: not cancelled)
    stopping: str = ""  # why the pool stops it (shutdown), when it does


class WorkerPool:
    """At most `workers` jobs of one service run at once, each in its own process; up to
    `queue_size` more wait; beyond that, Submit raises QueueFullError."""

    def __init__(
        self,
        store_: JobStore,
        service: str,
        fn: JobFn,
        *,
        workers: int,
        queue_size: int,
        preload: tuple[str, ...] = (),
        backend: JobBackend | None = None,
    ) -> None:
        if workers < 1 or queue_size < 0:
            raise InputError(f"workers={workers}, queue_size={queue_size}: expected >= 1, >= 0")
        self.store, self.service, self.fn = store_, service, fn
        self.backend = backend  # None: the pool's own worker processes run the jobs
        self.workers, self.queue_size = workers, queue_size
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(["sigdl.core.jobs", *preload])
        self._lock = threading.Lock()
        self._waiting: list[str] = []  # job ids in submission order
        self._running: dict[str, _Running] = {}
        self._wake = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._followers: list[threading.Thread] = []  # of adopted jobs
        self._resuming: dict[str, str] = {}  # job id -> the handle its worker resumes from
        self._closing = False
        self._store_lock: IO[str] | None = None  # held while this pool owns the store

    def start(self) -> list[str]:
        """Own the job store, adopt the work a previous server left running elsewhere (a
        backend's), fail what else it left unfinished, start the workers; return the ids of
        the jobs failed."""
        self._own_store()
        recovered = self.store.recover_interrupted(
            "the service stopped before the job finished (restart); retry it",
            adopt=self._adopt if self.backend is not None else self._resume,
        )
        if self.backend is not None and recovered:
            self.backend.abandon(self.service, recovered)
        for n in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"{self.service}-worker-{n}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        return recovered

    def _own_store(self) -> None:
        # Recovery fails every RUNNING job: a second server on the same store would fail the
        # first one's jobs. The kernel drops the lock when its holder dies, even by SIGKILL.
        # A shared store recovers only the jobs of replicas that stopped (PostgresJobStore).
        if self.store.shared:
            return
        self._store_lock = open(self.store.path.with_suffix(".lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(self._store_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._store_lock.close()
            raise InputError(
                f"{str(self.store.path)!r} is in use by another running {self.service} "
                "service: one server per service and SIGDL_HOME"
            ) from None

    @staticmethod
    def warm() -> None:
        """Start the forkserver now, so the first job does not wait for its imports."""
        multiprocessing.forkserver.ensure_running()

    @property
    def ready(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def submit(self, params: dict, out_uri: str | None, request_id: str | None) -> JobRecord:
        """Queue a job, or return the job an earlier Submit with this request id made."""
        params = json.loads(json.dumps(params))  # what the store will give back, to compare
        job_id = uuid.uuid4().hex
        if self.backend is not None:
            if out_uri:
                self.backend.check_out(out_uri)
            default_out = self.backend.default_out(self.service, job_id)
        else:
            default_out = store.as_uri(settings.SIGDL_HOME.get() / "jobs" / self.service / job_id)
        record = JobRecord(
            id=job_id, request_id=request_id or job_id, service=self.service,
            state=JobState.QUEUED, params=params, out_uri=out_uri or default_out,
            created_at=time.time(),
        )  # fmt: skip
        with self._lock:
            # a known request id gets its job back even when busy or closing: retries are safe
            existing = self.store.find_request(request_id) if request_id else None
            if existing is not None:
                return self.store.create(record)[0]  # raises RequestConflictError on new params
            if self._closing:
                raise ShuttingDownError(f"the {self.service} service is shutting down")
            if len(self._running) + len(self._waiting) >= self.workers + self.queue_size:
                raise QueueFullError(
                    f"the {self.service} service is busy: {len(self._running)} jobs running, "
                    f"{len(self._waiting)} queued (SIGDL_WORKERS={self.workers}, "
                    f"SIGDL_QUEUE_SIZE={self.queue_size}); retry later"
                )
            job, created = self.store.create(record)
            if created:
                self._waiting.append(job.id)
                self._wake.notify()
        return job

    def cancel(self, job_id: str, wait_s: float = KILL_AFTER_S + 5) -> JobRecord:
        """Stop a job: a waiting one never starts, a running one's processes are terminated."""
        with self._lock:
            job = self.store.get(job_id)
            if job.state.terminal:
                return job
            if job_id in self._waiting:
                self._waiting.remove(job_id)
                self.store.transition(job_id, JobState.CANCELLED, "cancelled before it started")
                return self.store.get(job_id)
            running = self._running.get(job_id)
            if running is not None and not running.cancelled_at:
                running.cancelled_at = time.monotonic()
                _signal_group(running.process, signal.SIGTERM)
            elif running is None:
                self.store.request_cancel(job_id)  # another replica holds it
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not self.store.get(job_id).state.terminal:
            time.sleep(0.05)
        return self.store.get(job_id)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closing:
                    self._wake.wait()
                if self._closing and not self._waiting:
                    return
                job_id = self._waiting.pop(0)
                job = self.store.get(job_id)
                resume = self._resuming.pop(job_id, "")
                if job.state != (JobState.RUNNING if resume else JobState.QUEUED):
                    continue  # cancelled through another replica
                if self.backend is not None:
                    running = self._running[job_id] = _Running(None)
                    self.store.transition(
                        job_id, JobState.RUNNING, f"running as a {self.backend.name} job"
                    )
                else:
                    parent_conn, child_conn = self._ctx.Pipe(duplex=False)
                    process = self._ctx.Process(
                        target=_worker_main,
                        args=(self.fn, job.id, job.params, job.out_uri,
                              settings.environment(), resume, child_conn),
                        name=f"sigdl-{self.service}-{job.id[:8]}",
                    )  # fmt: skip
                    running = self._running[job_id] = _Running(process)
            if self.backend is not None:
                try:
                    self._run_elsewhere(job, running)
                finally:
                    with self._lock:
                        self._running.pop(job_id, None)
                continue
            # outside the lock: the first start waits for the forkserver's imports, and
            # Submit must not wait with it
            process.start()
            child_conn.close()
            with self._lock:
                if resume:  # RUNNING already, since the server that stopped started it
                    self._log(job_id, f"resumed in process {process.pid}, following its work")
                else:
                    self.store.transition(
                        job_id, JobState.RUNNING, f"running in process {process.pid}",
                        worker_pid=process.pid or 0,
                    )  # fmt: skip
                if running.cancelled_at:  # Cancel came while it was starting
                    _signal_group(process, signal.SIGTERM)
            try:
                self._supervise(job_id, parent_conn)
            finally:
                parent_conn.close()
                with self._lock:
                    self._running.pop(job_id, None)

    def _adopt(self, job: JobRecord) -> None:
        """Follow, in a thread of its own, a running job whose work a stopped server started."""
        with self._lock:
            if job.id in self._running:
                return
            running = self._running[job.id] = _Running(None)
        self._log(job.id, f"adopted by this {self.service} service (the one that ran it stopped)")
        thread = threading.Thread(
            target=self._follow_adopted, args=(job, running), daemon=True,
            name=f"{self.service}-adopted-{job.id[:8]}",
        )  # fmt: skip
        self._followers.append(thread)
        thread.start()

    def _resume(self, job: JobRecord) -> None:
        """Run again, in a worker first in line, a running job whose worker recorded a handle
        (the work it started outside, a TrainJob) before its server stopped: the job function
        gets the handle and follows that work instead of starting it anew."""
        with self._lock:
            if job.id in self._waiting or job.id in self._running:
                return
            self._resuming[job.id] = job.handle
            self._waiting.insert(0, job.id)
            self._wake.notify()
        self._log(job.id, f"adopted by this {self.service} service (the one that ran it stopped)")

    def _follow_adopted(self, job: JobRecord, running: _Running) -> None:
        try:
            self._run_elsewhere(job, running, adopted=True)
        finally:
            with self._lock:
                self._running.pop(job.id, None)

    def _run_elsewhere(self, job: JobRecord, running: _Running, adopted: bool = False) -> None:
        """Follow a job the backend runs (started here, or `adopted`); record how it ended."""
        assert self.backend is not None

        def stop() -> str:
            if not running.cancelled_at and self.store.cancel_requested(job.id):
                running.cancelled_at = time.monotonic()  # a Cancel through another replica
            if running.cancelled_at:
                return CANCEL
            return DETACH if running.stopping else ""

        hooks = BackendHooks(
            emit=lambda event: self._progress(job.id, event.to_json()), stop=stop,
            record=lambda handle, pid: self.store.set_handle(job.id, handle, pid),
        )  # fmt: skip
        try:
            if adopted:
                outcome = self.backend.adopt(job, hooks)
            else:
                outcome = self.backend.run(job, self.fn, hooks)
        except Exception as exc:  # the backend (its API, its store) failed, not the job's input
            outcome = {"error": one_line(f"{type(exc).__name__}: {exc}"), "retryable": True}
        self._finish(job.id, running, outcome)

    def _supervise(self, job_id: str, conn) -> None:
        """Forward the worker's events to the store until it ends; record how it ended."""
        running = self._running[job_id]
        outcome: dict = {}
        next_look = time.monotonic() + POLL_S
        while True:
            if conn.poll(POLL_S):
                try:
                    message = json.loads(conn.recv_bytes())
                except EOFError:
                    break
                if "event" in message:
                    self._progress(job_id, message["event"])
                elif "handle" in message:  # kept for the next service, should this one stop
                    self.store.set_handle(job_id, message["handle"], running.process.pid or 0)
                else:
                    outcome = message
            elif not running.process.is_alive():
                break
            # every POLL_S, whether or not the worker is busy sending events: a Cancel that came
            # through another replica, and SIGKILL for a worker that ignores SIGTERM
            if time.monotonic() < next_look:
                continue
            next_look = time.monotonic() + POLL_S
            if not running.cancelled_at and self.store.cancel_requested(job_id):
                running.cancelled_at = time.monotonic()
                _signal_group(running.process, signal.SIGTERM)
            elif running.cancelled_at and time.monotonic() - running.cancelled_at > KILL_AFTER_S:
                _signal_group(running.process, signal.SIGKILL)
        running.process.join()
        self._finish(job_id, running, outcome)

    def _log(self, job_id: str, message: str) -> None:
        self._progress(job_id, ProgressEvent("log", message=message).to_json())

    def _progress(self, job_id: str, data: dict) -> None:
        event = ProgressEvent.from_json(data)
        kind = "log" if event.kind == "log" else "progress"
        self.store.add_event(job_id, kind, event.line(), event.to_json())

    def _finish(self, job_id: str, running: _Running, outcome: dict) -> None:
        code = running.process.exitcode if running.process is not None else None
        if running.cancelled_at:
            where = "worker" if self.backend is None else f"{self.backend.name} job"
            self.store.transition(job_id, JobState.CANCELLED, f"cancelled; {where} stopped")
        elif running.stopping and (self.backend is not None or self.store.get(job_id).handle):
            if not outcome:  # its work runs on without this service: the next one adopts it
                work = f"{self.backend.name} job" if self.backend is not None else "work"
                self._log(job_id, f"{running.stopping}; its {work} runs on")
            else:  # it ended as the service stopped
                self._finish(job_id, _Running(None), outcome)
        elif running.stopping:
            self.store.transition(
                job_id, JobState.FAILED, running.stopping, error=running.stopping, retryable=True
            )
        elif "result" in outcome:
            result = outcome["result"]
            self.store.transition(
                job_id, JobState.SUCCEEDED, "succeeded", report=result["report"],
                outputs=result["outputs"],
            )  # fmt: skip
        else:
            # a signal (OOM killer, a crash in native code) is the machine's fault: retryable
            error = outcome.get("error") or f"the worker process exited with code {code}"
            killed = code is not None and code < 0
            retryable = bool(outcome.get("retryable", killed))  # a backend says; a worker: killed
            self.store.transition(job_id, JobState.FAILED, error, error=error, retryable=retryable)

    def shutdown(self, grace_s: float) -> None:
        """Take no more jobs; let running ones finish for `grace_s`, then stop them and fail
        them as retryable; queued ones fail as retryable at once. A backend's jobs are left
        running, RUNNING with their handle, for the next service to adopt."""
        reason = "the service shut down before the job finished; retry it"
        with self._lock:
            self._closing = True
            for job_id in self._waiting:
                self.store.transition(job_id, JobState.FAILED, reason, error=reason, retryable=True)
            self._waiting.clear()
            self._wake.notify_all()
            if self.backend is not None:
                for running in self._running.values():
                    running.stopping = "the service stopped following the job"
        deadline = time.monotonic() + grace_s
        while self._running and time.monotonic() < deadline:
            time.sleep(0.1)
        with self._lock:
            for running in self._running.values():
                running.stopping = reason
                _signal_group(running.process, signal.SIGKILL)
        for thread in [*self._threads, *self._followers]:
            thread.join(timeout=10)
        if self._store_lock is not None:
            self._store_lock.close()  # releases the flock
            self._store_lock = None


def _signal_group(process: multiprocessing.process.BaseProcess | None, sig: int) -> None:
    if process is None:  # a backend's job: it stops when it sees cancelled_at or stopping
        return
    with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
        os.killpg(process.pid, sig)  # type: ignore[arg-type]
    with contextlib.suppress(ProcessLookupError, TypeError):
        os.kill(process.pid, sig)  # type: ignore[arg-type]  (before it made its group)


def open_store(service: str, home: Path) -> JobStore:
    """The job store of `service`: SQLite under `home`/jobs, or the PostgreSQL database that
    SIGDL_JOB_STORE names, shared by every replica (sigdl/core/jobs_postgres.py)."""
    uri = settings.SIGDL_JOB_STORE.get()
    if not uri:
        return JobStore(home / "jobs" / f"{service}.db")
    from sigdl.core.jobs_postgres import PostgresJobStore

    return PostgresJobStore(uri, service)
