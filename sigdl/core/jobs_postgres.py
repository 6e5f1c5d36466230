"""Job records in PostgreSQL, shared by every replica of a service (cluster mode).

    SIGDL_JOB_STORE=postgresql://sigdl:...@postgres:5432/sigdl sigdl serve training

With two replicas behind one Kubernetes Service, a Get, Watch or Cancel that lands on either
answers for any job: the records and events live in the database, not in a pod. Each replica
runs the jobs submitted to it (its worker pool) and records its name with them; Cancel through
another replica sets `cancel_requested`, which the owner's pool polls. Each replica writes a
heartbeat; jobs of a replica whose heartbeat is older than SIGDL_REPLICA_STALE_S end FAILED and
retryable (the replica died), as a restarted single server fails the jobs it left behind. A job
whose work runs outside the replica (SIGDL_JOB_BACKEND process or kubernetes, with a handle) is
adopted instead: one replica claims it (`replica` set to its own name, in one UPDATE) and
follows the work again.

One schema per service (`sigdl_training`, ...) keeps request ids of different services apart.
psycopg (the `cluster` extra) is imported only here, when a postgresql:// store is configured.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from sigdl.core import settings
from sigdl.core.errors import InputError, one_line
from sigdl.core.jobs import AdoptFn, JobRecord, JobState, JobStore, RequestConflictError, _columns

HEARTBEAT_S = 2.0  # how often a replica says it is alive (and looks for dead ones)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, request_id TEXT UNIQUE NOT NULL, service TEXT NOT NULL,
    state TEXT NOT NULL, params TEXT NOT NULL, out_uri TEXT NOT NULL, error TEXT NOT NULL,
    retryable INTEGER NOT NULL, outputs TEXT NOT NULL, report TEXT,
    created_at DOUBLE PRECISION NOT NULL, started_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION NOT NULL, event_count INTEGER NOT NULL,
    worker_pid INTEGER NOT NULL, replica TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0, handle TEXT NOT NULL DEFAULT '');
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS handle TEXT NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, time DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL, state TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (job_id, idx));
CREATE TABLE IF NOT EXISTS replicas (id TEXT PRIMARY KEY, seen_at DOUBLE PRECISION NOT NULL);
"""


class _Row(dict):
    """A row readable by name and by position, as sqlite3.Row is (JobStore reads both)."""

    def __init__(self, names: list[str], values: tuple) -> None:
        super().__init__(zip(names, values, strict=True))
        self._values = values

    def __getitem__(self, key):
        return self._values[key] if isinstance(key, int) else super().__getitem__(key)


def _row_factory(cursor):
    names = [c.name for c in cursor.description or []]
    return lambda values: _Row(names, values)


class _Connection:
    """JobStore's SQL (sqlite's `?` marks) on a psycopg connection (`%s` marks)."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def execute(self, sql: str, params: tuple | list = ()):
        return self.conn.execute(sql.replace("?", "%s"), tuple(params))

    def close(self) -> None:
        self.conn.close()


class PostgresJobStore(JobStore):
    """JobStore on a PostgreSQL database that every replica of `service` shares."""

    shared = True
    _BEGIN = "BEGIN"  # row locks (SELECT ... FOR UPDATE) order the writers that matter

    def __init__(self, uri: str, service: str, replica: str | None = None) -> None:
        import psycopg

        self.path = None  # no file: WorkerPool takes no lock on a shared store
        self.service = service
        self.replica = replica or settings.SIGDL_REPLICA_ID.get() or _default_replica()
        self.stale_s = settings.SIGDL_REPLICA_STALE_S.get()
        schema = f"sigdl_{service}"
        if not schema.replace("_", "").isalnum():
            raise InputError(f"service {service!r}: expected letters and digits")
        try:
            conn = psycopg.connect(uri, autocommit=True, row_factory=_row_factory,
                                   connect_timeout=10)  # fmt: skip
        except psycopg.Error as exc:
            where = uri.split("@")[-1]  # never echo a password
            raise InputError(f"job store postgresql://...@{where}: cannot connect "
                             f"({one_line(str(exc), 200)})") from None  # fmt: skip
        with conn.transaction():
            # replicas starting together: one creates the schema and tables, the others wait on
            # the lock (two concurrent CREATE SCHEMA IF NOT EXISTS can still collide)
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (schema,))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            conn.execute(f"SET search_path TO {schema}")  # for the session, not only this block
            conn.execute(_SCHEMA)
        self._db = _Connection(conn)
        self._cond = threading.Condition()
        self._heartbeat: threading.Thread | None = None
        self._stopping = threading.Event()
        self._adopt: AdoptFn | None = None  # the pool's, once it recovered

    def close(self) -> None:
        self._stopping.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=HEARTBEAT_S * 2)
        with self._cond:
            self._db.close()

    def _insert_values(self, record: JobRecord) -> dict[str, object]:
        return {**_columns(record), "replica": self.replica}

    def create(self, record: JobRecord) -> tuple[JobRecord, bool]:
        import psycopg

        try:
            return super().create(record)
        except psycopg.errors.UniqueViolation:
            # the same request id submitted to two replicas at once: the other one won
            existing = self.find_request(record.request_id)
            if existing is None or existing.params != record.params:
                raise RequestConflictError(
                    f"request_id {record.request_id!r} was used for another job with other "
                    "parameters: expected a new request id"
                ) from None
            return existing, False

    def _append(self, db, job_id: str, kind: str, state: JobState, message: str, data: dict):
        # the row lock orders event indexes when two replicas write events of one job
        db.execute("SELECT event_count FROM jobs WHERE id = ? FOR UPDATE", (job_id,))
        super()._append(db, job_id, kind, state, message, data)

    def request_cancel(self, job_id: str) -> None:
        """A queued job is cancelled here (its owner skips it); a running one is flagged for
        its owner, whose pool stops the worker."""
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ? FOR UPDATE", (job_id,))
            state = JobState(row.fetchone()["state"])
            if state == JobState.QUEUED:
                db.execute("UPDATE jobs SET state = ?, finished_at = ? WHERE id = ?",
                           (str(JobState.CANCELLED), time.time(), job_id))  # fmt: skip
                self._append(db, job_id, "state", JobState.CANCELLED, "cancelled", {})
            elif state == JobState.RUNNING:
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))

    def cancel_requested(self, job_id: str) -> bool:
        with self._cond:
            row = self._db.execute(
                "SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return bool(row and row["cancel_requested"])

    def recover_interrupted(self, reason: str, adopt: AdoptFn | None = None) -> list[str]:
        """This replica's own unfinished jobs (a restart under the same name) and those of
        replicas that stopped beating are adopted (running work elsewhere, when `adopt` is
        given) or end FAILED and retryable; then keep beating, and doing so."""
        self._beat()
        self._adopt = adopt
        orphans = self._orphans(include_own=True)
        failed = [i for i, owner in orphans if not self._recover(i, reason, adopt, owner)]
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(
                target=self._beat_forever, name=f"sigdl-{self.service}-heartbeat", daemon=True
            )
            self._heartbeat.start()
        return failed

    def _claim(self, job_id: str, owner: str | None) -> bool:
        """Take over a running job from `owner`: False when another replica did first."""
        with self._cond:
            row = self._db.execute(
                "UPDATE jobs SET replica = ? WHERE id = ? AND replica = ? AND state = ? "
                "RETURNING id", (self.replica, job_id, owner or "", str(JobState.RUNNING)),
            ).fetchone()  # fmt: skip
        return row is not None

    def _beat(self) -> None:
        with self._cond:
            self._db.execute(
                "INSERT INTO replicas (id, seen_at) VALUES (?, ?) ON CONFLICT (id) "
                "DO UPDATE SET seen_at = EXCLUDED.seen_at", (self.replica, time.time())
            )  # fmt: skip

    def _orphans(self, include_own: bool) -> list[tuple[str, str]]:
        """(id, replica) of the unfinished jobs whose replica is this one (include_own) or
        stopped beating."""
        stale = time.time() - self.stale_s
        with self._cond:
            rows = self._db.execute(
                "SELECT j.id, j.replica FROM jobs j LEFT JOIN replicas r ON r.id = j.replica "
                "WHERE j.state IN (?, ?) AND (r.seen_at IS NULL OR r.seen_at < ? OR j.replica = ?) "
                "ORDER BY j.created_at",
                (str(JobState.QUEUED), str(JobState.RUNNING), stale,
                 self.replica if include_own else ""),
            ).fetchall()  # fmt: skip
        return [(r["id"], r["replica"]) for r in rows]

    def _beat_forever(self) -> None:
        reason = "the service replica that ran the job stopped; retry it"
        while not self._stopping.wait(HEARTBEAT_S):
            try:
                self._beat()
                for job_id, owner in self._orphans(include_own=False):
                    self._recover(job_id, reason, self._adopt, owner)
            except Exception:
                continue


def _default_replica() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"
