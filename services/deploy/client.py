"""Client of sigdl.v1.DeployService, and `sigdl deploy --remote ADDRESS`.

result = deploy_remote("127.0.0.1:50054", "runs/lenet5-dc", "jetson-tx2", "lab")
"""

from __future__ import annotations

import json
from pathlib import Path

from services.grpc_common.client import JobClient, input_ref, remote_errors, run_remote
from services.protos.sigdl.v1 import common_pb2, deploy_pb2, deploy_pb2_grpc
from sigdl.core import store as artifact_store


class DeployClient(JobClient):
    stub_class = deploy_pb2_grpc.DeployServiceStub


def deploy_remote(
    address: str,
    source: str | Path,
    target: str,
    fleet: str,
    *,
    store_root: str | None = None,
    version: str | None = None,
    retest_report: str | None = None,
    on_event=None,
) -> dict:
    """What `sigdl deploy --remote` does: the same result as in-process `run_deploy`."""
    request = deploy_pb2.DeployRequest(
        source=input_ref(source), target=target, fleet=fleet, version=version or "",
        store_uri=artifact_store.as_uri(store_root) if store_root else "",
        retest_report=input_ref(retest_report) if retest_report else common_pb2.ArtifactRef(),
    )  # fmt: skip
    with DeployClient(address) as client:
        return run_remote(client, request, None, on_event)


def rollback_remote(
    address: str,
    fleet: str,
    target: str,
    *,
    store_root: str | None = None,
    to_version: str | None = None,
) -> dict:
    """What `sigdl fleet rollback --remote` does: the same result as in-process `rollback`."""
    request = deploy_pb2.RollbackRequest(
        fleet=fleet, target=target, to_version=to_version or "",
        store_uri=artifact_store.as_uri(store_root) if store_root else "",
    )  # fmt: skip
    with DeployClient(address) as client, remote_errors(client.address):
        reply = client.stub.Rollback(request, timeout=client.timeout_s, metadata=client.metadata)
    return json.loads(reply.result_json)


def deployed_version(store_root: str | None, fleet: str, target: str,
                     verify_key: Path | None = None) -> dict:  # fmt: skip
    """What a fleet's target serves: {version, manifest, manifest_sha256, served_by}. The version
    most of its agents report serving (each verified it before loading), else, before any
    report, the one `current` names. Its manifest is read back against that digest and, with
    `verify_key`, its signature checked: a version someone made current by hand and the agents
    refused is not taken for the deployed one."""
    from collections import Counter

    from services.deploy.fleet import AGENTS, MANIFEST, SIGNATURE, FleetTarget
    from sigdl.core import signing
    from sigdl.core.errors import InputError

    ft = FleetTarget.at(store_root, fleet, target)
    served: Counter = Counter()
    for uri in artifact_store.list_uris(f"{ft.root}/fleets/{fleet}/{AGENTS}/{target}/"):
        try:
            report = json.loads(artifact_store.get_bytes(uri))
        except (json.JSONDecodeError, UnicodeDecodeError, artifact_store.StoreError):
            continue
        if isinstance(report, dict) and report.get("health") == "SERVING" and report.get("version"):
            served[(report["version"], report.get("manifest_sha256"))] += 1
    if served:
        (version, digest), agents = served.most_common(1)[0]
    else:
        pointer = ft.read_pointer()
        if pointer is None:
            raise InputError(f"fleet {fleet}/{target} has no deployed version in {ft.root}")
        version, digest, agents = pointer["version"], pointer.get("manifest_sha256"), 0
    manifest, got = ft.read_manifest(version)
    if got != digest:
        raise artifact_store.StoreError(
            f"{ft.uri(version, MANIFEST)}: sha256 {got[:16]}..., the fleet records "
            f"{str(digest)[:16]}..."
        )
    if verify_key is not None:
        raw = artifact_store.get_bytes(ft.uri(version, MANIFEST))
        signature = artifact_store.get_bytes(ft.uri(version, SIGNATURE))
        signing.verify(raw, signature, signing.load_public_key(verify_key))
    return {"version": version, "manifest": manifest, "manifest_sha256": got,
            "served_by": agents}  # fmt: skip
