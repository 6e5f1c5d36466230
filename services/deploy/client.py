"""Client of sigdl.v1.DeployService, and `sigdl deploy --remote ADDRESS`.

result = deploy_remote("127.0.0.1:50054", "runs/lenet5-dc", "jetson-tx2", "lab")
"""

from __future__ import annotations

from pathlib import Path

from services.grpc_common.client import JobClient, input_ref, run_remote
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
