"""Rollout of edge agents to an edge cluster: the Kubernetes objects of one fleet/target.

    objects = render_rollout(RolloutSpec("lab", "arm-cortex-a53", "s3://artifacts", "v3",
                                         manifest_sha256, memory_mb=12.5, replicas=4,
                                         canary_fraction=0.25))
    print(to_yaml(objects))                        # what `sigdl deploy --rollout --dry-run` shows
    apply_rollout(objects, context="edge-site-1")  # server-side apply (the `cluster` extra)

Per fleet/target: a ConfigMap with the package reference (store, fleet, target, version,
manifest sha256), a Service on the agent's gRPC port, and a Deployment of `sigdl edge-agent`
pinned to nodes labelled `sigdl.io/target=<target>`; with a canary fraction, a second
Deployment (`-canary`, SIGDL_AGENT_CANARY=1) holds that share of the replicas. Its agents
follow the fleet's `canary` pointer while one exists, `current` otherwise
(services/deploy/canary.py decides). The agents pick up new versions themselves by polling the
store, so a publish changes no Kubernetes object: the ConfigMap records what was rolled out.

Decisions where the design was silent:
- Memory request = limit = AGENT_BASE_MB (Python, gRPC, ONNX Runtime) + twice the retest's
  memory figure (weights + peak activations: the served model and the one a swap loads beside
  it), rounded up to 16 MiB; DEFAULT_MODEL_MB when the package carries no retest figure.
- Readiness is the native gRPC probe (NOT_SERVING until a verified model is loaded); liveness is
  a gRPC probe too but very patient: an agent that refused a version still serves its previous
  one (SERVING); one with no model at all is restarted only after ten minutes.
- Names are `sigdl-edge-<fleet>-<target>`, shortened with a digest when over 52 characters
  (room for `-canary`, and a DNS-1035 label for the Service).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import yaml

from services.deploy.fleet import MANIFEST, FleetTarget, NotPublishedError, check_name, emit
from sigdl.core import settings
from sigdl.core.errors import InputError, one_line
from sigdl.core.events import EventFn, ProgressEvent

AGENT_PORT = 50060  # `sigdl edge-agent --port`
AGENT_BASE_MB = 256  # the agent process without a model: Python, grpc, ONNX Runtime
DEFAULT_MODEL_MB = 128  # when the package has no retest memory figure
AGENT_UID = 10001  # the image's `sigdl` user (Dockerfile)
FIELD_MANAGER = "sigdl-deploy"
HOME = "/var/lib/sigdl"  # SIGDL_HOME in the pod: an emptyDir, the root filesystem is read-only
VERIFY_DIR = "/etc/sigdl/verify"
MAX_NAME = 52


@dataclass(frozen=True)
class RolloutSpec:
    """What one fleet/target's agents run, and where; `from_settings` fills the cluster side."""

    fleet: str  # fleet name
    target: str  # target profile; also the node label value `sigdl.io/target`
    store_root: str  # store URI the agents follow (<root>/fleets/<fleet>/<target>/current)
    version: str | None  # the package version current when rendered (the ConfigMap's record)
    manifest_sha256: str | None  # its manifest's sha256
    memory_mb: float | None = None  # the retest's memory figure (weights + peak activations)
    image: str = "sigdl:latest"  # the SigDL image
    namespace: str = "sigdl-edge"
    replicas: int = 1  # agents in all, canary ones included
    canary_fraction: float = 0.0  # share of the replicas that follow the `canary` pointer
    verify_secret: str = "sigdl-verify-key"  # Secret with `signing.pub`
    s3_secret: str | None = None  # Secret with accessKey, secretKey (s3:// stores)
    s3_endpoint: str | None = None  # host:port of the S3 server the agents reach
    s3_secure: bool = True

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet")
        check_name(self.target, "target")
        check_name(self.namespace, "namespace")
        check_name(self.verify_secret, "verify secret")
        if self.s3_secret is not None:
            check_name(self.s3_secret, "S3 secret")
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int):
            raise InputError(f"replicas {self.replicas!r}: expected a whole number")
        if not 0 <= self.replicas <= 1000:
            raise InputError(f"replicas {self.replicas}: expected 0 to 1000")
        if not (math.isfinite(self.canary_fraction) and 0 <= self.canary_fraction <= 1):
            raise InputError(f"canary fraction {self.canary_fraction}: expected 0 to 1")
        if self.memory_mb is not None and not (
            math.isfinite(self.memory_mb) and self.memory_mb >= 0
        ):
            raise InputError(f"memory figure {self.memory_mb} MiB: expected a size >= 0")
        if not self.image or any(c.isspace() for c in self.image):
            raise InputError(f"image {self.image!r}: expected a reference like repo/sigdl:1.2")

    @classmethod
    def from_settings(
        cls, fleet: str, target: str, store_root: str | None, replicas: int, canary_fraction: float
    ) -> RolloutSpec:
        """The spec of what `current` names now, cluster details from SIGDL_EDGE_*."""
        ft = FleetTarget.at(store_root, fleet, target)
        pointer = ft.read_pointer()
        if pointer is None:
            raise NotPublishedError(
                f"nothing is published for {fleet}/{target} in {ft.root}: deploy before rolling out"
            )
        manifest, digest = ft.read_manifest(pointer["version"])
        return cls.for_manifest(ft.root, manifest, digest, replicas, canary_fraction)

    @classmethod
    def for_manifest(
        cls, root: str, manifest: dict, digest: str | None, replicas: int, canary_fraction: float
    ) -> RolloutSpec:
        memory = (manifest.get("metrics") or {}).get("memory_mb")
        s3 = root.startswith("s3://")
        return cls(
            manifest["fleet"],
            manifest["target"],
            root,
            manifest["version"],
            digest,
            memory_mb=float(memory) if isinstance(memory, int | float) else None,
            image=settings.SIGDL_EDGE_IMAGE.get(),
            namespace=settings.SIGDL_EDGE_NAMESPACE.get(),
            replicas=replicas,
            canary_fraction=canary_fraction,
            verify_secret=settings.SIGDL_EDGE_VERIFY_SECRET.get(),
            s3_secret=settings.SIGDL_EDGE_S3_SECRET.get() if s3 else None,
            s3_endpoint=settings.SIGDL_S3_ENDPOINT.get() if s3 else None,
            s3_secure=settings.SIGDL_S3_SECURE.get(),
        )

    @property
    def name(self) -> str:
        name = f"sigdl-edge-{self.fleet}-{self.target}"
        if len(name) > MAX_NAME:
            digest = hashlib.sha256(name.encode()).hexdigest()[:8]
            name = f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"
        return name

    @property
    def canary_replicas(self) -> int:
        if self.canary_fraction == 0 or self.replicas == 0:
            return 0
        return min(self.replicas, max(1, math.ceil(self.replicas * self.canary_fraction)))

    @property
    def memory(self) -> str:
        model = DEFAULT_MODEL_MB if self.memory_mb is None else 2 * self.memory_mb
        return f"{math.ceil((AGENT_BASE_MB + model) / 16) * 16}Mi"


def labels(spec: RolloutSpec, track: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "sigdl-edge",
        "app.kubernetes.io/component": "edge-agent",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        "sigdl.io/fleet": spec.fleet,
        "sigdl.io/target": spec.target,
    }
    return out if track is None else {**out, "sigdl.io/track": track}


def render_rollout(spec: RolloutSpec) -> list[dict]:
    """The ConfigMap, Service and Deployment(s) of `spec`: plain dicts, nothing applied."""
    objects = [_config_map(spec), _service(spec)]
    tracks = [("stable", spec.replicas - spec.canary_replicas, spec.name)]
    if spec.canary_fraction > 0:
        tracks.append(("canary", spec.canary_replicas, f"{spec.name}-canary"))
    objects += [_deployment(spec, track, n, name) for track, n, name in tracks]
    return objects


def _meta(spec: RolloutSpec, name: str, track: str | None = None) -> dict:
    return {"name": name, "namespace": spec.namespace, "labels": labels(spec, track)}


def _config_map(spec: RolloutSpec) -> dict:
    data = {
        "fleet": spec.fleet,
        "target": spec.target,
        "store": spec.store_root,
        "pointer": f"{spec.store_root}/fleets/{spec.fleet}/{spec.target}/current",
    }
    if spec.version is not None:
        data["version"] = spec.version
        data["manifest"] = f"{spec.store_root}/fleets/{spec.fleet}/{spec.target}/{spec.version}/"
        data["manifest"] += MANIFEST
    if spec.manifest_sha256 is not None:
        data["manifest_sha256"] = spec.manifest_sha256
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(spec, spec.name),
        "data": data,
    }


def _service(spec: RolloutSpec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec, spec.name),
        "spec": {
            "type": "ClusterIP",
            "selector": labels(spec),  # both tracks answer Predict
            "ports": [
                {
                    "name": "grpc",
                    "port": AGENT_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                }
            ],
        },
    }


def _env(spec: RolloutSpec, track: str) -> list[dict]:
    def from_map(key: str) -> dict:
        return {"configMapKeyRef": {"name": spec.name, "key": key}}

    env = [
        {"name": "EDGE_FLEET", "valueFrom": from_map("fleet")},  # for the args' $(...)
        {"name": "EDGE_TARGET", "valueFrom": from_map("target")},
        {"name": "EDGE_STORE", "valueFrom": from_map("store")},
        {"name": "SIGDL_HOME", "value": HOME},
        {"name": "SIGDL_PROGRESS", "value": "0"},
        {"name": "SIGDL_VERIFY_KEY", "value": f"{VERIFY_DIR}/signing.pub"},
        {"name": "SIGDL_AGENT_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "SIGDL_AGENT_CANARY", "value": "1" if track == "canary" else "0"},
    ]
    if spec.s3_endpoint:
        env += [
            {"name": "SIGDL_S3_ENDPOINT", "value": spec.s3_endpoint},
            {"name": "SIGDL_S3_SECURE", "value": "1" if spec.s3_secure else "0"},
        ]
    if spec.s3_secret:
        keys = (("SIGDL_S3_ACCESS_KEY", "accessKey"), ("SIGDL_S3_SECRET_KEY", "secretKey"))
        for name, key in keys:
            ref = {"secretKeyRef": {"name": spec.s3_secret, "key": key}}
            env.append({"name": name, "valueFrom": ref})
    return env


def _deployment(spec: RolloutSpec, track: str, replicas: int, name: str) -> dict:
    probe = {"grpc": {"port": AGENT_PORT}, "timeoutSeconds": 2}
    container = {
        "name": "edge-agent",
        "image": spec.image,
        "command": ["sigdl", "edge-agent"],
        "args": [
            "--fleet",
            "$(EDGE_FLEET)",
            "--target",
            "$(EDGE_TARGET)",
            "--store",
            "$(EDGE_STORE)",
            "--port",
            str(AGENT_PORT),
            "--host",
            "0.0.0.0",
        ],
        "env": _env(spec, track),
        "ports": [{"name": "grpc", "containerPort": AGENT_PORT, "protocol": "TCP"}],
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        # patient: an agent that refused a package keeps serving its old model (SERVING); one
        # that has none yet is restarted only after 10 minutes, and loses nothing by it
        "livenessProbe": {**probe, "periodSeconds": 30, "failureThreshold": 20},
        "resources": {
            "requests": {"cpu": "100m", "memory": spec.memory},
            "limits": {"memory": spec.memory},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "home", "mountPath": HOME},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "verify-key", "mountPath": VERIFY_DIR, "readOnly": True},
        ],
    }
    pod = {
        "metadata": {"labels": labels(spec, track)},
        "spec": {
            "automountServiceAccountToken": False,
            "nodeSelector": {"sigdl.io/target": spec.target},
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": AGENT_UID,
                "runAsGroup": AGENT_UID,
                "fsGroup": AGENT_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [
                {"name": "home", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}},
                {
                    "name": "verify-key",
                    "secret": {
                        "secretName": spec.verify_secret,
                        "items": [{"key": "signing.pub", "path": "signing.pub"}],
                    },
                },
            ],
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(spec, name, track),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels(spec, track)},
            "template": pod,
        },
    }


def to_yaml(objects: list[dict]) -> str:
    """The objects as one multi-document YAML stream (`kubectl apply -f -` takes it)."""
    return yaml.safe_dump_all(objects, sort_keys=False)


def apply_rollout(
    objects: list[dict], context: str | None = None, on_event: EventFn | None = None
) -> list[dict]:
    """Server-side apply each object to the edge cluster (`context` of the kubeconfig; None:
    in-cluster, else the kubeconfig's current context); return what the API server holds."""
    try:
        from kubernetes import config, dynamic
        from kubernetes.client import exceptions
    except ImportError:
        raise InputError(
            "applying a rollout needs the Kubernetes client: pip install 'sigdl[cluster]'"
        ) from None
    client = dynamic.DynamicClient(_api_client(config, context))
    applied = []
    for obj in objects:
        what = f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"
        try:
            api = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            result = client.server_side_apply(
                api, body=obj, field_manager=FIELD_MANAGER, force_conflicts=True
            )
        except exceptions.ApiException as exc:
            reason = one_line(str(exc.reason), 200)
            raise InputError(f"applying {what}: HTTP {exc.status}: {reason}") from None
        applied.append(result.to_dict())
        emit(on_event, ProgressEvent.of("applied", object=what))
    return applied


def _api_client(config, context: str | None):
    """An ApiClient for `context`; without one, in-cluster, else the current context."""
    try:
        if context is None:
            try:
                config.load_incluster_config()
                from kubernetes import client

                return client.ApiClient()
            except config.ConfigException:
                pass
        return config.new_client_from_config(context=context)
    except (config.ConfigException, FileNotFoundError, TypeError, ValueError) as exc:
        where = f"context {context!r}" if context else "in-cluster or the kubeconfig"
        reason = one_line(str(exc), 200)
        raise InputError(f"no Kubernetes configuration for {where}: {reason}") from None
