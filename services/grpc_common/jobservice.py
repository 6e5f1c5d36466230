"""The job API every stage service serves (Submit, Watch, Get, Cancel) over a WorkerPool.

A stage's servicer subclasses `JobServicer`: it names its service, parses its request into
plain parameters (raising FieldError, ArtifactAccessError or ArtifactNotFoundError) and names
the function its worker processes run. Everything else, status codes included, is here:

    class TrainingServicer(JobServicer):
        service, full_name = "training", "sigdl.v1.TrainingService"
        add_to_server = staticmethod(training_pb2_grpc.add_TrainingServiceServicer_to_server)
        job_fn = staticmethod(run_job)
        def parse(self, request) -> dict: ...
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import ClassVar

import grpc

from services.protos.sigdl.v1 import common_pb2
from sigdl.core import jobrun, jobs, roots, store
from sigdl.core.errors import InputError, one_line

# Exception -> status code, first match wins (subclasses before their bases). Every user
# mistake is an InputError (profiles, data sets, recipes, stores, paths outside the roots);
# the ones listed before InputError get their own code, the rest INVALID_ARGUMENT.
STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (jobs.JobNotFoundError, grpc.StatusCode.NOT_FOUND),
    (store.ArtifactNotFoundError, grpc.StatusCode.NOT_FOUND),
    (store.BucketNotFoundError, grpc.StatusCode.NOT_FOUND),
    (roots.ArtifactAccessError, grpc.StatusCode.PERMISSION_DENIED),
    (jobs.RequestConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (jobs.QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (jobs.ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (store.StoreUnreachableError, grpc.StatusCode.UNAVAILABLE),
    (store.StoreError, grpc.StatusCode.FAILED_PRECONDITION),
)
# The services whose jobs SIGDL_JOB_BACKEND (process, kubernetes) runs outside the service:
# training has its own TrainJob (SIGDL_TRAINING_BACKEND), deploy holds the signing key and the
# edge clusters' access.
CLUSTER_JOBS = ("compression", "retest")


@contextlib.contextmanager
def status_from_errors(context: grpc.ServicerContext) -> Iterator[None]:
    """Turn the errors of parsing and of the pool into the status a client can act on."""
    try:
        yield
    except tuple(exc for exc, _ in STATUS_OF) as exc:
        code = next(c for kind, c in STATUS_OF if isinstance(exc, kind))
        context.abort(code, one_line(str(exc)))  # a forged file must not make it huge


def json_object(raw: str, name: str) -> dict:
    """A request's JSON-object field ('' is {}), or FieldError naming it."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise jobs.FieldError(name, f"not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(value, dict):
        raise jobs.FieldError(name, f"expected a JSON object, got {type(value).__name__}")
    return value


def dataset_field(raw: str, name: str = "dataset", required: bool = False) -> str | None:
    """A request's data-set field ('' is None unless `required`): a registered name, or
    `imagefolder:PATH` whose folder lies under the artifact roots (PERMISSION_DENIED
    otherwise), checked at Submit so that a mistake is not a job that fails later."""
    from sigdl.core import datasets  # torch: only once a request names a data set

    if not raw:
        if required:
            raise jobs.FieldError(name, "required: a data-set name (sigdl data list)")
        return None
    try:
        folder = datasets.check_name(raw)
    except InputError as exc:
        raise jobs.FieldError(name, str(exc)) from None
    if folder is not None:
        roots.check_uri(store.as_uri(folder), name)
    return raw


def lineage_of(message: common_pb2.Lineage) -> dict:
    """A request's Lineage as the plain dict `sigdl.core.lineage.RunContext.from_json` reads."""
    if message.iteration < 0:
        raise jobs.FieldError("lineage.iteration", f"{message.iteration}: expected >= 0")
    return {field.name: getattr(message, field.name) for field in message.DESCRIPTOR.fields}


def input_uri(ref: common_pb2.ArtifactRef, name: str, member: str | None = None) -> str:
    """An input artifact's URI, checked against the roots and for existence (NOT_FOUND);
    `member`: a file the input directory must hold."""
    uri = roots.check_uri(ref.uri, f"{name}.uri")
    roots.require_artifact(uri, member)
    return uri


class JobServicer:
    """Submit/Watch/Get/Cancel of one stage; subclasses fill in the class attributes and
    `parse` (and `metrics` when the report's headline numbers are not in report["metrics"])."""

    service: ClassVar[str]  # short name: the job store's file and the jobs/ folder
    full_name: ClassVar[str]  # the gRPC service name, e.g. sigdl.v1.TrainingService
    add_to_server: ClassVar[Callable]  # the generated add_<Service>Servicer_to_server
    job_fn: ClassVar[jobs.JobFn]  # what a worker process runs: (params, JobContext) -> report
    preload: ClassVar[tuple[str, ...]] = ()  # modules the job function needs (imported once)

    def __init__(self, pool: jobs.WorkerPool) -> None:
        self.pool = pool
        if self.service in CLUSTER_JOBS and pool is not None and pool.backend is None:
            pool.backend = jobrun.backend_from_settings()  # None: its own worker processes

    def parse(self, request) -> dict:
        """The job's parameters (JSON-able) from the request; raise on a bad field."""
        raise NotImplementedError

    def metrics(self, report: dict) -> dict[str, float]:
        numbers = report.get("metrics") or {}
        return {k: float(v) for k, v in numbers.items() if isinstance(v, int | float)}

    # --- the RPCs ---------------------------------------------------------------------------
    def Submit(self, request, context: grpc.ServicerContext) -> common_pb2.Job:  # noqa: N802
        with status_from_errors(context):
            out_uri = roots.check_uri(request.out_uri, "out_uri") if request.out_uri else None
            job = self.pool.submit(self.parse(request), out_uri, request.request_id or None)
            return self.job_message(job)

    def Get(self, request: common_pb2.GetJobRequest, context) -> common_pb2.Job:  # noqa: N802
        with status_from_errors(context):
            return self.job_message(self.pool.store.get(_job_id(request)))

    def Cancel(self, request: common_pb2.CancelJobRequest, context) -> common_pb2.Job:  # noqa: N802
        with status_from_errors(context):
            return self.job_message(self.pool.cancel(_job_id(request)))

    def Watch(self, request: common_pb2.WatchJobRequest, context) -> Iterator[common_pb2.JobEvent]:  # noqa: N802
        with status_from_errors(context):
            if request.from_index < 0:
                raise jobs.FieldError("from_index", f"{request.from_index}: expected >= 0")
            events = self.pool.store.events(_job_id(request), request.from_index, context.is_active)
            for event in events:
                yield event_message(event)

    # --- records to messages ----------------------------------------------------------------
    def job_message(self, job: jobs.JobRecord) -> common_pb2.Job:
        report = job.report or {}
        return common_pb2.Job(
            id=job.id, request_id=job.request_id, service=job.service,
            state=common_pb2.JobState.Value(str(job.state)), error=job.error,
            retryable=job.retryable, out_uri=job.out_uri,
            outputs=[common_pb2.ArtifactRef(uri=o["uri"], sha256=o["sha256"])
                     for o in job.outputs],
            metrics=[common_pb2.Metric(name=k, value=v) for k, v in self.metrics(report).items()],
            report_json=json.dumps(report) if job.report is not None else "",
            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
            event_count=job.event_count, worker_pid=job.worker_pid,
            params_json=json.dumps(job.params),
        )  # fmt: skip


def event_message(event: jobs.JobEvent) -> common_pb2.JobEvent:
    numbers = {k: float(v) for k, v in event.data.items()
               if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
    return common_pb2.JobEvent(
        job_id=event.job_id, index=event.index, time=event.time, kind=event.kind,
        state=common_pb2.JobState.Value(str(event.state)), message=event.message,
        metrics=[common_pb2.Metric(name=k, value=v) for k, v in numbers.items()],
        data_json=json.dumps(event.data) if event.data else "",
    )  # fmt: skip


def _job_id(request) -> str:
    if not request.job_id:
        raise jobs.FieldError("job_id", "required")
    return request.job_id
