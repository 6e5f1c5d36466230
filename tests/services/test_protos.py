"""The committed gRPC stubs are exactly what `make protos` generates from the .proto files."""

from pathlib import Path

from services.protos import generate


def test_committed_stubs_are_up_to_date(tmp_path: Path):
    fresh = {p.name: p.read_bytes() for p in generate.generate(tmp_path)}
    committed_dir = generate.REPO / generate.PROTO_DIR
    committed = {p.name: p.read_bytes() for p in committed_dir.glob("*_pb2*.py")}
    assert sorted(fresh) == sorted(committed), "run `make protos` and commit the stubs"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert stale == [], f"stale stubs {stale}: run `make protos` and commit them"


def test_every_stage_has_a_job_service():
    from services.protos.sigdl.v1 import (
        compression_pb2,
        deploy_pb2,
        retest_pb2,
        training_pb2,
    )

    for module, name in [(training_pb2, "TrainingService"), (compression_pb2, "CompressionService"),
                         (retest_pb2, "RetestService"), (deploy_pb2, "DeployService")]:  # fmt: skip
        methods = {m.name for m in module.DESCRIPTOR.services_by_name[name].methods}
        extra = {"Rollback"} if name == "DeployService" else set()  # a unary call, no job
        assert methods == {"Submit", "Watch", "Get", "Cancel"} | extra, name
