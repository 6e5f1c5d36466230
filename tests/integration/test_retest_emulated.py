"""An x86 target's retest through RetestService: the pinned host measurement runs in the job's
worker process (forked from the server's forkserver), and the report it writes says which
method produced each figure. A real server on loopback, a real model, no timing asserted."""

from __future__ import annotations

import json
import os

import torch

from services.grpc_common.server import ServerConfig, StageServer
from services.protos.sigdl.v1 import common_pb2, retest_pb2
from services.retest.client import RetestClient
from sigdl.core import checkpoint, onnx_io, store
from sigdl.core.checkpoint import ModelMeta

TOKEN = "test-token-emulated"


def test_an_atom_retest_in_the_service_worker_measures_on_pinned_cores(sigdl_env):
    torch.manual_seed(0)
    meta = ModelMeta(model="lenet-5", input_size=28, channels=1, classes=10, mean=[0.13],
                     std=[0.31], dataset="mnist")  # fmt: skip
    model = onnx_io.export_onnx(checkpoint.build(meta), sigdl_env / "models" / "lenet-5.onnx",
                                meta.input_shape, {"sigdl.model_json": meta.to_json()})  # fmt: skip
    before = os.sched_getaffinity(0)
    server = StageServer(["retest"], ServerConfig(port=0, token=TOKEN, grace_s=2.0))
    port = server.start()
    try:
        assert server.wait_ready(30), "the server never became SERVING"
        with RetestClient(f"127.0.0.1:{port}", token=TOKEN) as client:
            request = retest_pb2.RetestRequest(
                model=common_pb2.ArtifactRef(uri=store.as_uri(model)), target="atom-x5-e3940"
            )
            job = client.wait(client.submit(request).id)
        assert job.state == common_pb2.SUCCEEDED, job.error
        report_path = store.FileBackend.path_of(job.out_uri) / "report.json"
        report = json.loads(report_path.read_text())
    finally:
        server.stop(grace_s=0)
    scaled = report["measured_and_scaled"]
    assert report["methods"]["latency_ms"] == "measured-and-scaled"
    assert report["methods"]["power_w"] == "modelled"
    assert scaled["pinned_threads"] == min(4, len(before)) and scaled["target_threads"] == 4
    assert scaled["factor_basis"] == "data-sheet (no published Atom measurements found)"
    assert report["latency_ms"] == scaled["latency_ms"] != report["modelled"]["latency_ms"]
    assert os.sched_getaffinity(0) == before  # the server's own process was never pinned
