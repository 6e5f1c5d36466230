"""Client of sigdl.v1.TrainingService, and `sigdl train --remote ADDRESS`.

report = train_remote("127.0.0.1:50051", TrainConfig("lenet-5", "digits", epochs=1), "out")
"""

from __future__ import annotations

import json
from pathlib import Path

from services.grpc_common.client import JobClient, run_remote
from services.protos.sigdl.v1 import training_pb2, training_pb2_grpc
from sigdl.core.training import TrainConfig

FIELDS = ("model", "dataset", "epochs")  # TrainRequest fields; the rest goes in config_json


class TrainingClient(JobClient):
    stub_class = training_pb2_grpc.TrainingServiceStub


def train_request(cfg: TrainConfig, nproc: int = 1, out_uri: str = "") -> training_pb2.TrainRequest:
    options = {k: v for k, v in cfg.to_dict().items() if k not in FIELDS}
    return training_pb2.TrainRequest(
        model=cfg.model, dataset=cfg.dataset, epochs=cfg.epochs, nproc=nproc,
        config_json=json.dumps(options), out_uri=out_uri,
    )  # fmt: skip


def train_remote(
    address: str, cfg: TrainConfig, out: str | Path, nproc: int = 1, on_event=None
) -> dict:
    """What `sigdl train --remote` does: the same report as in-process, outputs in `out`."""
    with TrainingClient(address) as client:
        return run_remote(client, train_request(cfg, nproc), out, on_event)
