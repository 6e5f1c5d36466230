"""Client of sigdl.v1.CompressionService, and `sigdl compress --remote ADDRESS`.

report = compress_remote("127.0.0.1:50052", "runs/lenet5", "deep-compression", None, "out")
"""

from __future__ import annotations

from pathlib import Path

from services.grpc_common.client import JobClient, input_ref, run_remote
from services.protos.sigdl.v1 import compression_pb2, compression_pb2_grpc


class CompressionClient(JobClient):
    stub_class = compression_pb2_grpc.CompressionServiceStub


def compress_remote(
    address: str,
    checkpoint: str | Path,
    recipe: str,
    dataset: str | None,
    out: str | Path,
    on_event=None,
) -> dict:
    """What `sigdl compress --remote` does: local inputs are uploaded to the artifact store
    (a recipe file too), the outputs fetched into `out`; the report is the in-process one."""
    if Path(recipe).is_file():
        recipe = input_ref(recipe).uri
    request = compression_pb2.CompressRequest(
        checkpoint=input_ref(checkpoint), recipe=recipe, dataset=dataset or ""
    )
    with CompressionClient(address) as client:
        return run_remote(client, request, out, on_event)
