"""Every setting SigDL reads from the environment, declared once, typed, with its default.

Call sites read a setting with ``SIGDL_HOME.get()``; nothing else in the code base touches
``os.environ``. ``python -m sigdl.core.settings`` prints them all with their current values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from sigdl.core.errors import InputError, short

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}, got {raw!r}")


def _parse_path(raw: str) -> Path:
    # Path("") is ".": an empty SIGDL_HOME would write into whatever folder a command runs in
    if not raw.strip():
        raise ValueError("expected a path, got an empty value (unset it to use the default)")
    return Path(raw).expanduser()


def _parse_json(kind: type) -> Callable[[str], object]:
    def parse(raw: str) -> object:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected JSON ({exc.msg} at char {exc.pos})") from None
        if not isinstance(value, kind):
            name = "an object" if kind is dict else "a list"
            raise ValueError(f"expected {name} in JSON, got {type(value).__name__}")
        return value

    return parse


class SettingError(InputError):
    """An environment variable set to a value its setting cannot take."""


_PARSERS: dict[type, Callable[[str], object]] = {
    bool: _parse_bool,
    int: int,
    float: float,
    str: str,
    Path: _parse_path,
    dict: _parse_json(dict),  # a JSON object
    list: _parse_json(list),  # a JSON list
}


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One environment variable: its name, type, default and what it is for."""

    name: str  # the environment variable
    type: type  # bool, int, float, str, Path, or dict / list (JSON)
    default: T | None  # used when the variable is unset (None: no value)
    doc: str  # one line for `python -m sigdl.core.settings` and the README
    aliases: tuple[str, ...] = field(default=())  # other names read when `name` is unset
    non_empty: bool = False  # set to '' is an error, not the same as unset (tokens)

    def raw(self) -> str | None:
        for key in (self.name, *self.aliases):
            if key in os.environ:
                return os.environ[key]
        return None

    def is_set(self) -> bool:
        return self.raw() is not None

    def get(self) -> T | None:
        raw = self.raw()
        if raw is None:
            return self.default
        if self.non_empty and not raw.strip():
            raise SettingError(f"setting {self.name} is set but empty: expected a value, or unset")
        try:
            return _PARSERS[self.type](raw)  # type: ignore[return-value]
        except ValueError as exc:
            kind = self.type.__name__
            raise SettingError(
                f"setting {self.name}={short(raw)} is not a valid {kind}: {exc}"
            ) from None


REGISTRY: list[Setting] = []


def _declare(
    name: str,
    type_: type,
    default: object,
    doc: str,
    aliases: tuple[str, ...] = (),
    non_empty: bool = False,
):
    setting = Setting(name, type_, default, doc, aliases, non_empty)
    REGISTRY.append(setting)
    return setting


# --- where things live -------------------------------------------------------------------------
SIGDL_HOME: Setting[Path] = _declare(
    "SIGDL_HOME",
    Path,
    Path("~/.sigdl").expanduser(),
    "Root of the embedded defaults: local artifacts, the MLflow store, job records.",
)
SIGDL_DATA: Setting[Path] = _declare(
    "SIGDL_DATA",
    Path,
    None,
    "A folder holding data sets as <name>/ subfolders, searched before the caches.",
)
SIGDL_OFFLINE: Setting[bool] = _declare(
    "SIGDL_OFFLINE",
    bool,
    False,
    "Never download a missing data set; fail with the list of places searched instead.",
)
SIGDL_DOWNLOAD_TIMEOUT_S: Setting[float] = _declare(
    "SIGDL_DOWNLOAD_TIMEOUT_S",
    float,
    20.0,
    "Seconds to wait for a data set's canonical home before giving up.",
)

# --- lineage -----------------------------------------------------------------------------------
SIGDL_MLFLOW_TRACKING_URI: Setting[str] = _declare(
    "SIGDL_MLFLOW_TRACKING_URI",
    str,
    None,
    "MLflow tracking URI; unset means sqlite:///$SIGDL_HOME/mlflow.db. 'off' disables tracking.",
    aliases=("MLFLOW_TRACKING_URI",),
)
SIGDL_MLFLOW_EXPERIMENT: Setting[str] = _declare(
    "SIGDL_MLFLOW_EXPERIMENT",
    str,
    "sigdl",
    "MLflow experiment that runs are logged under.",
)

# --- artifact store (S3 / MinIO) ---------------------------------------------------------------
SIGDL_S3_ENDPOINT: Setting[str] = _declare(
    "SIGDL_S3_ENDPOINT",
    str,
    "127.0.0.1:9000",
    "host:port of the S3 server (MinIO in a cluster).",
)
SIGDL_S3_ACCESS_KEY: Setting[str] = _declare(
    "SIGDL_S3_ACCESS_KEY",
    str,
    None,
    "S3 access key.",
    aliases=("AWS_ACCESS_KEY_ID",),
)
SIGDL_S3_SECRET_KEY: Setting[str] = _declare(
    "SIGDL_S3_SECRET_KEY",
    str,
    None,
    "S3 secret key.",
    aliases=("AWS_SECRET_ACCESS_KEY",),
)
SIGDL_S3_SECURE: Setting[bool] = _declare(
    "SIGDL_S3_SECURE",
    bool,
    False,
    "Use HTTPS to reach the S3 server.",
)
SIGDL_S3_REGION: Setting[str] = _declare(
    "SIGDL_S3_REGION",
    str,
    "us-east-1",
    "S3 region sent with requests.",
)

# --- services ----------------------------------------------------------------------------------
SIGDL_TRAINING_ADDR: Setting[str] = _declare(
    "SIGDL_TRAINING_ADDR",
    str,
    "127.0.0.1:50051",
    "Address of the training service.",
)
SIGDL_COMPRESSION_ADDR: Setting[str] = _declare(
    "SIGDL_COMPRESSION_ADDR",
    str,
    "127.0.0.1:50052",
    "Address of the compression service.",
)
SIGDL_RETEST_ADDR: Setting[str] = _declare(
    "SIGDL_RETEST_ADDR",
    str,
    "127.0.0.1:50053",
    "Address of the retest service.",
)
SIGDL_DEPLOY_ADDR: Setting[str] = _declare(
    "SIGDL_DEPLOY_ADDR",
    str,
    "127.0.0.1:50054",
    "Address of the deploy service.",
)
SIGDL_TLS_CERT: Setting[Path] = _declare(
    "SIGDL_TLS_CERT",
    Path,
    None,
    "PEM certificate the services present (TLS off when unset).",
)
SIGDL_TLS_KEY: Setting[Path] = _declare(
    "SIGDL_TLS_KEY",
    Path,
    None,
    "PEM private key matching SIGDL_TLS_CERT.",
)
SIGDL_TLS_CA: Setting[Path] = _declare(
    "SIGDL_TLS_CA",
    Path,
    None,
    "PEM CA bundle; set on a server it requires client certificates.",
)
SIGDL_TOKEN: Setting[str] = _declare(
    "SIGDL_TOKEN",
    str,
    None,
    "Bearer token the services require and the clients send (set but empty: refused).",
    non_empty=True,
)
SIGDL_JOB_STORE: Setting[str] = _declare(
    "SIGDL_JOB_STORE",
    str,
    None,
    "Where services keep job records: unset, SQLite under SIGDL_HOME/jobs (one server per "
    "service); a postgresql:// URI, one database shared by every replica (cluster mode).",
    non_empty=True,
)
SIGDL_REPLICA_ID: Setting[str] = _declare(
    "SIGDL_REPLICA_ID",
    str,
    None,
    "Name of this service replica in a shared job store (default: <hostname>-<pid>).",
)
SIGDL_REPLICA_STALE_S: Setting[float] = _declare(
    "SIGDL_REPLICA_STALE_S",
    float,
    30.0,
    "A replica silent this long in a shared job store has stopped: its jobs end FAILED.",
)
SIGDL_WORKERS: Setting[int] = _declare(
    "SIGDL_WORKERS",
    int,
    2,
    "Jobs a service runs at once (one worker process each); more wait in its queue.",
)
SIGDL_QUEUE_SIZE: Setting[int] = _declare(
    "SIGDL_QUEUE_SIZE",
    int,
    16,
    "Jobs a service holds waiting for a worker; beyond it Submit is RESOURCE_EXHAUSTED.",
)
SIGDL_ARTIFACT_ROOTS: Setting[str] = _declare(
    "SIGDL_ARTIFACT_ROOTS",
    str,
    None,
    "Comma-separated URI prefixes service requests may name (default: $SIGDL_HOME only).",
)
SIGDL_MAX_MESSAGE_BYTES: Setting[int] = _declare(
    "SIGDL_MAX_MESSAGE_BYTES",
    int,
    4 << 20,
    "Largest gRPC message a service or client accepts (messages carry URIs, not models).",
)
SIGDL_SHUTDOWN_GRACE_S: Setting[float] = _declare(
    "SIGDL_SHUTDOWN_GRACE_S",
    float,
    30.0,
    "Seconds a stopping service lets running jobs finish before failing them as retryable.",
)
SIGDL_UPLOAD_URI: Setting[str] = _declare(
    "SIGDL_UPLOAD_URI",
    str,
    None,
    "Where `--remote` commands upload local inputs (default: $SIGDL_HOME/artifacts/uploads).",
)

# --- multi-node training as a Kubeflow Trainer TrainJob (services/training/trainjob.py) -------
SIGDL_TRAINING_BACKEND: Setting[str] = _declare(
    "SIGDL_TRAINING_BACKEND",
    str,
    "local",
    "Where training runs: local (this process, or torchrun here) | trainjob (a Kubeflow TrainJob).",
)
SIGDL_TRAINJOB_IMAGE: Setting[str] = _declare(
    "SIGDL_TRAINJOB_IMAGE",
    str,
    None,
    "Image the TrainJob's nodes run (the SigDL image); required by the trainjob backend.",
)
SIGDL_TRAINJOB_URI: Setting[str] = _declare(
    "SIGDL_TRAINJOB_URI",
    str,
    None,
    "s3:// prefix that every node reaches, holding one folder per TrainJob (inputs, weights).",
)
SIGDL_TRAINJOB_NAMESPACE: Setting[str] = _declare(
    "SIGDL_TRAINJOB_NAMESPACE",
    str,
    None,
    "Namespace of the TrainJobs (default: the service pod's, else the kubeconfig context's).",
)
SIGDL_TRAINJOB_RUNTIME: Setting[str] = _declare(
    "SIGDL_TRAINJOB_RUNTIME",
    str,
    "torch-distributed",
    "ClusterTrainingRuntime the TrainJobs refer to.",
)
SIGDL_TRAINJOB_NODES: Setting[int] = _declare(
    "SIGDL_TRAINJOB_NODES",
    int,
    2,
    "Nodes of a TrainJob (numNodes); each runs the job's nproc processes.",
)
SIGDL_TRAINJOB_GPUS_PER_NODE: Setting[int] = _declare(
    "SIGDL_TRAINJOB_GPUS_PER_NODE",
    int,
    0,
    "GPUs each TrainJob node requests (nvidia.com/gpu); 0: CPU nodes.",
)
SIGDL_TRAINJOB_CPU: Setting[str] = _declare(
    "SIGDL_TRAINJOB_CPU",
    str,
    "2",
    "CPU each TrainJob node requests (a Kubernetes quantity).",
)
SIGDL_TRAINJOB_MEMORY: Setting[str] = _declare(
    "SIGDL_TRAINJOB_MEMORY",
    str,
    "4Gi",
    "Memory each TrainJob node requests and is limited to (a Kubernetes quantity).",
)
SIGDL_TRAINJOB_S3_SECRET: Setting[str] = _declare(
    "SIGDL_TRAINJOB_S3_SECRET",
    str,
    None,
    "Secret (keys accessKey, secretKey, as the chart's) the nodes read their S3 keys from.",
)
SIGDL_TRAINJOB_POLL_S: Setting[float] = _declare(
    "SIGDL_TRAINJOB_POLL_S",
    float,
    5.0,
    "Seconds between reads of a TrainJob's status while the training service follows it.",
)

# --- jobs run outside the service (sigdl/core/jobrun.py, sigdl/core/kubejob.py) ----------------
SIGDL_JOB_BACKEND: Setting[str] = _declare(
    "SIGDL_JOB_BACKEND",
    str,
    "local",
    "Where compression and retest jobs run: local (worker processes of the service) | process "
    "(a `python -m sigdl.core.jobrun` process each, on the service's machine, outliving it) | "
    "kubernetes (a batch/v1 Job each, running the same).",
)
SIGDL_JOB_IMAGE: Setting[str] = _declare(
    "SIGDL_JOB_IMAGE",
    str,
    None,
    "Image the Jobs run (the SigDL image); required by the kubernetes job backend.",
)
SIGDL_JOB_URI: Setting[str] = _declare(
    "SIGDL_JOB_URI",
    str,
    None,
    "Prefix the service and the jobs' work share: one folder per job (request, events, result, "
    "default outputs). kubernetes: an s3:// prefix (required); process: any (default "
    "SIGDL_HOME/jobs/work).",
)
SIGDL_JOB_NAMESPACE: Setting[str] = _declare(
    "SIGDL_JOB_NAMESPACE",
    str,
    None,
    "Namespace of the Jobs (default: the service pod's, else the kubeconfig context's).",
)
SIGDL_JOB_CPU: Setting[str] = _declare(
    "SIGDL_JOB_CPU", str, "2", "CPU each Job's pod requests (a Kubernetes quantity)."
)
SIGDL_JOB_MEMORY: Setting[str] = _declare(
    "SIGDL_JOB_MEMORY",
    str,
    "4Gi",
    "Memory each Job's pod requests and is limited to (a Kubernetes quantity).",
)
SIGDL_JOB_GPUS: Setting[int] = _declare(
    "SIGDL_JOB_GPUS", int, 0, "GPUs each Job's pod requests (nvidia.com/gpu); 0: none."
)
SIGDL_JOB_NODE_SELECTOR: Setting[dict] = _declare(
    "SIGDL_JOB_NODE_SELECTOR",
    dict,
    None,
    'Node labels the Jobs\' pods must match, a JSON object: {"nvidia.com/gpu.present": "true"}.',
)
SIGDL_JOB_TOLERATIONS: Setting[list] = _declare(
    "SIGDL_JOB_TOLERATIONS",
    list,
    None,
    "Taints the Jobs' pods tolerate, a JSON list of Kubernetes tolerations.",
)
SIGDL_JOB_S3_SECRET: Setting[str] = _declare(
    "SIGDL_JOB_S3_SECRET",
    str,
    None,
    "Secret (keys accessKey, secretKey, as the chart's) the Jobs' pods read their S3 keys from.",
)
SIGDL_JOB_DATA_CLAIM: Setting[str] = _declare(
    "SIGDL_JOB_DATA_CLAIM",
    str,
    None,
    "PersistentVolumeClaim holding the data sets, mounted read-only at SIGDL_DATA in every Job.",
)
SIGDL_JOB_PULL_SECRETS: Setting[str] = _declare(
    "SIGDL_JOB_PULL_SECRETS",
    str,
    None,
    "Comma-separated imagePullSecrets of the Jobs' pods.",
)
SIGDL_JOB_BACKOFF_LIMIT: Setting[int] = _declare(
    "SIGDL_JOB_BACKOFF_LIMIT",
    int,
    1,
    "Pod failures (crash, OOM, lost node) a Job retries; a job's own error is never retried.",
)
SIGDL_JOB_DEADLINE_S: Setting[int] = _declare(
    "SIGDL_JOB_DEADLINE_S", int, 86400, "A Job's activeDeadlineSeconds: it fails past this."
)
SIGDL_JOB_TTL_S: Setting[int] = _declare(
    "SIGDL_JOB_TTL_S",
    int,
    3600,
    "A finished Job's ttlSecondsAfterFinished: the cluster deletes it (and its pods) then.",
)
SIGDL_JOB_POLL_S: Setting[float] = _declare(
    "SIGDL_JOB_POLL_S",
    float,
    2.0,
    "Longest wait between looks at a running Job or job process (status, events, a Cancel).",
)
SIGDL_JOB_EVENTS_FLUSH_S: Setting[float] = _declare(
    "SIGDL_JOB_EVENTS_FLUSH_S",
    float,
    1.0,
    "Seconds a job's pod (or a TrainJob's rank 0) buffers progress events before storing them.",
)

# --- edge packages and the edge agent ----------------------------------------------------------
SIGDL_SIGNING_KEY: Setting[Path] = _declare(
    "SIGDL_SIGNING_KEY",
    Path,
    None,
    "Ed25519 private key (PEM) deploy signs package manifests with (unset: unsigned packages).",
)
SIGDL_VERIFY_KEY: Setting[Path] = _declare(
    "SIGDL_VERIFY_KEY",
    Path,
    None,
    "Ed25519 public key (PEM) the edge agent checks package signatures with (required there).",
)
SIGDL_AGENT_ID: Setting[str] = _declare(
    "SIGDL_AGENT_ID",
    str,
    None,
    "Name the edge agent reports its status under (default: <hostname>-<port>).",
)
SIGDL_AGENT_POLL_S: Setting[float] = _declare(
    "SIGDL_AGENT_POLL_S",
    float,
    5.0,
    "Seconds between the edge agent's reads of its fleet's `current` pointer.",
)
SIGDL_AGENT_CANARY: Setting[bool] = _declare(
    "SIGDL_AGENT_CANARY",
    bool,
    False,
    "Whether the edge agent is a canary: it follows its fleet's `canary` pointer while one exists.",
)

# --- rollout of edge agents to an edge cluster (services/deploy/rollout.py) ----------------
SIGDL_EDGE_KUBE_CONTEXT: Setting[str] = _declare(
    "SIGDL_EDGE_KUBE_CONTEXT",
    str,
    None,
    "Kubeconfig context of the edge cluster rollouts go to (unset: in-cluster, else current).",
)
SIGDL_EDGE_NAMESPACE: Setting[str] = _declare(
    "SIGDL_EDGE_NAMESPACE",
    str,
    "sigdl-edge",
    "Namespace of the edge cluster the agents' Deployments, ConfigMaps and Services go to.",
)
SIGDL_EDGE_IMAGE: Setting[str] = _declare(
    "SIGDL_EDGE_IMAGE",
    str,
    "sigdl:latest",
    "Image the edge agents run (the SigDL image, `sigdl edge-agent`).",
)
SIGDL_EDGE_VERIFY_SECRET: Setting[str] = _declare(
    "SIGDL_EDGE_VERIFY_SECRET",
    str,
    "sigdl-verify-key",
    "Secret in the edge namespace whose key `signing.pub` is the agents' SIGDL_VERIFY_KEY.",
)
SIGDL_EDGE_S3_SECRET: Setting[str] = _declare(
    "SIGDL_EDGE_S3_SECRET",
    str,
    None,
    "Secret (keys accessKey, secretKey) the agents read the store's S3 keys from (s3:// stores).",
)

# --- data the edge agent acquires (services/edge/samples.py) --------------------------------
SIGDL_EDGE_HARD_TOP1: Setting[float] = _declare(
    "SIGDL_EDGE_HARD_TOP1",
    float,
    0.5,
    "An input whose top-1 softmax probability is below this is a hard example the agent keeps.",
)
SIGDL_EDGE_HARD_MARGIN: Setting[float] = _declare(
    "SIGDL_EDGE_HARD_MARGIN",
    float,
    0.1,
    "An input whose top-1 minus top-2 probability is below this is a hard example too.",
)
SIGDL_EDGE_PRIVATE_DEFAULT: Setting[bool] = _declare(
    "SIGDL_EDGE_PRIVATE_DEFAULT",
    bool,
    True,
    "Whether a sample its sender did not mark is private (kept at the edge site, never synced).",
)
SIGDL_EDGE_SAMPLES_MAX_BYTES: Setting[int] = _declare(
    "SIGDL_EDGE_SAMPLES_MAX_BYTES",
    int,
    256 << 20,
    "Local edge storage for samples not yet uploaded; when full, hard examples are dropped.",
)
SIGDL_EDGE_SAMPLE_MAX_BYTES: Setting[int] = _declare(
    "SIGDL_EDGE_SAMPLE_MAX_BYTES",
    int,
    2 << 20,
    "Largest single sample (its pixels as float32) the agent keeps; a larger one is rejected.",
)
SIGDL_EDGE_UPLOAD_BYTES_PER_S: Setting[int] = _declare(
    "SIGDL_EDGE_UPLOAD_BYTES_PER_S",
    int,
    1 << 20,
    "Upload bandwidth the agent's samples may use, edge site and cloud together (0: no limit).",
)
SIGDL_EDGE_STORE: Setting[str] = _declare(
    "SIGDL_EDGE_STORE",
    str,
    None,
    "URI prefix in the edge site's object store samples upload to (unset: kept on the device).",
)
SIGDL_CLOUD_STORE: Setting[str] = _declare(
    "SIGDL_CLOUD_STORE",
    str,
    None,
    "URI prefix in the cloud store non-private samples sync to (unset: none leave the site).",
)
# The edge site's own S3 server and keys, for URIs in SIGDL_EDGE_STORE's bucket: its private
# samples then sit behind credentials the cloud never holds (unset: the SIGDL_S3_* ones).
SIGDL_EDGE_SITE_S3_ENDPOINT: Setting[str] = _declare(
    "SIGDL_EDGE_SITE_S3_ENDPOINT",
    str,
    None,
    "host:port (or http(s)://host:port) of the edge site's S3 server, for SIGDL_EDGE_STORE.",
)
SIGDL_EDGE_SITE_S3_ACCESS_KEY: Setting[str] = _declare(
    "SIGDL_EDGE_SITE_S3_ACCESS_KEY",
    str,
    None,
    "Access key of the edge site's S3 server.",
)
SIGDL_EDGE_SITE_S3_SECRET_KEY: Setting[str] = _declare(
    "SIGDL_EDGE_SITE_S3_SECRET_KEY",
    str,
    None,
    "Secret key of the edge site's S3 server.",
)

# --- compute -----------------------------------------------------------------------------------
SIGDL_NUM_THREADS: Setting[int] = _declare(
    "SIGDL_NUM_THREADS",
    int,
    None,
    "Threads PyTorch may use per process (default: all cores).",
)
SIGDL_EMULATION_CPUS: Setting[str] = _declare(
    "SIGDL_EMULATION_CPUS",
    str,
    "",
    "Host CPUs an x86 target's retest may pin its measurement to, e.g. 0-3 or 2,3 (default: "
    "all this process may use); it takes the first of them, as many as the target has cores.",
)
SIGDL_PROGRESS: Setting[bool] = _declare(
    "SIGDL_PROGRESS",
    bool,
    True,
    "Show progress bars on long work (they go to stderr).",
)

# Set by torchrun in each worker of a data-parallel job; read by sigdl.core.distributed.
RANK: Setting[int] = _declare("RANK", int, 0, "Rank of this process in a torchrun job.")
WORLD_SIZE: Setting[int] = _declare("WORLD_SIZE", int, 1, "Processes in a torchrun job.")
LOCAL_RANK: Setting[int] = _declare("LOCAL_RANK", int, 0, "Rank of this process on its node.")


def mlflow_tracking_uri() -> str | None:
    """The tracking URI in force, or None when tracking is off."""
    uri = SIGDL_MLFLOW_TRACKING_URI.get()
    if uri is None:
        return f"sqlite:///{SIGDL_HOME.get() / 'mlflow.db'}"
    if uri.strip().lower() in {"off", "none", "false", "0"}:
        return None
    return uri


def validate() -> None:
    """Parse every setting that is set: SettingError for the first that cannot be used (an
    empty SIGDL_HOME, an empty SIGDL_TOKEN), before a command does anything."""
    for setting in REGISTRY:
        setting.get()


def environment() -> dict[str, str]:
    """The raw value of every declared setting that is set, to hand to a worker process."""
    return {k: os.environ[k] for s in REGISTRY for k in (s.name, *s.aliases) if k in os.environ}


def adopt_environment(values: dict[str, str]) -> None:
    """Make this process read exactly `values` for every declared setting: a job's worker,
    forked from a server started earlier, must see the settings of the job's submitter."""
    for key in {k for s in REGISTRY for k in (s.name, *s.aliases)}:
        if key in values:
            os.environ[key] = values[key]
        else:
            os.environ.pop(key, None)


def describe() -> list[dict[str, str]]:
    """Every setting with its current value (secrets masked): `python -m sigdl.core.settings`."""
    rows = []
    for s in REGISTRY:
        value = s.get()
        if value is not None and ("SECRET" in s.name or "TOKEN" in s.name):
            value = "***"
        rows.append({"name": s.name, "type": s.type.__name__, "value": str(value), "doc": s.doc})
    return rows


if __name__ == "__main__":
    for row in describe():
        print(f"{row['name']:28} {row['type']:6} {row['value']:40} {row['doc']}")


def environment_with(**values: str) -> dict[str, str]:
    """This process's environment with `values` set: what a child process SigDL starts (the
    embedded `sigdl serve all`) is given, so that it reads the same settings."""
    return {**os.environ, **values}
