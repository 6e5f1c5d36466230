"""The client side of the job API, shared by the four stage clients and `--remote` commands.

    with TrainingClient("127.0.0.1:50051") as client:      # token and TLS from SIGDL_*
        job = client.submit(training_pb2.TrainRequest(model="lenet-5", dataset="digits"))
        job = client.wait(job.id, on_event=lambda e: print(e.message))
        report = json.loads(job.report_json)

`watch` survives a dropped connection: it reconnects and resumes from the next event index, so
no event is lost or repeated. `run_remote` is what `sigdl train --remote ADDRESS` does: submit,
stream progress, fetch the outputs into `--out`, and return the report with local paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import grpc

from services.grpc_common.security import TlsFiles, call_metadata
from services.protos.sigdl.v1 import common_pb2
from sigdl.core import atomic, jobs, settings, store
from sigdl.core.errors import InputError, one_line
from sigdl.core.events import EventFn, ProgressEvent
from sigdl.core.lineage import RunContext

TERMINAL = {common_pb2.SUCCEEDED, common_pb2.FAILED, common_pb2.CANCELLED}
RECONNECTS = 5  # attempts to resume a Watch after the connection dropped
WatchFn = Callable[[common_pb2.JobEvent], None]  # a Watch stream's JobEvent messages


class RemoteJobError(InputError):
    """A remote job ended FAILED or CANCELLED; the message carries the service's reason."""


class RemoteCallError(InputError):
    """A call to a service was refused or never answered; `code` is the gRPC status name."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


# what a user can do about each status, after the service's own one-line reason
_ADVICE = {
    "UNAVAILABLE": "is `sigdl serve` running there?",
    "UNAUTHENTICATED": "check SIGDL_TOKEN",
    "PERMISSION_DENIED": "check SIGDL_ARTIFACT_ROOTS on the service",
    "DEADLINE_EXCEEDED": "the service did not answer in time",
}


@contextlib.contextmanager
def remote_errors(address: str) -> Iterator[None]:
    """Turn a gRPC failure into a one-line RemoteCallError naming the service's address, its
    status and reason: what `--remote` commands print (exit 2) instead of a traceback."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        name = code.name if code is not None else "UNKNOWN"
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        advice = f"; {_ADVICE[name]}" if name in _ADVICE else ""
        text = f"service at {address}: {name}: {one_line(details or '', 200)}{advice}"
        raise RemoteCallError(text, name) from None


def connect(address: str, tls: TlsFiles | None = None) -> grpc.Channel:
    """A channel to `address` (host:port): TLS when `tls` names a CA or a client certificate."""
    limit = settings.SIGDL_MAX_MESSAGE_BYTES.get()
    options = [("grpc.max_receive_message_length", limit),
               ("grpc.max_send_message_length", limit)]  # fmt: skip
    if tls is not None and tls.client_enabled:
        return grpc.secure_channel(address, tls.channel_credentials(), options=options)
    return grpc.insecure_channel(address, options=options)


class JobClient:
    """Submit/Watch/Get/Cancel against one stage service; subclasses set `stub_class`."""

    stub_class: ClassVar[type]  # the generated <Service>Stub

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: TlsFiles | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.address = address
        self.tls = tls if tls is not None else TlsFiles.from_settings()
        self.metadata = call_metadata(token if token is not None else settings.SIGDL_TOKEN.get())
        self.timeout_s = timeout_s  # per unary call
        self.channel = connect(address, self.tls)
        self.stub = self.stub_class(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, request) -> common_pb2.Job:
        return self.stub.Submit(request, timeout=self.timeout_s, metadata=self.metadata)

    def get(self, job_id: str) -> common_pb2.Job:
        request = common_pb2.GetJobRequest(job_id=job_id)
        return self.stub.Get(request, timeout=self.timeout_s, metadata=self.metadata)

    def cancel(self, job_id: str) -> common_pb2.Job:
        request = common_pb2.CancelJobRequest(job_id=job_id)
        return self.stub.Cancel(request, timeout=self.timeout_s, metadata=self.metadata)

    def watch(self, job_id: str, from_index: int = 0) -> Iterator[common_pb2.JobEvent]:
        """Every event from `from_index` until the job ends, reconnecting when the connection
        drops (UNAVAILABLE) and resuming after the last event received."""
        next_index, failures = from_index, 0
        while True:
            request = common_pb2.WatchJobRequest(job_id=job_id, from_index=next_index)
            try:
                for event in self.stub.Watch(request, metadata=self.metadata):
                    failures = 0
                    next_index = event.index + 1
                    yield event
                return
            except grpc.RpcError as exc:
                failures += 1
                if exc.code() != grpc.StatusCode.UNAVAILABLE or failures > RECONNECTS:
                    raise
                time.sleep(min(0.2 * 2**failures, 5.0))

    def wait(self, job_id: str, on_event: WatchFn | None = None) -> common_pb2.Job:
        """Follow the job to its end; return its final record."""
        for event in self.watch(job_id):
            if on_event is not None:
                on_event(event)
        return self.get(job_id)


def request_id() -> str:
    return uuid.uuid4().hex


def upload_input(path: str | Path) -> str:
    """The URI a service can read a local input from: a copy under SIGDL_UPLOAD_URI (default
    $SIGDL_HOME/artifacts/uploads), named by its content digest so repeats upload nothing new."""
    source = Path(path).expanduser().resolve()
    if not source.exists():
        raise InputError(f"{str(path)!r} does not exist")
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(source.parent).as_posix().encode())
        with file.open("rb") as stream:
            digest.update(hashlib.file_digest(stream, "sha256").digest())
    root = settings.SIGDL_UPLOAD_URI.get() or store.local_artifact_root() + "/uploads"
    folder = f"{root.rstrip('/')}/{digest.hexdigest()[:20]}"
    target = f"{folder}/{source.name}"
    if store.exists(f"{folder}/.complete"):  # written last: an interrupted upload is redone
        return target
    if source.is_dir():
        store.put_dir(target, source)
    else:
        store.put_file(target, source)
    store.put_bytes(f"{folder}/.complete", b"")
    return target


def input_ref(path_or_uri: str | Path) -> common_pb2.ArtifactRef:
    """An ArtifactRef for a CLI argument: URIs pass through, local paths are uploaded."""
    text = str(path_or_uri)
    if text.startswith(("s3://", "file:")):
        return common_pb2.ArtifactRef(uri=text)
    return common_pb2.ArtifactRef(uri=upload_input(text))


def progress_printer(on_event: EventFn | None) -> WatchFn:
    """Hand each progress event to the caller's printer as the ProgressEvent the stage sent
    (same lines as in-process); state changes and logs go to stderr as they are."""

    def handle(event: common_pb2.JobEvent) -> None:
        if event.kind == "progress" and on_event is not None:
            on_event(ProgressEvent.from_json(json.loads(event.data_json)))
        elif event.kind != "progress":
            print(f"[{event.job_id[:8]}] {event.message}", file=sys.stderr, flush=True)

    return handle


def lineage_message(context: RunContext | dict | None) -> common_pb2.Lineage:
    """A request's Lineage field from a RunContext (or its JSON dict)."""
    if not isinstance(context, RunContext):
        context = RunContext.from_json(context)
    return common_pb2.Lineage(**context.to_json())


def finish_job(client: JobClient, request, on_event: WatchFn | None = None) -> common_pb2.Job:
    """Submit and follow the job to its end; its final record, or RemoteJobError when it
    ended FAILED or CANCELLED."""
    if not request.request_id:
        request.request_id = request_id()
    job = client.submit(request)
    job = client.wait(job.id, on_event)
    if job.state != common_pb2.SUCCEEDED:
        state = common_pb2.JobState.Name(job.state)
        retry = " (retryable)" if job.retryable else ""
        raise RemoteJobError(f"job {job.id} on {client.address} {state}{retry}: {job.error}")
    return job


def run_remote(
    client: JobClient,
    request,
    out: str | Path | None,
    on_event: EventFn | None = None,
) -> dict:
    """Submit, stream progress, fetch the outputs into `out` (None: leave them where the
    service wrote them); return the report as the in-process command returns it (paths in
    `out`). RemoteJobError when the job fails; RemoteCallError (one line naming the address
    and status) when a call is refused or the service cannot be reached."""
    with remote_errors(client.address):
        job = finish_job(client, request, progress_printer(on_event))
    report = json.loads(job.report_json)
    if out is None:
        return report
    # fetched into a staging folder and swapped in whole, as a local run's outputs are: a
    # failed download leaves `out` as it was, and no file of an earlier run survives in it
    out = atomic.check_out_dir(out)
    with atomic.staged_dir(out) as stage:
        store.get_dir(job.out_uri, stage)
        report = jobs.relocate(report, job.out_uri.rstrip("/"), str(out))
        if (stage / "report.json").is_file():
            atomic.write_json(stage / "report.json", report)
    return report
