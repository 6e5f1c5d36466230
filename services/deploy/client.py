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
