"""Rollout of edge agents and canaries, in process.

Rendered Kubernetes objects are validated with `kubernetes-validate` (strict, Kubernetes 1.35,
as the chart tests do). Canaries run against a `file://` store with real training runs
(LeNet-300-100, 1 epoch on digits), `run_deploy` and real in-process `EdgeAgent`s whose status
files are what `promote_canary` reads. The Rollback RPC is called on a real `StageServer`.
Applying to a cluster needs a kubeconfig (`-m cluster`) and is skipped without one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml

from services.deploy.canary import promote_canary
from services.deploy.fleet import FleetTarget
from services.deploy.rollout import RolloutSpec, apply_rollout, render_rollout, to_yaml
from services.deploy.stage import run_deploy
from services.edge.agent import AgentConfig, EdgeAgent
from services.grpc_common.server import ServerConfig, StageServer
from services.protos.sigdl.v1 import deploy_pb2, deploy_pb2_grpc
from sigdl.cli import main
from sigdl.core import signing
from sigdl.core.errors import InputError

TARGET = "arm-cortex-a53"
K8S_VERSION = "1.35"
SHA = "ab" * 32


def validate(objects: list[dict]) -> None:
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc}")


def spec(**changes) -> RolloutSpec:
    base = dict(fleet="lab", target=TARGET, store_root="s3://artifacts/edge", version="v3",
                manifest_sha256=SHA, memory_mb=12.5, image="registry.local/sigdl:1")  # fmt: skip
    return RolloutSpec(**{**base, **changes})


# --- rendering ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"replicas": 4, "canary_fraction": 0.25},
        {"replicas": 0},
        {"s3_secret": "edge-s3", "s3_endpoint": "minio.edge:9000", "s3_secure": False},
        {"memory_mb": None, "version": None, "manifest_sha256": None},
        {"fleet": "a" * 63, "target": "jetson-tx2", "replicas": 1, "canary_fraction": 1.0},
    ],
)
def test_rendered_objects_pass_strict_kubernetes_validation(changes):
    objects = render_rollout(spec(**changes))
    validate(objects)
    assert [o["kind"] for o in objects][:3] == ["ConfigMap", "Service", "Deployment"]
    # and the YAML a dry run prints holds the same objects
    assert list(yaml.safe_load_all(to_yaml(objects))) == objects


def test_the_agent_deployment_is_pinned_safe_and_sized_by_the_retest():
    s = spec(replicas=4, canary_fraction=0.25)
    config_map, service, stable, canary = render_rollout(s)
    assert config_map["data"]["version"] == "v3" and config_map["data"]["manifest_sha256"] == SHA
    assert [d["spec"]["replicas"] for d in (stable, canary)] == [3, 1]
    for deployment, flag in ((stable, "0"), (canary, "1")):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"sigdl.io/target": TARGET}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        assert container["command"] == ["sigdl", "edge-agent"]
        assert container["args"][container["args"].index("--port") + 1] == "50060"
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
        assert container["readinessProbe"]["grpc"] == {"port": 50060}
        assert container["livenessProbe"]["grpc"] == {"port": 50060}
        # 256 MiB for the agent + 2 x 12.5 MiB (served model and the one a swap loads): 288 MiB
        assert container["resources"]["limits"]["memory"] == "288Mi"
        env = {e["name"]: e for e in container["env"]}
        assert env["SIGDL_AGENT_CANARY"]["value"] == flag
        assert env["SIGDL_VERIFY_KEY"]["value"] == "/etc/sigdl/verify/signing.pub"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["verify-key"]["secret"]["secretName"] == "sigdl-verify-key"
        selected = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= selected.items()  # both tracks serve
    assert canary["metadata"]["name"] == stable["metadata"]["name"] + "-canary"


def test_long_names_are_shortened_and_bad_specs_refused():
    long = spec(fleet="f" * 63, target="jetson-tx2")
    assert len(long.name) <= 52 and long.name != spec(fleet="f" * 62, target="jetson-tx2").name
    for changes, message in [
        ({"replicas": -1}, "replicas -1"),
        ({"canary_fraction": 1.5}, "canary fraction"),
        ({"memory_mb": float("nan")}, "memory figure"),
        ({"namespace": "Edge"}, "namespace"),
        ({"image": "sigdl latest"}, "image"),
    ]:
        with pytest.raises(InputError, match=message):
            spec(**changes)


# --- canaries with real agents ------------------------------------------------------------------
@pytest.fixture
def keys(tmp_path, monkeypatch) -> None:
    private, public = signing.generate_keys(tmp_path / "keys")
    monkeypatch.setenv("SIGDL_SIGNING_KEY", str(private))
    monkeypatch.setenv("SIGDL_VERIFY_KEY", str(public))


def agent(root: Path, agent_id: str, canary: bool) -> EdgeAgent:
    config = AgentConfig.from_settings("lab", TARGET, str(root), 0)
    return EdgeAgent(AgentConfig(**{**config.__dict__, "agent_id": agent_id, "canary": canary}))


def test_a_healthy_canary_is_promoted_and_reaches_the_fleet(seeded_runs, keys, tmp_path):
    root = tmp_path / "store"
    run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=str(root))
    stable, canary = agent(root, "edge-1", False), agent(root, "edge-2", True)
    assert [a.poll_once() for a in (stable, canary)] == ["loaded", "loaded"]
    result = run_deploy(str(seeded_runs["b"]), TARGET, "lab", store_root=str(root), canary=True)
    assert result["action"] == "canary" and result["pointer_uri"].endswith("/canary")
    assert FleetTarget.at(str(root), "lab", TARGET).read_pointer()["version"] == "v1"
    assert [a.poll_once() for a in (stable, canary)] == ["unchanged", "loaded"]
    assert (stable.model.version, canary.model.version) == ("v1", "v2")
    with pytest.raises(InputError, match="canary 'v2' of lab/arm-cortex-a53 is in progress"):
        run_deploy(str(seeded_runs["c"]), TARGET, "lab", store_root=str(root), canary=True)

    decision = promote_canary("lab", TARGET, str(root), deadline_s=5, poll_s=0.1)
    assert (decision.action, decision.current, decision.healthy_agents) == (
        "promoted", "v2", ["edge-2"],
    )  # fmt: skip
    ft = FleetTarget.at(str(root), "lab", TARGET)
    assert ft.read_canary() is None
    assert [h["action"] for h in ft.read_pointer()["history"]] == ["publish", "promote"]
    assert [a.poll_once() for a in (stable, canary)] == ["loaded", "unchanged"]
    assert (stable.model.version, canary.model.version) == ("v2", "v2")


def test_a_canary_that_never_reports_healthy_is_rolled_back(seeded_runs, keys, tmp_path):
    root = tmp_path / "store"
    run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=str(root))
    stable, canary = agent(root, "edge-1", False), agent(root, "edge-2", True)
    for a in (stable, canary):
        a.poll_once()
    run_deploy(str(seeded_runs["b"]), TARGET, "lab", store_root=str(root), canary=True)  # v2
    canary.poll_once()
    assert canary.model.version == "v2"
    # two healthy agents needed, one canary: the deadline passes short of them
    decision = promote_canary("lab", TARGET, str(root), deadline_s=0.5, min_healthy=2, poll_s=0.1)
    assert (decision.action, decision.current) == ("rolled_back", "v1")
    assert "1 of the 2 agents needed reported healthy on v2 within 0.5 s" in decision.reason
    assert FleetTarget.at(str(root), "lab", TARGET).read_canary() is None
    assert [a.poll_once() for a in (stable, canary)] == ["unchanged", "loaded"]
    assert (stable.model.version, canary.model.version) == ("v1", "v1")  # back to current
    assert [s["version"] for s in stable.status().swaps] == ["v1"]  # it never left v1


def test_a_canary_its_agents_refuse_is_rolled_back_at_once(
    seeded_runs, keys, tmp_path, monkeypatch
):
    root = tmp_path / "store"
    run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=str(root))
    canary = agent(root, "edge-2", True)
    canary.poll_once()
    monkeypatch.delenv("SIGDL_SIGNING_KEY")  # an unsigned canary: agents refuse it
    run_deploy(str(seeded_runs["b"]), TARGET, "lab", store_root=str(root), canary=True)
    assert canary.poll_once() == "refused"
    decision = promote_canary("lab", TARGET, str(root), deadline_s=60, poll_s=0.1)
    assert decision.action == "rolled_back" and decision.waited_s < 30
    assert decision.refused_by == ["edge-2"] and "unsigned" in decision.reason
    assert canary.poll_once() == "unchanged" and canary.model.version == "v1"


def test_canary_bad_input(seeded_runs, keys, tmp_path, capsys):
    root = tmp_path / "store"
    with pytest.raises(InputError, match="needs a current version"):
        run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=str(root), canary=True)
    with pytest.raises(InputError, match="no canary is in progress"):
        promote_canary("lab", TARGET, str(root))
    with pytest.raises(InputError, match="min_healthy 0"):
        promote_canary("lab", TARGET, str(root), min_healthy=0)
    run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=str(root))
    run_deploy(str(seeded_runs["b"]), TARGET, "lab", store_root=str(root), canary=True)
    argv = ["fleet", "promote", "lab", "--target", TARGET, "--store", str(root), "--deadline", "0"]
    assert main([*argv, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["action"] == "rolled_back"


# --- the CLI's dry run and the Rollback RPC -----------------------------------------------------
def test_cli_dry_run_prints_valid_manifests_and_publishes_nothing(seeded_runs, tmp_path, capsys):
    root = tmp_path / "store"
    argv = ["deploy", str(seeded_runs["a"]), "--target", TARGET, "--fleet", "lab",
            "--store", str(root), "--rollout", "--dry-run", "--replicas", "3",
            "--canary-fraction", "0.34"]  # fmt: skip
    assert main(argv) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    validate(objects)
    assert [o["spec"]["replicas"] for o in objects if o["kind"] == "Deployment"] == [1, 2]
    assert objects[0]["data"]["version"] == "v1"
    assert not root.exists()
    assert (
        main(["deploy", str(seeded_runs["a"]), "--target", TARGET, "--fleet", "lab", "--dry-run"])
        == 2
    )
    assert "--dry-run previews a rollout" in capsys.readouterr().err


def test_the_rollback_rpc(seeded_runs, keys):
    for run in ("a", "b"):
        run_deploy(str(seeded_runs[run]), TARGET, "lab")  # the server's default store
    server = StageServer(["deploy"], ServerConfig(port=0, workers=1, grace_s=0))
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = deploy_pb2_grpc.DeployServiceStub(channel)
            reply = stub.Rollback(deploy_pb2.RollbackRequest(fleet="lab", target=TARGET))
            assert (reply.version, reply.previous_version) == ("v1", "v2")
            assert json.loads(reply.result_json)["action"] == "rollback"
            for request, code in [
                (deploy_pb2.RollbackRequest(fleet="Lab", target=TARGET), "INVALID_ARGUMENT"),
                (deploy_pb2.RollbackRequest(fleet="lab", target="nope"), "INVALID_ARGUMENT"),
                (deploy_pb2.RollbackRequest(fleet="other", target=TARGET), "NOT_FOUND"),
                (deploy_pb2.RollbackRequest(fleet="lab", target=TARGET, to_version="v9"),
                 "NOT_FOUND"),
            ]:  # fmt: skip
                with pytest.raises(grpc.RpcError) as info:
                    stub.Rollback(request, timeout=10)
                assert info.value.code().name == code, info.value.details()
    finally:
        server.stop(grace_s=0)


# --- applying to a real cluster -----------------------------------------------------------------
def _kubeconfig() -> Path | None:
    path = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
    return path if path.is_file() else None


@pytest.mark.cluster
@pytest.mark.skipif(
    _kubeconfig() is None,
    reason="needs a kubeconfig (KUBECONFIG, ~/.kube/config); with one (kind, k3d, a cluster): "
    ".venv/bin/python -m pytest -q -m cluster tests/services/test_rollout.py",
)
def test_server_side_apply_on_a_real_cluster():
    from kubernetes import client, config

    namespace = "sigdl-edge-test"
    api = client.CoreV1Api(config.new_client_from_config())
    try:
        api.create_namespace({"metadata": {"name": namespace}})
    except client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise
    objects = render_rollout(spec(namespace=namespace, replicas=0))
    applied = apply_rollout(objects)
    assert [o["kind"] for o in applied] == ["ConfigMap", "Service", "Deployment"]
    again = apply_rollout(objects)  # applying is idempotent
    assert again[0]["data"] == objects[0]["data"]
    api.delete_namespace(namespace)


def test_the_spec_follows_current_and_the_edge_settings(seeded_runs, tmp_path, monkeypatch):
    root = tmp_path / "store"
    with pytest.raises(InputError, match="deploy before rolling out"):
        RolloutSpec.from_settings("lab", TARGET, str(root), 2, 0.5)
    result = run_deploy(str(seeded_runs["a"]), TARGET, "lab", store_root=str(root))
    monkeypatch.setenv("SIGDL_EDGE_IMAGE", "registry.edge/sigdl:0.1.0")
    monkeypatch.setenv("SIGDL_EDGE_NAMESPACE", "site-1")
    s = RolloutSpec.from_settings("lab", TARGET, str(root), 2, 0.5)
    assert (s.version, s.manifest_sha256) == ("v1", result["manifest_sha256"])
    assert (s.image, s.namespace, s.memory) == ("registry.edge/sigdl:0.1.0", "site-1", "384Mi")
    assert s.s3_secret is None and s.s3_endpoint is None  # a file:// store
    manifest = {"fleet": "lab", "target": TARGET, "version": "v2", "metrics": {"memory_mb": 100}}
    assert RolloutSpec.for_manifest("s3://b", manifest, SHA, 1, 0).memory == "464Mi"
    validate(render_rollout(s))
