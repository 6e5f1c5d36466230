"""Client of sigdl.v1.RetestService, and `sigdl retest --remote ADDRESS`.

report = retest_remote("127.0.0.1:50053", "runs/lenet5/model.onnx", "jetson-tx2", "out")
"""

from __future__ import annotations

from pathlib import Path

from services.grpc_common.client import JobClient, input_ref, lineage_message, run_remote
from services.protos.sigdl.v1 import retest_pb2, retest_pb2_grpc


class RetestClient(JobClient):
    stub_class = retest_pb2_grpc.RetestServiceStub


def retest_request(model: str | Path, target: str, **options) -> retest_pb2.RetestRequest:
    """A RetestRequest; `options` are run_retest's keywords (dataset, precision, threads,
    requirements, workers, baseline_accuracy, lineage as a RunContext or its JSON dict), None
    meaning the stage's default."""
    given = {k: v for k, v in options.items() if v is not None}
    given["requirements"] = list(given.get("requirements", ()))
    if "lineage" in given:
        given["lineage"] = lineage_message(given["lineage"])
    return retest_pb2.RetestRequest(model=input_ref(model), target=target, **given)


def retest_remote(
    address: str, model: str | Path, target: str, out: str | Path, on_event=None, **options
) -> dict:
    """What `sigdl retest --remote` does: the same report as in-process, written to `out`."""
    with RetestClient(address) as client:
        return run_remote(client, retest_request(model, target, **options), out, on_event)
