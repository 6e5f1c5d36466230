"""Multi-node training as a Kubeflow Trainer TrainJob (services/training/trainjob.py).

Without a cluster: rendered manifests validate against the TrainJob CRD's OpenAPI v3 schema
(`../shared/schemas/`), no secret value reaches a manifest, and the node entry point under
torchrun with the PET_* environment the torch-distributed runtime injects gives the same weights
as `launch(..., nproc=2)`. Following a TrainJob through the Kubernetes API needs a real one:
there is no stand-in for it here, only the live tests below. What decides the following is
tested on TrainJob status documents valid against the CRD's status schema (follow, finish,
fail, gone), and adoption on a real job store: a training job's worker records its TrainJob's
handle, the service stops (its worker killed, the job left RUNNING), and the next service on
the store (SQLite; PostgreSQL through the `postgres_uri` fixture, tests/conftest.py) runs the
job again with that handle, to follow the TrainJob rather than create another.

    SIGDL_DATA=../shared/datasets .venv/bin/python -m pytest -q tests/services/test_trainjob.py

The live tests (`-m cluster`) need a kubeconfig, Kubeflow Trainer with the
`torch-distributed` ClusterTrainingRuntime, the SigDL image and an s3:// prefix the nodes reach:

    SIGDL_TRAINJOB_IMAGE=registry/sigdl:TAG SIGDL_TRAINJOB_URI=s3://sigdl/trainjobs \\
    SIGDL_TRAINJOB_S3_SECRET=sigdl-minio SIGDL_S3_ENDPOINT=minio.sigdl:9000 \\
    SIGDL_TRAINJOB_NAMESPACE=sigdl .venv/bin/python -m pytest -q -m cluster \\
        tests/services/test_trainjob.py
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
import yaml

from services.training import trainjob
from services.training.stage import build_model, train_model
from services.training.trainjob import TrainJobRunner, TrainJobSpec
from sigdl.core import distributed, jobrun, jobs, settings, store
from sigdl.core.datasets import load_dataset
from sigdl.core.errors import InputError
from sigdl.core.training import TrainConfig

REPO = Path(__file__).resolve().parents[2]
CRD = REPO.parent / "shared" / "schemas" / "trainer.kubeflow.org_trainjobs.yaml"
CFG = TrainConfig(model="lenet-300-100", dataset="digits", epochs=1, batch_size=64, seed=3)
SECRETS = {  # sentinel values that must never appear in a manifest
    "SIGDL_S3_ACCESS_KEY": "access-sentinel-7f3a",
    "SIGDL_S3_SECRET_KEY": "secret-sentinel-9c1e",
    "AWS_ACCESS_KEY_ID": "aws-access-sentinel-2b8d",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-sentinel-5e0f",
    "SIGDL_TOKEN": "token-sentinel-4a6c",
}
ENVIRONMENT = {
    **SECRETS,
    "SIGDL_S3_ENDPOINT": "minio.sigdl.svc.cluster.local:9000",
    "SIGDL_S3_REGION": "us-east-1",
    "SIGDL_HOME": "/home/sigdl/.sigdl",  # the service's own: not for the nodes
}


# --- the CRD's schema, made strict --------------------------------------------------------------
def _strict(schema: Any) -> Any:
    """The API server prunes unknown fields of a structural schema silently; a manifest should
    have none, so refuse them (kubectl --validate=strict): every object schema that lists its
    properties gets additionalProperties false, unless it preserves unknown fields."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def crd_schema() -> dict:
    if not CRD.is_file():
        pytest.skip(f"the TrainJob CRD is not at {CRD}")
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == trainjob.VERSION]
    assert crd["spec"]["group"] == trainjob.GROUP and crd["spec"]["names"]["kind"] == trainjob.KIND
    return version["schema"]["openAPIV3Schema"]


# CEL rules (x-kubernetes-validations) jsonschema cannot run: each one a manifest can meet on
# create, as Python. `self == oldSelf` (immutability) only constrains updates.
CEL_RULES = {
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')": lambda v: bool(
        re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", v["metadata"]["name"])
    ),
    "size(self.metadata.name) <= 63": lambda v: len(v["metadata"]["name"]) <= 63,
    "self >= 1": lambda v: v >= 1,
    "self == oldSelf": lambda v: True,
    "has(self.lastUpdatedTime)": lambda v: "lastUpdatedTime" in v,  # status.trainerStatus
}


def _cel_rules(schema: dict, value: Any) -> list[tuple[str, Any]]:
    """(rule, value) for every CEL rule on a schema node that `value` has."""
    found = [(r["rule"], value) for r in schema.get("x-kubernetes-validations", [])]
    if isinstance(value, dict):
        for key, child in value.items():
            sub = schema.get("properties", {}).get(key) or schema.get("additionalProperties")
            if isinstance(sub, dict):
                found += _cel_rules(sub, child)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for child in value:
            found += _cel_rules(schema["items"], child)
    return found


def validate(manifest: dict, schema: dict) -> None:
    jsonschema.Draft7Validator(_strict(schema)).validate(manifest)
    for rule, value in _cel_rules(schema, manifest):
        assert rule in CEL_RULES, f"a CEL rule this test cannot check yet: {rule}"
        assert CEL_RULES[rule](value), f"CEL rule {rule} fails on {value!r}"


def _spec(**fields: Any) -> TrainJobSpec:
    return TrainJobSpec(
        **{
            "image": "registry.example/sigdl:1.0",
            "namespace": "sigdl",
            "s3_secret": "sigdl-minio",
            **fields,
        }
    )


def _render(spec: TrainJobSpec, cfg: TrainConfig = CFG, env: dict | None = None) -> dict:
    return trainjob.render_trainjob(
        cfg,
        spec,
        name=trainjob.job_name(cfg),
        job_uri="s3://sigdl/trainjobs/run-1",
        environment=ENVIRONMENT if env is None else env,
    )


# --- rendering ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("nodes", "nproc", "gpus"), [(1, 1, 0), (2, 1, 0), (2, 2, 0), (2, 1, 1), (4, 8, 8)]
)
def test_manifest_is_valid_against_the_trainjob_crd(crd_schema, nodes, nproc, gpus):
    manifest = _render(_spec(nodes=nodes, nproc_per_node=nproc, gpus_per_node=gpus))
    validate(manifest, crd_schema)
    trainer = manifest["spec"]["trainer"]
    assert manifest["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert manifest["spec"]["runtimeRef"] == {"name": "torch-distributed"}
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (nodes, nproc)
    assert trainer["command"] == [
        "torchrun",
        "-m",
        "sigdl.core.distributed",
        "s3://sigdl/trainjobs/run-1",
    ]
    resources = trainer["resourcesPerNode"]
    assert resources["requests"].get("nvidia.com/gpu", 0) == gpus
    assert resources["limits"].get("nvidia.com/gpu", 0) == gpus
    assert json.loads(manifest["metadata"]["annotations"]["sigdl.io/train-config"]) == CFG.to_dict()


def test_the_strict_schema_refuses_what_the_cluster_would_not_run(crd_schema):
    manifest = _render(_spec())
    for path, bad in [
        (("spec", "trainer", "numNode"), 2),  # a typo the API server would prune silently
        (("spec", "trainer", "numNodes"), -1),
        (("spec", "trainer", "resourcesPerNode", "requests", "memory"), "lots"),
        (("spec", "trainer", "numProcPerNode"), 0),  # a CEL rule
        (("metadata", "name"), "Sigdl_Train"),  # a CEL rule
    ]:
        broken = copy.deepcopy(manifest)
        node = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = bad
        with pytest.raises((jsonschema.ValidationError, AssertionError)):
            validate(broken, crd_schema)


def test_no_secret_value_reaches_the_manifest():
    manifest = _render(_spec())
    text = json.dumps(manifest)
    leaked = [name for name, value in SECRETS.items() if value in text]
    assert leaked == []
    env = {e["name"]: e for e in manifest["spec"]["trainer"]["env"]}
    assert env["SIGDL_S3_ACCESS_KEY"] == {
        "name": "SIGDL_S3_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "sigdl-minio", "key": "accessKey"}},
    }
    assert env["SIGDL_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secretKey"
    assert env["SIGDL_S3_ENDPOINT"]["value"] == ENVIRONMENT["SIGDL_S3_ENDPOINT"]
    # the nodes get what they need to reach the job; the service's own settings stay home
    assert set(env) == {"SIGDL_S3_ENDPOINT", "SIGDL_S3_REGION", *trainjob.SECRET_KEYS}


def test_s3_keys_without_a_secret_to_give_the_nodes_are_refused():
    with pytest.raises(InputError, match="SIGDL_TRAINJOB_S3_SECRET names no Secret"):
        _render(_spec(s3_secret=None))
    anonymous = _render(_spec(s3_secret=None), env={"SIGDL_S3_ENDPOINT": "minio:9000"})
    assert [e["name"] for e in anonymous["spec"]["trainer"]["env"]] == ["SIGDL_S3_ENDPOINT"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nodes": 0}, "TrainJob nodes=0: expected an integer >= 1"),
        ({"nproc_per_node": 2, "gpus_per_node": 1}, "TrainJob nproc_per_node=2: expected at most"),
        ({"memory": "4 GB"}, "TrainJob memory='4 GB': expected a Kubernetes quantity"),
        ({"namespace": "My_NS"}, "TrainJob namespace='My_NS': expected a DNS label"),
        ({"image": " "}, "TrainJob image=' ': expected an image reference"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_field(fields, message):
    with pytest.raises(InputError) as caught:
        _spec(**fields)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_batch_the_ranks_cannot_share_is_refused_before_submitting():
    with pytest.raises(InputError, match="batch_size=64 must be divisible by the TrainJob's 3"):
        _render(_spec(nodes=3))


def test_job_names_are_fresh_dns_labels():
    names = {trainjob.job_name(TrainConfig(model="MobileNet_V2" * 5, dataset="x")) for _ in "ab"}
    assert len(names) == 2
    assert all(re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", n) and len(n) <= 63 for n in names)


# --- the training stage's switch ----------------------------------------------------------------
def test_the_backend_setting_is_checked_and_the_stage_sends_training_to_the_cluster(monkeypatch):
    monkeypatch.setenv("SIGDL_TRAINING_BACKEND", "kubernetes")
    with pytest.raises(InputError, match="SIGDL_TRAINING_BACKEND='kubernetes': expected one of"):
        trainjob.uses_trainjob()
    monkeypatch.setenv("SIGDL_TRAINING_BACKEND", "trainjob")
    monkeypatch.setenv("SIGDL_TRAINJOB_URI", "file:///tmp/trainjobs")
    data = load_dataset("digits")
    model, meta = build_model(CFG, data)
    with pytest.raises(InputError, match="SIGDL_TRAINJOB_URI='file:///tmp/trainjobs': expected"):
        train_model(model, meta, CFG, data, nproc=1, data_dir=None, on_event=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pet_environment_for_two_local_ranks_gives_the_weights_of_nproc_2(tmp_path):
    """What a one-node TrainJob with numProcPerNode 2 runs, on loopback: torchrun without
    --standalone, its layout only from PET_*, on the manifest's command and a job URI (file://
    here, s3:// on a cluster) laid out as the runner lays it out."""
    data = load_dataset("digits")
    reference, meta = build_model(CFG, data)
    under_pet, _ = build_model(CFG, data)
    distributed.launch(reference, CFG, meta.channels, meta.input_size, 2, tmp_path / "launch")

    job_dir = tmp_path / "trainjob" / "sigdl-pet"
    distributed.write_job(under_pet, CFG, meta.channels, meta.input_size, job_dir)
    manifest = trainjob.render_trainjob(
        CFG,
        _spec(nodes=1, nproc_per_node=2),
        name="sigdl-pet",
        job_uri=job_dir.as_uri(),
        environment={},
    )
    command = manifest["spec"]["trainer"]["command"]
    assert command[0] == "torchrun"
    pet = {
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "2",
        "PET_NODE_RANK": "0",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(_free_port()),
    }
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", *command[1:]],
        env={**env, **pet},
        check=True,
        timeout=300,
    )
    # rank 0 wrote the outputs back to the job URI beside the inputs, and its events
    assert sorted(p.name for p in job_dir.iterdir()) == sorted(
        [*distributed.INPUTS, *distributed.OUTPUTS, jobrun.EVENTS]
    )
    history = distributed.read_result(under_pet, job_dir)
    assert len(history) == 1
    for (name, a), b in zip(
        reference.state_dict().items(), under_pet.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    fresh, _ = build_model(CFG, data)
    assert not torch.equal(fresh.net.fc1.weight, under_pet.net.fc1.weight)


def test_rank_0_stores_epoch_events_while_it_trains(s3_server, monkeypatch, tmp_path):
    """What the training service forwards while it follows a TrainJob: rank 0 of a torchrun
    under the PET_* environment (2 ranks) stores an `epoch` event per epoch under the job's
    s3:// URI (a real S3 server) as each epoch ends, well before its weights and history."""
    for name, value in {"SIGDL_S3_ENDPOINT": s3_server.endpoint, "SIGDL_S3_SECURE": "0",
                        "SIGDL_S3_ACCESS_KEY": s3_server.access_key,
                        "SIGDL_S3_SECRET_KEY": s3_server.secret_key}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    store.S3Config.from_settings().make_client().make_bucket(bucket)
    cfg = TrainConfig(model="lenet-300-100", dataset="digits", epochs=4, batch_size=64, seed=3)
    data = load_dataset("digits")
    model, meta = build_model(cfg, data)
    distributed.write_job(model, cfg, meta.channels, meta.input_size, tmp_path / "job")
    job_uri = f"s3://{bucket}/trainjobs/sigdl-events"
    for name in distributed.INPUTS:  # as TrainJobRunner.train uploads them
        store.put_file(distributed.job_file_uri(job_uri, name), tmp_path / "job" / name)
    command = trainjob.node_command(job_uri)
    pet = {"PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "0",
           "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(_free_port())}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *command[1:]],
        env={**env, **pet, "SIGDL_JOB_EVENTS_FLUSH_S": "0.1"},
    )
    reader, seen = jobrun.EventReader(job_uri), []  # (event, history stored yet, still running)
    history_uri = distributed.job_file_uri(job_uri, distributed.HISTORY)
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            new = reader.new_events()  # then look: what was stored before the history?
            running, done = process.poll() is None, store.exists(history_uri)
            seen += [(e, done, running) for e in new]
            time.sleep(0.05)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    seen += [(e, True, False) for e in reader.new_events()]
    epochs = [(e, done, running) for e, done, running in seen if e.kind == "epoch"]
    history = json.loads(store.get_bytes(history_uri))
    # one event per epoch (rank 0 only), in order, with the figures of the history's rows
    assert [e.done for e, _, _ in epochs] == [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [e.total for e, _, _ in epochs] == [4] * 4
    assert [e["loss"] for e, _, _ in epochs] == [r["loss"] for r in history]
    # the first epochs arrived while training went on, not with the result at the end
    assert [(done, running) for _, done, running in epochs[:2]] == [(False, True)] * 2
    assert seen[0][0].kind == "log" and "2 processes" in seen[0][0].message


def _kubeconfig() -> Path | None:
    path = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
    return path if path.is_file() else None


@pytest.mark.cluster
@pytest.mark.skipif(
    _kubeconfig() is None
    or not (settings.SIGDL_TRAINJOB_IMAGE.get() and settings.SIGDL_TRAINJOB_URI.get()),
    reason="needs a kubeconfig (KUBECONFIG or ~/.kube/config), Kubeflow Trainer, and "
    "SIGDL_TRAINJOB_IMAGE, SIGDL_TRAINJOB_URI=s3://... (see this file's docstring) with -m cluster",
)
def test_a_two_node_trainjob_trains_on_a_real_cluster():
    data = load_dataset("digits")
    model, meta = build_model(CFG, data)
    fresh, _ = build_model(CFG, data)
    events = []
    runner = TrainJobRunner(TrainJobSpec.from_settings(nproc_per_node=1))
    history = runner.train(
        model, CFG, meta.channels, meta.input_size, settings.SIGDL_TRAINJOB_URI.get(), events.append
    )
    assert len(history) == 1
    assert [e["phase"] for e in events if e.kind == "trainjob"][-1] == "Complete"
    assert [e.kind for e in events][-1] == "epoch"
    assert not torch.equal(fresh.net.fc1.weight, model.net.fc1.weight)


# --- following a TrainJob, and adopting it after a restart ---------------------------------------
NOW = "2026-11-30T12:00:00Z"


def _condition(kind: str, reason: str, message: str, status: str = "True") -> dict:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": NOW,
    }


def _jobs(active: int, succeeded: int = 0, failed: int = 0) -> list[dict]:
    return [
        {
            "name": "node",
            "active": active,
            "ready": active,
            "succeeded": succeeded,
            "failed": failed,
            "suspended": 0,
        }
    ]


CREATED = _condition("Created", "JobsCreationSucceeded", "TrainJob Jobs are created")
# status documents as the Trainer controller writes them (its condition types Created, Suspended,
# Complete, Failed), each checked against the CRD's status schema below: (status, phase, outcome)
STATUSES = {
    "just created": ({"conditions": [CREATED]}, "Pending", None),
    "running": (
        {
            "conditions": [CREATED],
            "jobsStatus": _jobs(active=2),
            "trainerStatus": {"progressPercentage": 40, "lastUpdatedTime": NOW},
        },
        "Running",
        None,
    ),
    "resumed after a suspension": (
        {
            "conditions": [CREATED, _condition("Suspended", "Resumed", "resumed", "False")],
            "jobsStatus": _jobs(active=2),
        },
        "Running",
        None,
    ),
    "complete": (
        {
            "conditions": [CREATED, _condition("Complete", "JobsCompleted", "jobs completed")],
            "jobsStatus": _jobs(active=0, succeeded=2),
        },
        "Complete",
        {"result": {}},
    ),
    "failed": (
        {
            "conditions": [
                CREATED,
                _condition("Failed", "FailedJobs", "jobset node failed:\nBackoffLimitExceeded"),
            ],
            "jobsStatus": _jobs(active=0, failed=1),
        },
        "Failed",
        {
            "error": "TrainJob sigdl/sigdl-lenet-5-1a2b3c4d failed (FailedJobs): jobset node "
            "failed: BackoffLimitExceeded",
            "retryable": False,
        },
    ),
    "suspended": (
        {"conditions": [CREATED, _condition("Suspended", "Suspended", "TrainJob is suspended")]},
        "Suspended",
        {
            "error": "TrainJob sigdl/sigdl-lenet-5-1a2b3c4d suspended (Suspended): TrainJob is "
            "suspended",
            "retryable": True,
        },
    ),
}
HANDLE = jobrun.WorkHandle(
    "trainjob",
    "s3://sigdl/trainjobs/sigdl-lenet-5-1a2b3c4d",
    namespace="sigdl",
    job="sigdl-lenet-5-1a2b3c4d",
    events_read=3,
)


@pytest.mark.parametrize("case", list(STATUSES))
def test_a_trainjobs_status_decides_whether_it_is_followed_on(crd_schema, case):
    status, phase, outcome = STATUSES[case]
    document = {**_render(_spec()), "status": status}
    validate(document, crd_schema)  # a status the API server could serve
    seen = trainjob.TrainJobStatus.of(document)
    assert seen.phase == phase
    assert trainjob.outcome_of(HANDLE, seen) == outcome
    if case == "running":
        assert (seen.active, seen.progress) == (2, 40)
        assert seen.event(HANDLE.job)["phase"] == "Running"


def test_a_trainjob_deleted_while_no_service_followed_it_fails_the_job_retryable():
    gone = trainjob.outcome_of(HANDLE, None)  # what TrainJobWork.look makes of HTTP 404
    assert gone == {
        "error": "TrainJob sigdl/sigdl-lenet-5-1a2b3c4d is gone (deleted before it "
        "ended): retry the job",
        "retryable": True,
    }


def test_a_handle_is_followed_again_only_in_the_runners_namespace():
    runner = TrainJobRunner(_spec())
    assert runner.attach(HANDLE.to_json()) == HANDLE
    for other in (replace(HANDLE, namespace="elsewhere"), replace(HANDLE, backend="kubernetes")):
        with pytest.raises(jobs.RetryableError, match=r"is not a TrainJob in this service's name"):
            runner.attach(other.to_json())
    with pytest.raises(InputError, match=r"^job handle '\{\}': unreadable"):
        runner.attach("{}")


def test_a_handle_left_by_a_trainjob_is_refused_by_a_local_training_service(monkeypatch, tmp_path):
    """The training service's own job function, run again with a TrainJob's handle by a
    service that trains locally: FAILED and retryable, rather than a second training."""
    from services.training.server import run_job

    monkeypatch.setenv("SIGDL_TRAINING_BACKEND", "local")
    params = {"config": CFG.to_dict(), "nproc": 1, "lineage": None}
    outcome = jobs.run_outcome(
        run_job,
        "j1",
        params,
        store.as_uri(tmp_path / "out"),
        lambda event: None,
        handle=HANDLE.to_json(),
    )
    assert outcome == {
        "error": "its work is a TrainJob, and this service trains in its own process "
        "(SIGDL_TRAINING_BACKEND=local): retry the job",
        "retryable": True,
    }


def training_job(params: dict, job: jobs.JobContext) -> dict:
    """A training job's part that the pool sees, without a cluster: the worker records its
    TrainJob's handle and follows it (here: waits until its service stops); run again with a
    handle, it follows that TrainJob to its end (here: returns the handle it was given)."""
    if job.handle:
        return {"followed": job.handle}
    job.record(replace(HANDLE, job_uri=params["job_uri"]).to_json())
    time.sleep(600)
    return {}


def _events_so_far(db: jobs.JobStore, job_id: str) -> list[str]:
    """The messages of a running job's events, without waiting for more."""
    count = db.get(job_id).event_count
    return [e.message for _, e in zip(range(count), db.events(job_id), strict=False)]


def _wait(db: jobs.JobStore, job_id: str, done, timeout_s: float = 120) -> jobs.JobRecord:
    deadline = time.monotonic() + timeout_s
    while not done(job := db.get(job_id)):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_restarted_service_follows_the_trainjob_its_predecessor_started(
    kind, request, tmp_path, monkeypatch
):
    monkeypatch.setenv("SIGDL_HOME", str(tmp_path / "home"))
    if kind == "sqlite":

        def open_store(replica: str) -> jobs.JobStore:
            return jobs.JobStore(tmp_path / "training.db")
    else:
        uri = request.getfixturevalue("postgres_uri")
        service = f"training_{uuid.uuid4().hex[:8]}"
        monkeypatch.setenv("SIGDL_REPLICA_STALE_S", "1")

        def open_store(replica: str) -> jobs.JobStore:
            from sigdl.core.jobs_postgres import PostgresJobStore

            return PostgresJobStore(uri, service, replica=replica)

    first = jobs.WorkerPool(open_store("first"), "training", training_job, workers=1, queue_size=1)
    first.start()
    job = first.submit({"job_uri": "s3://sigdl/trainjobs/t-1"}, None, None)
    running = _wait(first.store, job.id, lambda j: bool(j.handle))
    assert jobrun.WorkHandle.from_json(running.handle) == replace(
        HANDLE, job_uri="s3://sigdl/trainjobs/t-1"
    )
    first.shutdown(grace_s=0.2)  # the worker is killed; its TrainJob would run on
    left = first.store.get(job.id)
    assert left.state == jobs.JobState.RUNNING and left.handle == running.handle
    assert _events_so_far(first.store, job.id)[-1].endswith("; its work runs on")
    first.store.close()
    if kind == "postgresql":
        time.sleep(1.5)  # the first replica's heartbeat goes stale
    second = jobs.WorkerPool(
        open_store("second"), "training", training_job, workers=1, queue_size=1
    )
    try:
        assert second.start() == []  # adopted, not failed
        done = _wait(second.store, job.id, lambda j: j.state.terminal)
        messages = [e.message for e in second.store.events(job.id)]
    finally:
        second.shutdown(grace_s=1)
        second.store.close()
    assert done.state == jobs.JobState.SUCCEEDED, done.error
    assert done.report == {"followed": running.handle}  # the TrainJob's handle, read back
    adopted = messages.index("adopted by this training service (the one that ran it stopped)")
    assert messages[adopted + 1].startswith("resumed in process ")
    assert messages[-1] == "succeeded"


@pytest.mark.cluster
@pytest.mark.skipif(
    _kubeconfig() is None,
    reason="needs a kubeconfig (KUBECONFIG or ~/.kube/config) and Kubeflow Trainer; with one: "
    "SIGDL_TRAINJOB_NAMESPACE=... .venv/bin/python -m pytest -q -m cluster "
    "tests/services/test_trainjob.py (see this file's docstring)",
)
def test_a_trainjob_is_followed_again_and_found_gone_on_a_real_cluster():
    """A suspended TrainJob (no pod starts, so no image is pulled): followed from its handle as
    a restarted service would, then deleted, and found gone."""
    spec = _spec(namespace=settings.SIGDL_TRAINJOB_NAMESPACE.get() or "default", s3_secret=None)
    runner = TrainJobRunner(spec, poll_s=1)
    manifest = _render(spec, env={})
    manifest["spec"]["suspend"] = True
    name = runner.create(manifest)
    handle = runner.attach(replace(HANDLE, namespace=spec.namespace, job=name).to_json())
    events: list = []
    try:
        work = trainjob.TrainJobWork(runner, handle)
        for _ in range(30):  # the controller marks it Suspended
            ended = work.look(events.append)
            if ended is not None:
                break
            time.sleep(1)
        assert ended is not None and "suspended" in ended["error"], ended
        assert events and events[-1]["trainjob"] == name
    finally:
        runner.delete(name)
    runner.delete(name)  # deleting what is gone is no error
    for _ in range(30):
        ended = trainjob.TrainJobWork(runner, handle).look(events.append)
        if ended is not None and "is gone" in ended["error"]:
            break
        time.sleep(1)
    assert ended is not None and f"TrainJob {spec.namespace}/{name} is gone" in ended["error"]
