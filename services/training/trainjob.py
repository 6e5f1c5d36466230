"""Multi-node training as a Kubeflow Trainer `TrainJob` (trainer.kubeflow.org/v1alpha1).

With `SIGDL_TRAINING_BACKEND=trainjob` the training stage still builds the model, evaluates,
exports and logs lineage in its own process, but the data-parallel `fit` runs on the cluster:

1. the job's inputs (`job.json`, `init.safetensors`, as `sigdl.core.distributed.write_job` lays
   them out) go to `$SIGDL_TRAINJOB_URI/<job name>/`, an s3:// prefix every node reaches, since
   the nodes share no disk;
2. `render_trainjob` (pure) turns the config and a `TrainJobSpec` into the manifest: runtime
   `torch-distributed`, `numNodes`, `numProcPerNode`, `resourcesPerNode` with GPUs, and the
   trainer command `torchrun -m sigdl.core.distributed <job URI>`; torchrun reads PET_NNODES,
   PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT, which the runtime
   injects into every node; the S3 keys come from a Secret by reference, never by value;
3. `TrainJobRunner` creates it through the Kubernetes API and follows it as `TrainJobWork`
   with the loop the job backends share (`jobrun.WorkRunner.follow`): its status conditions
   to Complete or Failed (`outcome_of`; a `trainjob` progress event at every change, and the
   `epoch` events rank 0 stores under the job URI's `events/` as it trains), then loads the
   weights and history that rank 0 wrote back under the job URI. Its handle (namespace, name,
   events forwarded) goes to the job's record (`JobContext.record`): a service that stops
   leaves the TrainJob running, and the next one runs the job again with that handle
   (`JobContext.handle`), following the TrainJob instead of creating another.

    SIGDL_TRAINING_BACKEND=trainjob SIGDL_TRAINJOB_IMAGE=registry/sigdl:1.0 \\
    SIGDL_TRAINJOB_URI=s3://sigdl/trainjobs SIGDL_TRAINJOB_S3_SECRET=sigdl-minio \\
    SIGDL_TRAINJOB_NODES=2 SIGDL_TRAINJOB_GPUS_PER_NODE=1 sigdl serve training

The Kubernetes client comes from the `cluster` extra (`pip install 'sigdl[cluster]'`) and is
imported only inside the functions that talk to a cluster.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sigdl.core import distributed, jobrun, jobs, settings, store
from sigdl.core.checkpoint import ModelMeta, PixelModel
from sigdl.core.errors import InputError, one_line
from sigdl.core.events import EventFn, ProgressEvent, epoch_event
from sigdl.core.kubejob import (
    POD_SETTINGS,
    QUANTITY,
    current_namespace,
    load_kube_config,
    s3_key_env,
)
from sigdl.core.kubejob import SECRET_KEYS as SECRET_KEYS  # the names a Secret must hold
from sigdl.core.training import TrainConfig

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
BACKENDS = ("local", "trainjob")
GPU_RESOURCE = "nvidia.com/gpu"
# settings a node needs, passed by value; secrets are never among them
FORWARDED = (*POD_SETTINGS, settings.SIGDL_PROGRESS)
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def uses_trainjob() -> bool:
    """Whether SIGDL_TRAINING_BACKEND sends training to the cluster (InputError if unknown)."""
    backend = settings.SIGDL_TRAINING_BACKEND.get().strip().lower()
    if backend not in BACKENDS:
        raise InputError(
            f"SIGDL_TRAINING_BACKEND={backend!r}: expected one of {', '.join(BACKENDS)}"
        )
    return backend == "trainjob"


@dataclass(frozen=True)
class TrainJobSpec:
    """Where and on what a TrainJob runs; `from_settings()` reads SIGDL_TRAINJOB_*."""

    image: str  # the SigDL image every node runs
    namespace: str  # of the TrainJob
    nodes: int = 2  # numNodes
    nproc_per_node: int = 1  # numProcPerNode: torchrun processes (DDP ranks) per node
    gpus_per_node: int = 0  # nvidia.com/gpu per node; 0: CPU nodes
    cpu: str = "2"  # requested per node (a Kubernetes quantity)
    memory: str = "4Gi"  # requested and limited per node
    runtime: str = "torch-distributed"  # the ClusterTrainingRuntime referred to
    s3_secret: str | None = None  # Secret holding SECRET_KEYS (None: anonymous S3)

    def __post_init__(self) -> None:
        checks = [
            (bool(self.image.strip()), "image", "an image reference (set SIGDL_TRAINJOB_IMAGE)"),
            (bool(_DNS_LABEL.match(self.namespace)), "namespace", "a DNS label"),
            (self.nodes >= 1, "nodes", "an integer >= 1"),
            (self.nproc_per_node >= 1, "nproc_per_node", "an integer >= 1"),
            (self.gpus_per_node >= 0, "gpus_per_node", "an integer >= 0"),
            (
                not self.gpus_per_node or self.nproc_per_node <= self.gpus_per_node,
                "nproc_per_node",
                f"at most gpus_per_node={self.gpus_per_node} (one GPU per process)",
            ),
            (bool(QUANTITY.match(self.cpu)), "cpu", "a Kubernetes quantity such as 2 or 500m"),
            (bool(QUANTITY.match(self.memory)), "memory", "a Kubernetes quantity such as 4Gi"),
            (bool(self.runtime.strip()), "runtime", "a ClusterTrainingRuntime name"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise InputError(f"TrainJob {name}={getattr(self, name)!r}: expected {expected}")

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node

    @classmethod
    def from_settings(cls, nproc_per_node: int) -> TrainJobSpec:
        image = settings.SIGDL_TRAINJOB_IMAGE.get()
        if not image:
            raise InputError("SIGDL_TRAINJOB_IMAGE is unset: the trainjob backend needs an image")
        return cls(
            image=image,
            namespace=settings.SIGDL_TRAINJOB_NAMESPACE.get() or current_namespace(),
            nodes=settings.SIGDL_TRAINJOB_NODES.get(),
            nproc_per_node=nproc_per_node,
            gpus_per_node=settings.SIGDL_TRAINJOB_GPUS_PER_NODE.get(),
            cpu=settings.SIGDL_TRAINJOB_CPU.get(),
            memory=settings.SIGDL_TRAINJOB_MEMORY.get(),
            runtime=settings.SIGDL_TRAINJOB_RUNTIME.get(),
            s3_secret=settings.SIGDL_TRAINJOB_S3_SECRET.get(),
        )


def job_name(cfg: TrainConfig) -> str:
    """A fresh TrainJob name: an RFC 1035 label naming the model (`sigdl-lenet-5-1a2b3c4d`)."""
    slug = re.sub(r"[^a-z0-9]+", "-", cfg.model.lower()).strip("-")[:24].strip("-")
    return f"sigdl-{slug}-{secrets.token_hex(4)}" if slug else f"sigdl-{secrets.token_hex(4)}"


def node_command(job_uri: str) -> list[str]:
    """What every node runs: torchrun takes the node layout from the injected PET_* variables."""
    return ["torchrun", "-m", "sigdl.core.distributed", job_uri]


def node_env(spec: TrainJobSpec, environment: Mapping[str, str]) -> list[dict]:
    """The trainer's env: FORWARDED settings by value, the S3 keys from spec.s3_secret by
    reference. A service holding S3 keys but naming no Secret is refused: its nodes would
    reach the job's URI without them."""
    forwarded = [s.name for s in FORWARDED if s.name in environment]
    env: list[dict] = [{"name": name, "value": environment[name]} for name in forwarded]
    return env + s3_key_env(spec.s3_secret, environment, "SIGDL_TRAINJOB_S3_SECRET",
                            "the TrainJob's nodes")  # fmt: skip


def render_trainjob(
    cfg: TrainConfig,
    spec: TrainJobSpec,
    *,
    name: str,
    job_uri: str,
    environment: Mapping[str, str],
) -> dict[str, Any]:
    """The TrainJob manifest that trains `cfg` with `spec`'s nodes on the job at `job_uri`.

    `environment` is the settings' environment (`settings.environment()`); only FORWARDED
    settings are copied from it, and no secret value ever is."""
    if not _DNS_LABEL.match(name) or len(name) > 63:
        raise InputError(f"TrainJob name {name!r}: expected an RFC 1035 label of <= 63 chars")
    store.as_uri(job_uri)  # a URI with a registered scheme, or InvalidURIError
    if cfg.batch_size % spec.world_size:
        raise InputError(
            f"batch_size={cfg.batch_size} must be divisible by the TrainJob's {spec.world_size} "
            f"processes ({spec.nodes} nodes x {spec.nproc_per_node})"
        )
    requests: dict[str, str | int] = {"cpu": spec.cpu, "memory": spec.memory}
    limits: dict[str, str | int] = {"memory": spec.memory}
    if spec.gpus_per_node:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = spec.gpus_per_node
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "sigdl",
                "app.kubernetes.io/component": "training",
            },
            "annotations": {
                "sigdl.io/job-uri": job_uri,
                "sigdl.io/train-config": json.dumps(cfg.to_dict(), sort_keys=True),
            },
        },
        "spec": {
            "runtimeRef": {"name": spec.runtime},
            "trainer": {
                "image": spec.image,
                "command": node_command(job_uri),
                "numNodes": spec.nodes,
                "numProcPerNode": spec.nproc_per_node,
                "resourcesPerNode": {"requests": requests, "limits": limits},
                "env": node_env(spec, environment),
            },
        },
    }


# --- following a TrainJob ----------------------------------------------------------------------
@dataclass(frozen=True)
class TrainJobStatus:
    """What the controller says of a TrainJob, read from its `status`."""

    phase: str  # Complete | Failed | Suspended | Running | Pending
    reason: str  # of the deciding condition ('' if none)
    message: str
    active: int  # pods running, summed over the TrainJob's jobs
    ready: int
    succeeded: int
    failed: int
    progress: int | None  # trainerStatus.progressPercentage, where the runtime reports it

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> TrainJobStatus:
        status = obj.get("status") or {}
        true = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
        jobs = status.get("jobsStatus") or []
        pods = ("active", "ready", "succeeded", "failed")
        counts = {k: sum(int(j.get(k) or 0) for j in jobs) for k in pods}
        decided = next((true[t] for t in ("Failed", "Complete", "Suspended") if t in true), None)
        if decided is not None:
            phase = decided["type"]
        else:
            phase = "Running" if counts["active"] else "Pending"
        progress = (status.get("trainerStatus") or {}).get("progressPercentage")
        return cls(
            phase,
            (decided or {}).get("reason", ""),
            (decided or {}).get("message", ""),
            progress=progress if isinstance(progress, int) else None,
            **counts,
        )

    def event(self, name: str) -> ProgressEvent:
        total = 100 if self.progress is not None else None
        pods = {
            "active": self.active,
            "ready": self.ready,
            "succeeded": self.succeeded,
            "failed": self.failed,
        }
        return ProgressEvent.of(
            "trainjob", self.progress, total, trainjob=name, phase=self.phase, **pods
        )


class TrainJobError(RuntimeError):
    """The Kubernetes API refused or failed a call on a TrainJob, or the TrainJob ended Failed
    (or was suspended): what and why, on one line."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of a refused call (404: not found)


def outcome_of(handle: jobrun.WorkHandle, status: TrainJobStatus | None) -> dict | None:
    """What following the TrainJob `handle` names decides from its `status` (None: the API
    has no such TrainJob): None while it runs; {"result": {}} once Complete (its outputs are
    under handle.job_uri); else {"error": one line, "retryable": bool}."""
    if status is None:
        return {
            "error": f"{handle.name} is gone (deleted before it ended): retry the job",
            "retryable": True,
        }
    if status.phase == "Complete":
        return {"result": {}}
    if status.phase in ("Failed", "Suspended"):
        why = f" ({status.reason})" if status.reason else ""
        detail = one_line(status.message)[:300] or "no message"
        return {
            "error": f"{handle.name} {status.phase.lower()}{why}: {detail}",
            "retryable": status.phase == "Suspended",
        }
    return None


class TrainJobRunner:
    """Creates TrainJobs through the Kubernetes API and follows them to the end.

    `api` is a `kubernetes.client.CustomObjectsApi` (made from the in-cluster service account
    or the kubeconfig when not given); anything with its three custom-object calls will do."""

    name = "trainjob"  # the WorkHandle's backend

    def __init__(self, spec: TrainJobSpec, api: Any = None, poll_s: float | None = None) -> None:
        self.spec = spec
        self._api = api
        self.poll_s = settings.SIGDL_TRAINJOB_POLL_S.get() if poll_s is None else poll_s

    @property
    def api(self) -> Any:
        if self._api is None:
            load_kube_config()  # an InputError naming the extra when the client is missing
            from kubernetes import client

            self._api = client.CustomObjectsApi()
        return self._api

    def create(self, manifest: Mapping[str, Any]) -> str:
        name = manifest["metadata"]["name"]
        with _api_errors(f"creating TrainJob {name!r} in namespace {self.spec.namespace!r}"):
            self.api.create_namespaced_custom_object(
                GROUP, VERSION, self.spec.namespace, PLURAL, dict(manifest)
            )
        return name

    def status(self, name: str) -> TrainJobStatus:
        with _api_errors(f"reading TrainJob {name!r} in namespace {self.spec.namespace!r}"):
            obj = self.api.get_namespaced_custom_object(
                GROUP, VERSION, self.spec.namespace, PLURAL, name
            )
        return TrainJobStatus.of(obj)

    def delete(self, name: str) -> None:
        """Delete the TrainJob (and so its jobs and pods); one already gone is no error."""
        try:
            with _api_errors(f"deleting TrainJob {name!r} in namespace {self.spec.namespace!r}"):
                self.api.delete_namespaced_custom_object(
                    GROUP, VERSION, self.spec.namespace, PLURAL, name
                )
        except TrainJobError as exc:
            if exc.status != 404:
                raise

    def start(
        self, model: PixelModel, cfg: TrainConfig, channels: int, size: int, root_uri: str
    ) -> jobrun.WorkHandle:
        """Store the inputs of training `model` under `root_uri` and create the TrainJob."""
        name = job_name(cfg)
        job_uri = distributed.job_file_uri(root_uri, name)
        manifest = render_trainjob(
            cfg, self.spec, name=name, job_uri=job_uri, environment=settings.environment()
        )
        with tempfile.TemporaryDirectory(prefix="sigdl-trainjob-") as tmp:
            distributed.write_job(model, cfg, channels, size, Path(tmp))
            for file in distributed.INPUTS:
                store.put_file(distributed.job_file_uri(job_uri, file), Path(tmp) / file)
        self.create(manifest)
        return jobrun.WorkHandle(self.name, job_uri, namespace=self.spec.namespace, job=name)

    def attach(self, raw: str) -> jobrun.WorkHandle:
        """The handle of the TrainJob an earlier run of the job recorded (JobContext.handle),
        or RetryableError when this runner cannot follow it."""
        handle = jobrun.WorkHandle.from_json(raw)
        if handle.backend != self.name or handle.namespace != self.spec.namespace:
            raise jobs.RetryableError(
                f"its work, {handle.name}, is not a TrainJob in this service's namespace "
                f"{self.spec.namespace!r}: retry the job"
            )
        return handle

    def train(
        self,
        model: PixelModel,
        cfg: TrainConfig,
        channels: int,
        size: int,
        root_uri: str,
        on_event: EventFn | None = None,
        *,
        resume: str = "",
        record: Callable[[str], None] | None = None,
    ) -> list[dict]:
        """Train `model` in place on the cluster under `root_uri`; return the per-epoch rows.
        `record` keeps the TrainJob's handle with the job; `resume` (such a handle) follows
        that TrainJob again instead of creating one. A failure or a cancel (SIGTERM) on the
        way deletes the TrainJob; a service that stops (SIGKILL) leaves it running."""
        if resume:
            handle, line = self.attach(resume), "followed again"
        else:
            handle, line = self.start(model, cfg, channels, size, root_uri), "created"
        shape = f"{self.spec.nodes} nodes x {self.spec.nproc_per_node} processes"
        hooks = jobs.BackendHooks(
            emit=on_event or (lambda event: None),
            stop=lambda: "",  # a Cancel is a SIGTERM (_sigterm_raises)
            record=lambda raw, pid: record(raw) if record else None,
        )
        work = TrainJobWork(self, handle)
        try:
            with _sigterm_raises():
                ended = jobrun.WorkRunner.follow(
                    work, hooks, f"{handle.name}: {line}, {shape}, job at {handle.job_uri}"
                )
        except BaseException:
            with contextlib.suppress(Exception):
                work.stop()
            raise
        if "error" in ended:
            with contextlib.suppress(Exception):
                work.stop()
            raise (jobs.RetryableError if ended["retryable"] else TrainJobError)(ended["error"])
        with tempfile.TemporaryDirectory(prefix="sigdl-trainjob-") as tmp:
            for file in distributed.OUTPUTS:
                store.get_file(distributed.job_file_uri(handle.job_uri, file), Path(tmp) / file)
            history = distributed.read_result(model, Path(tmp))
        stored = jobrun.EventReader(handle.job_uri).new_events()  # every run's, from the first
        epochs = {e.done for e in stored if e.kind == "epoch"}
        for row in history:  # epochs whose events never made it to the store
            if int(row["epoch"]) not in epochs and on_event:
                on_event(epoch_event(row, cfg.epochs))
        return history


class TrainJobWork:
    """One TrainJob, followed (jobrun.Work): a `trainjob` event at every change of its phase,
    pod counts or progress; its end decided by `outcome_of`."""

    def __init__(self, runner: TrainJobRunner, handle: jobrun.WorkHandle) -> None:
        self.runner, self.handle = runner, handle
        self._last: TrainJobStatus | None = None

    def look(self, emit: EventFn) -> dict | None:
        try:
            status: TrainJobStatus | None = self.runner.status(self.handle.job)
        except TrainJobError as exc:
            if exc.status != 404:
                raise
            status = None
        if status is not None and status != self._last:
            emit(status.event(self.handle.job))
            self._last = status
        return outcome_of(self.handle, status)

    def wait(self) -> None:
        time.sleep(self.runner.poll_s)

    def stop(self) -> None:
        self.runner.delete(self.handle.job)


def train_on_cluster(
    model: PixelModel,
    meta: ModelMeta,
    cfg: TrainConfig,
    nproc: int,
    data_dir: str | None,
    on_event: EventFn | None,
    *,
    resume: str = "",
    record: Callable[[str], None] | None = None,
) -> list[dict]:
    """The training stage's `train_model` when SIGDL_TRAINING_BACKEND=trainjob: `nproc`
    processes on each of SIGDL_TRAINJOB_NODES nodes. `resume` and `record`: the job's
    (JobContext.handle, JobContext.record), for the TrainJob to be followed again after a
    restart."""
    if resume and not uses_trainjob():
        raise jobs.RetryableError(
            "its work is a TrainJob, and this service trains in its own process "
            "(SIGDL_TRAINING_BACKEND=local): retry the job"
        )
    if data_dir is not None:
        raise InputError(
            f"data_dir={data_dir!r} is a folder here, which a TrainJob's nodes cannot read: "
            "give the nodes the data set through SIGDL_DATA or its download"
        )
    root = settings.SIGDL_TRAINJOB_URI.get()
    if not root or not root.startswith("s3://"):
        raise InputError(
            f"SIGDL_TRAINJOB_URI={root!r}: expected an s3:// prefix, which every node reaches"
        )
    runner = TrainJobRunner(TrainJobSpec.from_settings(nproc))
    return runner.train(
        model, cfg, meta.channels, meta.input_size, root, on_event, resume=resume, record=record
    )


# --- the Kubernetes client (the `cluster` extra; sigdl/core/kubejob.py configures it) --------
@contextlib.contextmanager
def _api_errors(what: str) -> Iterator[None]:
    """Kubernetes API failures as one line that says what was being done and how to fix it."""
    try:
        from kubernetes.client import exceptions
    except ImportError:  # a stand-in API without the client: its errors pass through
        yield
        return
    try:
        yield
    except exceptions.ApiException as exc:
        hint = {
            403: "the service account may not; grant it trainjobs in trainer.kubeflow.org",
            404: f"not found (is Kubeflow Trainer, {GROUP}/{VERSION}, installed?)",
            409: "a TrainJob of that name exists",
        }.get(exc.status, " ".join(str(exc.reason).split()))
        raise TrainJobError(f"{what}: HTTP {exc.status}: {hint}", exc.status) from None


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """A job Cancel sends SIGTERM: raise SystemExit so the TrainJob is deleted on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
