"""A service's jobs as Kubernetes Jobs (sigdl/core/kubejob.py, SIGDL_JOB_BACKEND=kubernetes).

Without a cluster: every rendered Job is valid against the Kubernetes 1.35 schemas bundled with
kubernetes-validate (strict: an unknown field fails, as `kubectl apply --validate=strict`), no
secret value reaches a manifest, the pod runs as the chart's pods do, and the backend setting
is checked where the services read it. The pod's entry point itself runs for real, against a
real S3 server, in tests/integration/test_jobrun.py.

    SIGDL_DATA=../shared/datasets .venv/bin/python -m pytest -q tests/services/test_kubejob.py

Creating and following a Job needs a real Kubernetes API server; none can be run on these
machines (no kube-apiserver in PyPI, npm or Debian's packages, and no Docker engine for kind or
k3d), and no stand-in is used. The live tests (`-m cluster`) run with a kubeconfig whose user
may create, watch and delete batch Jobs in its namespace (kind, minikube, k3d or a real
cluster):

    kind create cluster && kubectl config set-context --current --namespace default
    .venv/bin/python -m pytest -q -m cluster tests/services/test_kubejob.py

and the one that runs a job to its end also needs the SigDL image and an S3 prefix that both
the cluster's pods and this machine reach (the image must be pullable by the cluster):

    SIGDL_JOB_IMAGE=registry/sigdl:TAG SIGDL_JOB_URI=s3://sigdl/jobs \\
    SIGDL_JOB_S3_SECRET=sigdl-minio \\
    SIGDL_S3_ENDPOINT=... SIGDL_S3_ACCESS_KEY=... SIGDL_S3_SECRET_KEY=... \\
    .venv/bin/python -m pytest -q -m cluster tests/services/test_kubejob.py
"""

from __future__ import annotations

import copy
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from services.compression.server import CompressionServicer
from services.compression.server import run_job as compress_job
from services.deploy.server import DeployServicer
from sigdl.core import jobrun, jobs, kubejob, settings, store
from sigdl.core.errors import InputError
from sigdl.core.kubejob import JobSpec, JobStatus, KubeJobLauncher

K8S_VERSION = "1.35"  # as tests/charts: the schemas kubernetes-validate bundles for it
JOB_ID = "0123456789abcdef0123456789abcdef"
URI = f"s3://sigdl/jobs/compression/{JOB_ID}"
FN = "services.compression.server:run_job"
SECRETS = {  # sentinel values that must never appear in a manifest
    "SIGDL_S3_ACCESS_KEY": "access-sentinel-7f3a",
    "SIGDL_S3_SECRET_KEY": "secret-sentinel-9c1e",
    "AWS_ACCESS_KEY_ID": "aws-access-sentinel-2b8d",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-sentinel-5e0f",
    "SIGDL_TOKEN": "token-sentinel-4a6c",
    "SIGDL_JOB_STORE": "postgresql://sigdl:pw-sentinel-3d2e@db/sigdl",
}
ENVIRONMENT = {
    **SECRETS,
    "SIGDL_S3_ENDPOINT": "minio.sigdl.svc.cluster.local:9000",
    "SIGDL_S3_REGION": "us-east-1",
    "SIGDL_MLFLOW_TRACKING_URI": "http://mlflow.sigdl:5000",
    "SIGDL_HOME": "/var/lib/sigdl",  # the service's own: the pod gets a scratch folder
    "SIGDL_WORKERS": "2",
}


def _spec(**fields: Any) -> JobSpec:
    base = {"image": "registry.example/sigdl:1.0", "namespace": "sigdl",
            "root_uri": "s3://sigdl/jobs", "s3_secret": "sigdl-minio"}  # fmt: skip
    return JobSpec(**{**base, **fields})


def _render(spec: JobSpec | None = None, env: dict | None = None) -> dict:
    return kubejob.render_job(
        spec or _spec(), service="compression", job_id=JOB_ID, fn_ref=FN, job_uri=URI,
        environment=ENVIRONMENT if env is None else env,
    )  # fmt: skip


def validate(manifest: dict) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


# --- rendering ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"gpus": 1, "cpu": "500m", "memory": "512Mi"},
        {
            "gpus": 2,
            "node_selector": {"nvidia.com/gpu.present": "true", "pool": "a100"},
            "tolerations": (
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {
                    "key": "spot",
                    "operator": "Equal",
                    "value": "yes",
                    "effect": "NoExecute",
                    "tolerationSeconds": 60,
                },
            ),
        },
        {"data_claim": "sigdl-datasets", "pull_secrets": ("registry", "mirror")},
        {"s3_secret": None, "backoff_limit": 0, "ttl_s": 0, "deadline_s": 600},
    ],
)
def test_the_job_is_valid_against_the_kubernetes_schemas(fields):
    env = ENVIRONMENT if fields.get("s3_secret", "x") else {"SIGDL_S3_ENDPOINT": "minio:9000"}
    manifest = _render(_spec(**fields), env)
    validate(manifest)
    spec = _spec(**fields)
    job = manifest["spec"]
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert manifest["metadata"]["name"] == f"sigdl-compression-{JOB_ID[:16]}"
    assert (job["backoffLimit"], job["activeDeadlineSeconds"], job["ttlSecondsAfterFinished"]) == (
        spec.backoff_limit, spec.deadline_s, spec.ttl_s,
    )  # fmt: skip
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "sigdl.core.jobrun", "--fn", FN, URI]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    resources = container["resources"]
    assert resources["requests"]["cpu"] == spec.cpu
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == spec.memory
    assert resources["limits"].get("nvidia.com/gpu", 0) == spec.gpus
    labels = job["template"]["metadata"]["labels"]
    assert labels == manifest["metadata"]["labels"]
    assert labels["sigdl.io/job-id"] == JOB_ID and labels["sigdl.io/service"] == "compression"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    if spec.data_claim:
        assert (
            mounts["data"]["readOnly"]
            and {"name": "SIGDL_DATA", "value": "/data"} in (container["env"])
        )
        (claim,) = [v for v in pod["volumes"] if v["name"] == "data"]
        assert claim["persistentVolumeClaim"] == {"claimName": spec.data_claim, "readOnly": True}
    assert [s["name"] for s in pod.get("imagePullSecrets", [])] == list(spec.pull_secrets)
    # a GPU Job lands on the GPU nodes: their labels, their taints tolerated
    assert pod.get("nodeSelector", {}) == spec.node_selector
    assert pod.get("tolerations", []) == list(spec.tolerations)


def test_the_pod_runs_as_the_charts_pods_do():
    chart = Path(__file__).resolve().parents[2] / "charts" / "sigdl" / "values.yaml"
    from sigdl.core import yamlio

    values = yamlio.load_yaml(chart.read_text())
    pod = _render()["spec"]["template"]["spec"]
    assert pod["securityContext"] == values["podSecurityContext"]
    assert pod["containers"][0]["securityContext"] == values["securityContext"]
    # a read-only root: the pod writes only under its scratch emptyDir
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["SIGDL_HOME"].startswith(kubejob.SCRATCH + "/") and env["HOME"] == kubejob.SCRATCH
    assert {"name": "scratch", "emptyDir": {}} in pod["volumes"]


def test_the_strict_schemas_refuse_what_the_cluster_would_not_run():
    manifest = _render()
    for path, bad in [
        (("spec", "backoffLimitt"), 2),  # a typo the API server would drop silently
        (("spec", "backoffLimit"), "two"),
        (("spec", "template", "spec", "containers", 0, "resources", "requests", "cpu"), []),
        (("spec", "template", "spec", "securityContext", "runAsNonRoot"), "yes"),
    ]:
        broken = copy.deepcopy(manifest)
        node = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = bad
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(broken)


def test_no_secret_value_reaches_the_manifest():
    manifest = _render()
    text = json.dumps(manifest)
    assert [name for name, value in SECRETS.items() if value in text] == []
    env = {e["name"]: e for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SIGDL_S3_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "sigdl-minio", "key": "accessKey"}
    }
    assert env["SIGDL_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secretKey"
    # what the pod needs to reach the store and MLflow; the service's own settings stay home
    forwarded = {"SIGDL_S3_ENDPOINT", "SIGDL_S3_REGION", "SIGDL_MLFLOW_TRACKING_URI"}
    scratch = {"SIGDL_HOME", "SIGDL_PROGRESS", "HOME"}
    assert set(env) == forwarded | scratch | set(kubejob.SECRET_KEYS)
    assert env["SIGDL_HOME"]["value"] != ENVIRONMENT["SIGDL_HOME"]


def test_s3_keys_without_a_secret_to_give_the_pod_are_refused():
    with pytest.raises(InputError, match="SIGDL_JOB_S3_SECRET names no Secret"):
        _render(_spec(s3_secret=None))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"root_uri": "file:///srv/jobs"}, "Job root_uri='file:///srv/jobs': expected an s3://"),
        ({"memory": "4 GB"}, "Job memory='4 GB': expected a Kubernetes quantity"),
        ({"namespace": "My_NS"}, "Job namespace='My_NS': expected a DNS label"),
        ({"image": " "}, "Job image=' ': expected an image reference"),
        ({"gpus": -1}, "Job gpus=-1: expected an integer >= 0"),
        ({"pull_secrets": ("Registry",)}, "Job pull_secrets=('Registry',): expected Secret"),
        ({"node_selector": {"gpu": 1}}, "Job node_selector 'gpu': 1: expected a node label"),
        ({"node_selector": {"-bad": "x"}}, "Job node_selector '-bad': 'x': expected a node label"),
        (
            {"tolerations": ({"key": "gpu", "operator": "Maybe"},)},
            "Job toleration {'key': 'gpu', 'operator': 'Maybe'}: operator: expected one of Exists",
        ),
        (
            {"tolerations": ({"key": "gpu", "effect": "NoRun"},)},
            "Job toleration {'key': 'gpu', 'effect': 'NoRun'}: effect: expected one of NoSchedule",
        ),
        ({"tolerations": ({"keys": "gpu"},)}, "Job toleration {'keys': 'gpu'}: field 'keys'"),
        ({"tolerations": ("gpu",)}, "Job toleration 'gpu': expected an object"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_field(fields, message):
    with pytest.raises(InputError) as caught:
        _spec(**fields)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_the_settings_make_the_spec(monkeypatch):
    for name, value in {
        "SIGDL_JOB_IMAGE": "registry/sigdl:2", "SIGDL_JOB_URI": "s3://b/jobs/",
        "SIGDL_JOB_NAMESPACE": "ml", "SIGDL_JOB_GPUS": "1", "SIGDL_JOB_PULL_SECRETS": "a, b",
        "SIGDL_JOB_BACKOFF_LIMIT": "3", "SIGDL_JOB_DATA_CLAIM": "datasets",
        "SIGDL_JOB_NODE_SELECTOR": '{"nvidia.com/gpu.present": "true"}',
        "SIGDL_JOB_TOLERATIONS": '[{"key": "nvidia.com/gpu", "operator": "Exists"}]',
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    spec = JobSpec.from_settings()
    assert (spec.image, spec.root_uri, spec.namespace, spec.gpus) == (
        "registry/sigdl:2", "s3://b/jobs", "ml", 1,
    )  # fmt: skip
    assert spec.node_selector == {"nvidia.com/gpu.present": "true"}
    assert spec.tolerations == ({"key": "nvidia.com/gpu", "operator": "Exists"},)
    assert spec.pull_secrets == ("a", "b") and spec.backoff_limit == 3
    assert spec.job_uri("retest", "abc") == "s3://b/jobs/retest/abc"
    monkeypatch.setenv("SIGDL_JOB_TOLERATIONS", '{"key": "nvidia.com/gpu"}')
    with pytest.raises(InputError, match=r"SIGDL_JOB_TOLERATIONS=.* expected a list in JSON"):
        JobSpec.from_settings()
    monkeypatch.setenv("SIGDL_JOB_NODE_SELECTOR", "gpu=true")
    with pytest.raises(InputError, match=r"SIGDL_JOB_NODE_SELECTOR=.gpu=true. .*expected JSON"):
        JobSpec.from_settings()
    monkeypatch.delenv("SIGDL_JOB_IMAGE")
    with pytest.raises(InputError, match="SIGDL_JOB_IMAGE is unset"):
        JobSpec.from_settings()


# --- the services' switch -----------------------------------------------------------------------
def _pool(tmp_path: Path, service: str, fn) -> jobs.WorkerPool:
    return jobs.WorkerPool(
        jobs.JobStore(tmp_path / f"{service}.db"), service, fn, workers=1, queue_size=1
    )


def test_the_backend_setting_is_checked_and_read_by_the_cluster_services(monkeypatch, tmp_path):
    monkeypatch.setenv("SIGDL_JOB_BACKEND", "slurm")
    with pytest.raises(InputError, match="SIGDL_JOB_BACKEND='slurm': expected one of local"):
        CompressionServicer(_pool(tmp_path, "compression", compress_job))
    monkeypatch.setenv("SIGDL_JOB_BACKEND", "local")
    assert CompressionServicer(_pool(tmp_path, "compression", compress_job)).pool.backend is None
    monkeypatch.setenv("SIGDL_JOB_BACKEND", "process")
    backend = CompressionServicer(_pool(tmp_path, "compression", compress_job)).pool.backend
    assert isinstance(backend.launcher, jobrun.ProcessLauncher)

    monkeypatch.setenv("SIGDL_JOB_BACKEND", "kubernetes")
    monkeypatch.setenv("SIGDL_JOB_IMAGE", "registry/sigdl:1")
    monkeypatch.setenv("SIGDL_JOB_URI", "s3://sigdl/jobs")
    monkeypatch.setenv("SIGDL_JOB_NAMESPACE", "sigdl")
    pool = CompressionServicer(_pool(tmp_path, "compression", compress_job)).pool
    assert isinstance(pool.backend, jobrun.WorkRunner)
    assert isinstance(pool.backend.launcher, KubeJobLauncher)
    # deploy keeps its jobs at home: it holds the signing key and the edge clusters' access
    deploy = DeployServicer(_pool(tmp_path, "deploy", DeployServicer.job_fn))
    assert deploy.pool.backend is None
    # outputs go where the pod reaches them; a folder of the service's pod is refused at Submit
    with pytest.raises(jobs.FieldError, match="out_uri: 'file:///srv/out': a Kubernetes Job"):
        pool.submit({"x": 1}, "file:///srv/out", None)
    job = pool.submit({"x": 1}, None, None)
    assert job.out_uri == f"s3://sigdl/jobs/compression/{job.id}/out"


# --- reading a Job's status ---------------------------------------------------------------------
def _job_status(**status: Any) -> dict:
    return {"metadata": {"name": "j"}, "status": status}


@pytest.mark.parametrize(
    ("status", "phase", "reason"),
    [
        ({}, "Pending", ""),
        ({"active": 1, "ready": 1}, "Running", ""),
        ({"conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                         {"type": "Complete", "status": "True", "reason": "CompletionsReached"}],
          "succeeded": 1}, "Succeeded", "CompletionsReached"),
        ({"conditions": [{"type": "FailureTarget", "status": "True"}], "active": 1},
         "Running", ""),  # pods still terminating: not over yet
        ({"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                          "message": "Job has reached the specified backoff limit"}],
          "failed": 2}, "Failed", "BackoffLimitExceeded"),
        ({"conditions": [{"type": "Complete", "status": "False"}]}, "Pending", ""),
    ],
)  # fmt: skip
def test_the_status_of_a_job(status, phase, reason):
    read = JobStatus.of(_job_status(**status))
    assert (read.phase, read.reason) == (phase, reason)
    assert read.ended == (phase in ("Succeeded", "Failed"))


def test_how_a_job_that_stored_no_result_ended_becomes_the_job_record():
    """(A stored result.json wins over all of these: jobrun.WorkRunner, the same for the
    process backend, tested in tests/integration/test_jobrun.py.)"""
    launcher = KubeJobLauncher(_spec(root_uri="s3://unused"), batch=object(), core=object())
    deadline = JobStatus("Failed", "DeadlineExceeded", "Job was active longer than specified", 0,
                         0, 0, 1)  # fmt: skip
    failed = launcher.failure("j", deadline)
    assert "sigdl/j failed (DeadlineExceeded)" in failed["error"] and not failed["retryable"]
    backoff = JobStatus("Failed", "BackoffLimitExceeded", "", 0, 0, 0, 2)
    assert launcher.failure("j", backoff)["retryable"]  # OOM, a lost node: try again
    done = JobStatus("Succeeded", "CompletionsReached", "", 0, 0, 1, 0)
    assert "completed without storing result.json" in launcher.failure("j", done)["error"]


def test_a_pods_state_in_one_line():
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling\n "registry/sigdl:9"'}
    pod = {"status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": waiting}}]}}
    assert kubejob.pod_state(pod) == (
        'Pending (ImagePullBackOff: Back-off pulling "registry/sigdl:9")'
    )
    oom = {"status": {"phase": "Failed", "containerStatuses": [
        {"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}}  # fmt: skip
    assert kubejob.pod_state(oom) == "Failed (OOMKilled, exit 137)"


# --- on a live cluster --------------------------------------------------------------------------
def _kubeconfig() -> Path | None:
    path = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
    return path if path.is_file() else None


NO_CLUSTER = (
    "needs a kubeconfig (KUBECONFIG or ~/.kube/config); with one: "
    ".venv/bin/python -m pytest -q -m cluster tests/services/test_kubejob.py (see the docstring)"
)


@pytest.mark.cluster
@pytest.mark.skipif(_kubeconfig() is None, reason=NO_CLUSTER)
def test_a_job_is_created_followed_and_deleted_on_a_real_cluster():
    """A suspended Job (it starts no pod, so any cluster and no image will do): created,
    followed through its watch until a Cancel, then deleted with its pods in the background."""
    launcher = KubeJobLauncher(_spec(namespace=kubejob.current_namespace(), s3_secret=None))
    runner = jobrun.WorkRunner(launcher)
    job_id = uuid.uuid4().hex
    uri = launcher.spec.job_uri("compression", job_id)
    manifest = kubejob.render_job(
        launcher.spec, service="compression", job_id=job_id, fn_ref=FN, job_uri=uri,
        environment={},
    )  # fmt: skip
    manifest["spec"]["suspend"] = True
    name = launcher.create(manifest)
    handle = jobrun.WorkHandle("kubernetes", uri, namespace=launcher.spec.namespace, job=name)
    events, looks = [], []
    try:
        with pytest.raises(kubejob.KubeJobError, match="HTTP 409"):
            launcher.create(manifest)  # one Job per job id

        def stop() -> str:
            looks.append(1)
            return jobs.DETACH if len(looks) >= 2 else ""  # after one wait on the watch

        hooks = jobs.BackendHooks(events.append, stop, lambda handle, pid: None)
        assert runner.follow(launcher.attach(handle), hooks, "following") == {}
        assert events[0].message == "following"
        assert events[1].kind == "kubejob" and events[1]["job"] == name
        assert launcher.read(name)["metadata"]["labels"]["sigdl.io/job-id"] == job_id
    finally:
        launcher.delete(name)
    launcher.delete(name)  # deleting what is gone is no error
    with pytest.raises(kubejob.KubeJobError, match="HTTP 404"):
        for _ in range(30):  # background propagation: the Job goes once its finalizers ran
            launcher.read(name)
            time.sleep(1)
    # a restarted service adopting the job finds its Job deleted: FAILED, saying so
    gone = launcher.attach(handle).look(events.append)
    assert gone is not None and f"Kubernetes Job {handle.namespace}/{name} is gone" in gone["error"]


@pytest.mark.cluster
@pytest.mark.skipif(
    _kubeconfig() is None or not (settings.SIGDL_JOB_IMAGE.get() and settings.SIGDL_JOB_URI.get()),
    reason=f"{NO_CLUSTER}, and SIGDL_JOB_IMAGE, SIGDL_JOB_URI=s3://... the pods reach",
)
def test_a_compression_job_runs_as_a_kubernetes_job_on_a_real_cluster(seeded_runs):
    launcher = KubeJobLauncher(JobSpec.from_settings())
    runner = jobrun.WorkRunner(launcher)
    checkpoint = f"{launcher.spec.root_uri}/inputs/{uuid.uuid4().hex}"
    store.put_dir(checkpoint, seeded_runs["a"])
    job_id = uuid.uuid4().hex
    params = {"checkpoint": checkpoint, "recipe": "int8", "recipe_is_uri": False,
              "dataset": "digits", "lineage": None}  # fmt: skip
    record = jobs.JobRecord(
        id=job_id, request_id=job_id, service="compression", state=jobs.JobState.RUNNING,
        params=params, out_uri=runner.default_out("compression", job_id),
    )  # fmt: skip
    events, handles = [], []
    hooks = jobs.BackendHooks(events.append, lambda: "", lambda h, pid: handles.append(h))
    outcome = runner.run(record, compress_job, hooks)
    assert "result" in outcome, outcome
    assert {o["uri"].rsplit("/", 1)[1] for o in outcome["result"]["outputs"]} >= {"model.sdc"}
    assert [e["phase"] for e in events if e.kind == "kubejob"][-1] == "Succeeded"
    assert any(e.kind == "step" for e in events)  # the pod's progress, forwarded
    assert jobrun.WorkHandle.from_json(handles[0]).job == kubejob.job_name("compression", job_id)
