"""A service's jobs as Kubernetes Jobs (batch/v1), so that the work scales with the cluster.

With `SIGDL_JOB_BACKEND=kubernetes` the compression and retest services keep their job records
(SQLite, or the PostgreSQL that every replica shares) but run no job in their own pod: each one
becomes a Job in the service's namespace, running the same image.

1. the service stores the job's request under `$SIGDL_JOB_URI/<service>/<job id>/`, an s3://
   prefix the pods reach (sigdl/core/jobrun.py lays that folder out);
2. `render_job` (pure) turns it into the manifest: `python -m sigdl.core.jobrun --fn
   MODULE:FUNCTION JOB_URI` in the chart's security context (non-root, read-only root file
   system, no capabilities, seccomp RuntimeDefault), resources from SIGDL_JOB_* (GPUs,
   nodeSelector and tolerations included), the S3 keys from a Secret by reference (never by
   value), backoffLimit, activeDeadlineSeconds, ttlSecondsAfterFinished, and labels naming the
   service and the job;
3. `KubeJobLauncher` creates it, and `jobrun.WorkRunner` (the pool's `JobBackend`, shared with
   the process backend) follows it through `KubeJobWork`: a watch on the Job, a `kubejob` event
   at every change of its status, its pods' states as log events, and the progress the pod
   stores as the job's own events; a Complete Job gives the result the pod stored, a Failed one
   a FAILED job (retryable, unless it ran past its deadline), a Job deleted under it a FAILED
   job saying so, and a Cancel deletes the Job (propagationPolicy Background). The Job's name
   is kept with the job record: a service that restarts while it runs follows it again.

    SIGDL_JOB_BACKEND=kubernetes SIGDL_JOB_IMAGE=registry/sigdl:1.0 \\
    SIGDL_JOB_URI=s3://sigdl/jobs SIGDL_JOB_S3_SECRET=sigdl-minio sigdl serve compression

The Kubernetes client comes from the `cluster` extra and is imported only where a cluster is
talked to; the chart (jobs.backend: kubernetes) sets all of this and grants the Role it needs.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigdl.core import jobrun, jobs, settings
from sigdl.core.errors import InputError, one_line
from sigdl.core.events import EventFn, ProgressEvent, log

GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER = "job"
RUN_AS = 10001  # the image's `sigdl` user (Dockerfile), as the chart's podSecurityContext
SCRATCH = "/tmp"  # an emptyDir: the root file system is read-only
# the chart's S3 Secret keys (charts/sigdl/values.yaml: s3.accessKeyKey, s3.secretKeyKey)
SECRET_KEYS = {"SIGDL_S3_ACCESS_KEY": "accessKey", "SIGDL_S3_SECRET_KEY": "secretKey"}
SECRET_ALIASES = (*settings.SIGDL_S3_ACCESS_KEY.aliases, *settings.SIGDL_S3_SECRET_KEY.aliases)
# the store and data settings every pod the services create needs (a Job's, a TrainJob's
# nodes'), passed by value; secrets are never among them
POD_SETTINGS = (
    settings.SIGDL_S3_ENDPOINT,
    settings.SIGDL_S3_SECURE,
    settings.SIGDL_S3_REGION,
    settings.SIGDL_DATA,
    settings.SIGDL_OFFLINE,
    settings.SIGDL_DOWNLOAD_TIMEOUT_S,
)
# settings a job's pod needs, passed by value
FORWARDED = (
    *POD_SETTINGS,
    settings.SIGDL_MLFLOW_TRACKING_URI,
    settings.SIGDL_MLFLOW_EXPERIMENT,
    settings.SIGDL_NUM_THREADS,
    settings.SIGDL_JOB_EVENTS_FLUSH_S,
)
DATA_PATH = "/data"  # where a data-set claim is mounted when SIGDL_DATA names no folder
LABEL_JOB, LABEL_SERVICE = "sigdl.io/job-id", "sigdl.io/service"
# a Kubernetes resource quantity, as the API's schema has it
QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# a node label's key (optionally prefixed) and value, as the API validates them
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TOLERATION = {"key": str, "operator": str, "value": str, "effect": str, "tolerationSeconds": int}
_OPERATORS, _EFFECTS = ("Exists", "Equal"), ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclass(frozen=True)
class JobSpec:
    """Where and on what a service's Jobs run; `from_settings()` reads SIGDL_JOB_*."""

    image: str  # the SigDL image
    namespace: str  # of the Jobs (the service's own)
    root_uri: str  # s3:// prefix holding a folder per job
    cpu: str = "2"  # requested (a Kubernetes quantity)
    memory: str = "4Gi"  # requested and limited
    gpus: int = 0  # nvidia.com/gpu requested and limited
    node_selector: Mapping[str, str] = field(default_factory=dict)  # node labels to run on
    tolerations: tuple[Mapping[str, Any], ...] = ()  # taints of those nodes the pods tolerate
    s3_secret: str | None = None  # Secret holding SECRET_KEYS (None: anonymous S3)
    data_claim: str | None = None  # PVC of data sets, mounted read-only at SIGDL_DATA
    pull_secrets: tuple[str, ...] = ()  # imagePullSecrets
    backoff_limit: int = 1  # pod failures retried
    deadline_s: int = 86400  # activeDeadlineSeconds
    ttl_s: int = 3600  # ttlSecondsAfterFinished

    def __post_init__(self) -> None:
        checks = [
            (bool(self.image.strip()), "image", "an image reference (set SIGDL_JOB_IMAGE)"),
            (bool(_DNS_LABEL.match(self.namespace)), "namespace", "a DNS label"),
            (self.root_uri.startswith("s3://"), "root_uri",
             "an s3:// prefix every pod reaches (set SIGDL_JOB_URI)"),
            (bool(QUANTITY.match(self.cpu)), "cpu", "a Kubernetes quantity such as 2 or 500m"),
            (bool(QUANTITY.match(self.memory)), "memory", "a Kubernetes quantity such as 4Gi"),
            (self.gpus >= 0, "gpus", "an integer >= 0"),
            (self.backoff_limit >= 0, "backoff_limit", "an integer >= 0"),
            (self.deadline_s >= 1, "deadline_s", "an integer >= 1"),
            (self.ttl_s >= 0, "ttl_s", "an integer >= 0"),
            (all(_DNS_LABEL.match(s) for s in self.pull_secrets), "pull_secrets",
             "Secret names (DNS labels)"),
        ]  # fmt: skip
        for ok, name, expected in checks:
            if not ok:
                raise InputError(f"Job {name}={getattr(self, name)!r}: expected {expected}")
        for key, value in self.node_selector.items():
            if not (isinstance(key, str) and _LABEL_KEY.match(key)
                    and isinstance(value, str) and _LABEL_VALUE.match(value)):  # fmt: skip
                raise InputError(
                    f"Job node_selector {key!r}: {value!r}: expected a node label (key: value "
                    "strings, e.g. nvidia.com/gpu.present: 'true')"
                )
        for toleration in self.tolerations:
            _check_toleration(toleration)

    @classmethod
    def from_settings(cls) -> JobSpec:
        image = settings.SIGDL_JOB_IMAGE.get()
        if not image:
            raise InputError("SIGDL_JOB_IMAGE is unset: the kubernetes job backend needs an image")
        pull = settings.SIGDL_JOB_PULL_SECRETS.get() or ""
        return cls(
            image=image,
            namespace=settings.SIGDL_JOB_NAMESPACE.get() or current_namespace(),
            root_uri=(settings.SIGDL_JOB_URI.get() or "").rstrip("/"),
            cpu=settings.SIGDL_JOB_CPU.get(),
            memory=settings.SIGDL_JOB_MEMORY.get(),
            gpus=settings.SIGDL_JOB_GPUS.get(),
            node_selector=settings.SIGDL_JOB_NODE_SELECTOR.get() or {},
            tolerations=tuple(settings.SIGDL_JOB_TOLERATIONS.get() or ()),
            s3_secret=settings.SIGDL_JOB_S3_SECRET.get(),
            data_claim=settings.SIGDL_JOB_DATA_CLAIM.get(),
            pull_secrets=tuple(s.strip() for s in pull.split(",") if s.strip()),
            backoff_limit=settings.SIGDL_JOB_BACKOFF_LIMIT.get(),
            deadline_s=settings.SIGDL_JOB_DEADLINE_S.get(),
            ttl_s=settings.SIGDL_JOB_TTL_S.get(),
        )

    def job_uri(self, service: str, job_id: str) -> str:
        return f"{self.root_uri}/{service}/{job_id}"


def _check_toleration(toleration: object) -> None:
    """A toleration as the Kubernetes API takes it, or InputError naming what is wrong."""
    where = f"Job toleration {toleration!r}"
    if not isinstance(toleration, Mapping):
        raise InputError(
            f"{where}: expected an object such as "
            "{'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}"
        )
    for key, value in toleration.items():
        kind = _TOLERATION.get(key)
        if kind is None or not isinstance(value, kind) or isinstance(value, bool):
            raise InputError(f"{where}: field {key!r}: expected one of {', '.join(_TOLERATION)} "
                             "(tolerationSeconds an integer, the others strings)")  # fmt: skip
    if toleration.get("operator", "Equal") not in _OPERATORS:
        raise InputError(f"{where}: operator: expected one of {', '.join(_OPERATORS)}")
    if toleration.get("effect", "") not in ("", *_EFFECTS):
        raise InputError(f"{where}: effect: expected one of {', '.join(_EFFECTS)}")
    if toleration.get("operator") == "Exists" and toleration.get("value"):
        raise InputError(f"{where}: operator Exists takes no value")


def job_name(service: str, job_id: str) -> str:
    """The Job of a service's job: `sigdl-compression-1a2b3c4d5e6f7a8b` (one per job id)."""
    name = f"sigdl-{service}-{job_id[:16]}".lower()
    if not _DNS_LABEL.match(name) or len(name) > 63:
        raise InputError(f"Job name {name!r}: expected an RFC 1123 label of <= 63 chars")
    return name


def job_labels(service: str, job_id: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": "sigdl",
        "app.kubernetes.io/component": service,
        "app.kubernetes.io/managed-by": f"sigdl-{service}",
        LABEL_SERVICE: service,
        LABEL_JOB: job_id,
        "sigdl.io/client": "true",  # the chart's NetworkPolicies let it reach MinIO and MLflow
    }


def job_command(fn_ref: str, job_uri: str) -> list[str]:
    return ["python", "-m", "sigdl.core.jobrun", "--fn", fn_ref, job_uri]


def job_env(spec: JobSpec, environment: Mapping[str, str]) -> list[dict]:
    """FORWARDED settings by value, the S3 keys from spec.s3_secret by reference. A service
    holding S3 keys but naming no Secret is refused: its Jobs would reach no artifact."""
    env = [{"name": s.name, "value": environment[s.name]} for s in FORWARDED
           if s.name in environment]  # fmt: skip
    if spec.data_claim and settings.SIGDL_DATA.name not in environment:
        env.append({"name": settings.SIGDL_DATA.name, "value": DATA_PATH})
    env += [
        {"name": settings.SIGDL_HOME.name, "value": f"{SCRATCH}/sigdl"},
        {"name": settings.SIGDL_PROGRESS.name, "value": "0"},
        {"name": "HOME", "value": SCRATCH},  # caches of the libraries it imports
    ]
    return env + s3_key_env(spec.s3_secret, environment, "SIGDL_JOB_S3_SECRET", "the Jobs' pods")


def s3_key_env(secret: str | None, environment: Mapping[str, str], setting: str,
               pods: str) -> list[dict]:  # fmt: skip
    """The S3 keys as env entries that reference `secret` (never their values). A service
    holding S3 keys but naming no Secret (`setting`) is refused: `pods` would reach the store
    without them."""
    if secret:
        return [{"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                for name, key in SECRET_KEYS.items()]  # fmt: skip
    if set(environment) & {settings.SIGDL_S3_ACCESS_KEY.name, *SECRET_ALIASES}:
        raise InputError(
            f"SIGDL_S3_ACCESS_KEY is set but {setting} names no Secret: {pods} need the S3 "
            "keys from a Secret (keys accessKey, secretKey)"
        )
    return []


def render_job(
    spec: JobSpec,
    *,
    service: str,
    job_id: str,
    fn_ref: str,
    job_uri: str,
    environment: Mapping[str, str],
) -> dict[str, Any]:
    """The batch/v1 Job that runs `service`'s job `job_id`, stored at `job_uri`, with the job
    function `fn_ref` (MODULE:FUNCTION). `environment` is `settings.environment()`: only
    FORWARDED settings are copied from it, and no secret value ever is."""
    name = job_name(service, job_id)
    labels = job_labels(service, job_id)
    requests: dict[str, str | int] = {"cpu": spec.cpu, "memory": spec.memory}
    limits: dict[str, str | int] = {"memory": spec.memory}
    if spec.gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = spec.gpus
    mounts: list[dict] = [{"name": "scratch", "mountPath": SCRATCH}]
    volumes: list[dict] = [{"name": "scratch", "emptyDir": {}}]
    if spec.data_claim:
        data = environment.get(settings.SIGDL_DATA.name, DATA_PATH)
        mounts.append({"name": "data", "mountPath": data, "readOnly": True})
        volumes.append(
            {"name": "data",
             "persistentVolumeClaim": {"claimName": spec.data_claim, "readOnly": True}}
        )  # fmt: skip
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # a failed pod is replaced, as backoffLimit counts
        "automountServiceAccountToken": False,  # the work needs no Kubernetes API
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": spec.image,
                "command": job_command(fn_ref, job_uri),
                "env": job_env(spec, environment),
                "resources": {"requests": requests, "limits": limits},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    if spec.pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in spec.pull_secrets]
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": {"sigdl.io/job-uri": job_uri},
        },
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.deadline_s,
            "ttlSecondsAfterFinished": spec.ttl_s,
            # a pod that cannot run its job (no request, no store) fails the Job at once; one
            # evicted or preempted (not its own fault) does not count against backoffLimit
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "In",
                            "values": [jobrun.EXIT_NO_RETRY],
                        },
                    },
                    {
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


# --- following a Job ---------------------------------------------------------------------------
@dataclass(frozen=True)
class JobStatus:
    """What the Job controller says of a Job, read from its `status`."""

    phase: str  # Succeeded | Failed | Suspended | Running | Pending
    reason: str  # of the deciding condition ('' if none)
    message: str
    active: int  # pods running
    ready: int
    succeeded: int
    failed: int  # pods that failed (each one a retry, up to backoffLimit)

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> JobStatus:
        status = obj.get("status") or {}
        true = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
        phases = {"Failed": "Failed", "Complete": "Succeeded", "Suspended": "Suspended"}
        decided = next((t for t in phases if t in true), None)
        counts = {k: int(status.get(k) or 0) for k in ("active", "ready", "succeeded", "failed")}
        if decided is not None:
            phase = phases[decided]
        else:
            phase = "Running" if counts["active"] else "Pending"
        condition = true.get(decided, {}) if decided else {}
        return cls(phase, condition.get("reason") or "", condition.get("message") or "", **counts)

    @property
    def ended(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    def event(self, name: str) -> ProgressEvent:
        return ProgressEvent.of(
            "kubejob", job=name, phase=self.phase, active=self.active, ready=self.ready,
            succeeded=self.succeeded, failed=self.failed,
        )  # fmt: skip


def pod_state(pod: Mapping[str, Any]) -> str:
    """One line of a pod's state: its phase and why its container waits or ended."""
    status = pod.get("status") or {}
    line = status.get("phase") or "Pending"
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        detail = state.get("waiting") or state.get("terminated")
        if detail and detail.get("reason"):
            line += f" ({detail['reason']}"
            if "exitCode" in detail:
                line += f", exit {detail['exitCode']}"
            if detail.get("message"):
                line += f": {one_line(detail['message'])[:200]}"
            line += ")"
    return line


class KubeJobError(RuntimeError):
    """The Kubernetes API refused or failed a call: what was being done, on one line."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status (404: not found)


class KubeJobLauncher:
    """SIGDL_JOB_BACKEND=kubernetes: each job's work is a Kubernetes Job (jobrun.Launcher).

    `batch` and `core` are a `kubernetes.client.BatchV1Api` and `CoreV1Api` (made from the
    in-cluster service account or the kubeconfig when not given)."""

    name = "kubernetes"

    def __init__(
        self, spec: JobSpec, batch: Any = None, core: Any = None, poll_s: float | None = None
    ) -> None:
        self.spec = spec
        self._batch, self._core = batch, core
        self.poll_s = settings.SIGDL_JOB_POLL_S.get() if poll_s is None else poll_s

    @property
    def batch(self) -> Any:
        if self._batch is None:
            load_kube_config()
            from kubernetes import client

            self._batch = client.BatchV1Api()
        return self._batch

    @property
    def core(self) -> Any:
        if self._core is None:
            from kubernetes import client

            self._core = client.CoreV1Api(self.batch.api_client)
        return self._core

    # --- jobrun.Launcher ------------------------------------------------------------------
    def job_uri(self, service: str, job_id: str) -> str:
        return self.spec.job_uri(service, job_id)

    def check_out(self, out_uri: str) -> None:
        if not out_uri.startswith("s3://"):
            raise jobs.FieldError(
                "out_uri", f"{out_uri!r}: a Kubernetes Job's pod cannot reach it; expected s3://"
            )

    def start(self, service: str, job_id: str, fn_ref: str, job_uri: str) -> KubeJobWork:
        manifest = render_job(
            self.spec, service=service, job_id=job_id, fn_ref=fn_ref, job_uri=job_uri,
            environment=settings.environment(),
        )  # fmt: skip
        name = self.create(manifest)
        handle = jobrun.WorkHandle(self.name, job_uri, namespace=self.spec.namespace, job=name)
        return KubeJobWork(self, handle)

    def attach(self, handle: jobrun.WorkHandle) -> KubeJobWork:
        return KubeJobWork(self, handle)

    def abandon(self, service: str, job_ids: list[str]) -> None:
        """Delete the Jobs of jobs a stopped server left with no handle (failed as retryable
        in the store): created, perhaps, just before it stopped."""
        for job_id in job_ids:
            with contextlib.suppress(KubeJobError):  # no API now: their deadline ends them
                self.delete(job_name(service, job_id))

    # --- the API calls --------------------------------------------------------------------
    def create(self, manifest: Mapping[str, Any]) -> str:
        name = manifest["metadata"]["name"]
        with self._api(f"creating Job {name!r}"):
            self.batch.create_namespaced_job(self.spec.namespace, dict(manifest))
        return name

    def read(self, name: str) -> dict:
        """The Job as the API serves it (camelCase keys, as a manifest)."""
        with self._api(f"reading Job {name!r}"):
            obj = self.batch.read_namespaced_job_status(name, self.spec.namespace)
        return self.batch.api_client.sanitize_for_serialization(obj)

    def delete(self, name: str) -> None:
        """Delete the Job and, in the background, its pods; a Job already gone is no error."""
        with self._api(f"deleting Job {name!r}"):
            from kubernetes.client import V1DeleteOptions
            from kubernetes.client.exceptions import ApiException

            try:
                self.batch.delete_namespaced_job(
                    name, self.spec.namespace, body=V1DeleteOptions(propagation_policy="Background")
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def pods(self, name: str) -> list[dict]:
        with self._api(f"listing the pods of Job {name!r}"):
            found = self.core.list_namespaced_pod(
                self.spec.namespace, label_selector=f"batch.kubernetes.io/job-name={name}"
            )
        return self.core.api_client.sanitize_for_serialization(found).get("items") or []

    def wait_for_change(self, name: str, resource_version: str) -> None:
        """Return when the Job changes after `resource_version`, or after poll_s at most."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        stream = watch.Watch()
        try:
            with self._api(f"watching Job {name!r}"):
                for _ in stream.stream(
                    self.batch.list_namespaced_job, self.spec.namespace,
                    field_selector=f"metadata.name={name}", resource_version=resource_version,
                    timeout_seconds=max(1, math.ceil(self.poll_s)),
                    _request_timeout=self.poll_s + 30,
                ):  # fmt: skip
                    break
        except ApiException as exc:  # 410 Gone: the version expired; the next read is fresh
            if exc.status != 410:
                raise
        finally:
            stream.stop()

    def failure(self, name: str, status: JobStatus) -> dict:
        """Why a Job that ended stored no result: retryable unless past its deadline or
        failed by its pod's own verdict (jobrun.EXIT_NO_RETRY)."""
        where = f"Kubernetes Job {self.spec.namespace}/{name}"
        if status.phase == "Succeeded":
            return {"error": f"{where} completed without storing {jobrun.RESULT}",
                    "retryable": True}  # fmt: skip
        why = f" ({status.reason})" if status.reason else ""
        detail = one_line(status.message)[:300] or "no message"
        return {
            "error": f"{where} failed{why}: {detail}",
            "retryable": status.reason not in ("DeadlineExceeded", "PodFailurePolicy"),
        }

    @contextlib.contextmanager
    def _api(self, what: str) -> Iterator[None]:
        self.batch  # noqa: B018  (configured first: an InputError naming the missing extra)
        with api_errors(f"{what} in namespace {self.spec.namespace!r}", "jobs in batch"):
            yield


class KubeJobWork:
    """One Kubernetes Job, followed (jobrun.Work): a `kubejob` event at every change of its
    status, a log line at every change of a pod's state."""

    def __init__(self, launcher: KubeJobLauncher, handle: jobrun.WorkHandle) -> None:
        self.launcher, self.handle = launcher, handle
        self._last: JobStatus | None = None
        self._pods: dict[str, str] = {}
        self._version = ""  # the resourceVersion last read

    def look(self, emit: EventFn) -> dict | None:
        name, namespace = self.handle.job, self.launcher.spec.namespace
        if self.handle.namespace != namespace:
            return {"error": f"{self.handle.name} is outside this service's namespace "
                    f"{namespace!r}: retry the job", "retryable": True}  # fmt: skip
        try:
            obj = self.launcher.read(name)
        except KubeJobError as exc:
            if exc.status != 404:
                raise
            return {"error": f"{self.handle.name} is gone (deleted before it ended): retry "
                    "the job", "retryable": True}  # fmt: skip
        status = JobStatus.of(obj)
        if status != self._last:
            emit(status.event(name))
            self._last = status
        for pod in self.launcher.pods(name):
            pod_name, state = pod["metadata"]["name"], pod_state(pod)
            if self._pods.get(pod_name) != state:
                emit(log(f"pod {pod_name}: {state}"))
                self._pods[pod_name] = state
        self._version = obj["metadata"]["resourceVersion"]
        return self.launcher.failure(name, status) if status.ended else None

    def wait(self) -> None:
        self.launcher.wait_for_change(self.handle.job, self._version)

    def stop(self) -> None:
        self.launcher.delete(self.handle.job)


# --- the Kubernetes client (the `cluster` extra) -----------------------------------------------
@contextlib.contextmanager
def api_errors(what: str, grant: str) -> Iterator[None]:
    """Kubernetes API failures as one line that says what was being done and how to fix it."""
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        if exc.status == 410:  # a watch's expired version: the caller starts afresh
            raise
        hint = {
            403: f"the service account may not; grant it {grant}",
            404: "not found",
            409: "one of that name exists",
        }.get(exc.status, one_line(str(exc.reason)))
        raise KubeJobError(f"{what}: HTTP {exc.status}: {hint}", exc.status) from None


def load_kube_config() -> None:
    """Configure the client from the pod's service account, else the kubeconfig."""
    try:
        from kubernetes import config
    except ImportError:
        raise InputError(
            "the Kubernetes backends need the Kubernetes client: pip install 'sigdl[cluster]'"
        ) from None
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, FileNotFoundError, TypeError) as exc:
            raise InputError(
                f"no Kubernetes configuration (in-cluster or kubeconfig): {one_line(str(exc))}"
            ) from None


def current_namespace() -> str:
    """The service pod's namespace, else the kubeconfig context's, else `default`."""
    if _SA_NAMESPACE.is_file():
        return _SA_NAMESPACE.read_text().strip()
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts()
        return (active or {}).get("context", {}).get("namespace") or "default"
    except Exception:  # no client, no kubeconfig: the API calls will say so
        return "default"
