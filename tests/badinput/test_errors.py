"""One error type per mistake: the gRPC status a real service answers for each bad request,
what `--remote` commands print for a dead or refusing service, and the readable job record of
a job that failed on a forged input.

The servers are real `StageServer`s on loopback (as in tests/integration/test_services.py);
requests name real files under the test's $SIGDL_HOME, the one artifact root.
"""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest

from services.compression.client import CompressionClient
from services.deploy.client import DeployClient
from services.grpc_common.server import STAGES, ServerConfig, StageServer
from services.protos.sigdl.v1 import (
    common_pb2,
    compression_pb2,
    deploy_pb2,
    retest_pb2,
    training_pb2,
)
from services.retest.client import RetestClient
from services.training.client import TrainingClient
from sigdl.cli import main
from sigdl.core import checkpoint, settings
from tests.badinput.test_yaml import BOMB, LIMIT_CHARS, LINE_CHARS, tree_digest

TOKEN = "badinput-token-7d1"
CODE = grpc.StatusCode


@pytest.fixture(scope="module")
def address(tmp_path_factory) -> str:
    """The four services on one port, token required; jobs read each test's $SIGDL_HOME."""
    home = tmp_path_factory.mktemp("server-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        patch.setenv("SIGDL_OFFLINE", "1")
        config = ServerConfig(port=0, token=TOKEN, grace_s=1.0, roots=[], home=home)
        server = StageServer(list(STAGES), config)
        port = server.start()
        assert server.wait_ready(60), "the server never became SERVING"
        yield f"127.0.0.1:{port}"
        server.stop(grace_s=0)


def _home() -> Path:
    return settings.SIGDL_HOME.get()


def _uri(path: Path) -> str:
    return path.resolve().as_uri()


def _checkpoint() -> str:
    """An untrained LeNet-300-100 checkpoint under the root (nothing of it is run here)."""
    folder = _home() / "artifacts" / "ckpt"
    meta = checkpoint.ModelMeta(model="lenet-300-100", input_size=8, channels=1, classes=10,
                                mean=[0.5], std=[0.5], dataset="digits")  # fmt: skip
    checkpoint.save_checkpoint(checkpoint.build(meta), meta, folder)
    return _uri(folder)


def _model_file() -> str:
    path = _home() / "artifacts" / "m.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not really onnx; Submit only checks that it exists")
    return _uri(path)


def _train(**fields) -> tuple[type, object]:
    base = {"model": "lenet-300-100", "dataset": "digits", "epochs": 1}
    return TrainingClient, training_pb2.TrainRequest(**{**base, **fields})


def _retest(model=None, **fields) -> tuple[type, object]:
    base = {"target": "arm-cortex-a53"}
    ref = common_pb2.ArtifactRef(uri=model() if callable(model) else model or _model_file())
    return RetestClient, retest_pb2.RetestRequest(model=ref, **{**base, **fields})


def _compress(ckpt=None, **fields) -> tuple[type, object]:
    ref = common_pb2.ArtifactRef(uri=ckpt or _checkpoint())
    return CompressionClient, compression_pb2.CompressRequest(
        checkpoint=ref, **{"recipe": "deep-compression", **fields}
    )


# (id, request builder, status, text the details must hold)
CASES = [
    ("train-unknown-dataset", lambda: _train(dataset="no-such-set"), CODE.INVALID_ARGUMENT,
     "dataset: unknown data set 'no-such-set'"),
    ("train-huge-dataset-name", lambda: _train(dataset="x" * 100_000), CODE.INVALID_ARGUMENT,
     "dataset: unknown data set 'xxx"),
    ("train-no-dataset", lambda: _train(dataset=""), CODE.INVALID_ARGUMENT, "dataset: required"),
    ("train-imagefolder-outside-roots", lambda: _train(dataset="imagefolder:/etc"),
     CODE.PERMISSION_DENIED, "outside the artifact roots"),
    ("train-imagefolder-climbs", lambda: _train(dataset=f"imagefolder:{_home()}/../.."),
     CODE.PERMISSION_DENIED, "outside the artifact roots"),
    ("train-unknown-model", lambda: _train(model="resnet-9000"), CODE.INVALID_ARGUMENT, "model:"),
    ("train-huge-model-name", lambda: _train(model="m" * 100_000), CODE.INVALID_ARGUMENT,
     "unknown model 'mmm"),
    ("retest-huge-target-name", lambda: _retest(target="t" * 100_000), CODE.INVALID_ARGUMENT,
     "unknown target 'ttt"),
    ("deploy-huge-fleet-name", lambda: (DeployClient, deploy_pb2.DeployRequest(
        source=common_pb2.ArtifactRef(uri=_model_file()), target="arm-cortex-a53",
        fleet="f" * 100_000)), CODE.INVALID_ARGUMENT, "fleet: fleet 'fff"),
    ("train-config-not-json", lambda: _train(config_json="{lr: 1"), CODE.INVALID_ARGUMENT,
     "config_json: not valid JSON"),
    ("train-out-outside-roots", lambda: _train(out_uri="file:///tmp/elsewhere"),
     CODE.PERMISSION_DENIED, "out_uri"),
    ("retest-unknown-target", lambda: _retest(target="no-such-board"), CODE.INVALID_ARGUMENT,
     "target: unknown target 'no-such-board'"),
    ("retest-target-is-a-path", lambda: _retest(target="../../etc/passwd"),
     CODE.INVALID_ARGUMENT, "target: unknown target"),
    ("retest-unknown-power-mode", lambda: _retest(target="arm-cortex-a53:turbo"),
     CODE.INVALID_ARGUMENT, "power mode"),
    ("retest-malformed-require", lambda: _retest(requirements=["fps>>30"]),
     CODE.INVALID_ARGUMENT, "requirements[0]: requirement 'fps>>30'"),
    ("retest-unknown-metric", lambda: _retest(requirements=["fps>=30", "speed>=3"]),
     CODE.INVALID_ARGUMENT, "requirements[1]"),
    ("retest-unknown-dataset", lambda: _retest(dataset="cifar-1000"), CODE.INVALID_ARGUMENT,
     "dataset: unknown data set"),
    ("retest-model-outside-roots", lambda: _retest(model="file:///etc/hosts"),
     CODE.PERMISSION_DENIED, "model.uri"),
    ("retest-model-climbs", lambda: _retest(model=lambda: f"{_uri(_home())}/../x.onnx"),
     CODE.PERMISSION_DENIED, "climbs"),
    ("retest-model-missing", lambda: _retest(model=lambda: f"{_uri(_home())}/none.onnx"),
     CODE.NOT_FOUND, "none.onnx"),
    ("retest-model-not-a-uri", lambda: _retest(model="model.onnx"), CODE.INVALID_ARGUMENT,
     "model.uri"),
    ("retest-bad-precision", lambda: _retest(precision="fp7"), CODE.INVALID_ARGUMENT,
     "precision"),
    ("compress-unknown-recipe", lambda: _compress(recipe="r" * 5_000), CODE.INVALID_ARGUMENT,
     "recipe: unknown recipe 'rrr"),
    ("compress-checkpoint-missing", lambda: _compress(ckpt=f"{_uri(_home())}/nothing"),
     CODE.NOT_FOUND, "model.json"),
    ("compress-checkpoint-outside-roots", lambda: _compress(ckpt="file:///usr"),
     CODE.PERMISSION_DENIED, "checkpoint.uri"),
    ("compress-recipe-outside-roots", lambda: _compress(recipe="file:///etc/passwd"),
     CODE.PERMISSION_DENIED, "recipe.uri"),
    ("compress-unknown-dataset", lambda: _compress(dataset="imagenet-22k"),
     CODE.INVALID_ARGUMENT, "dataset: unknown data set"),
    ("deploy-unknown-target", lambda: (DeployClient, deploy_pb2.DeployRequest(
        source=common_pb2.ArtifactRef(uri=_model_file()), target="toaster", fleet="f")),
     CODE.INVALID_ARGUMENT, "target"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "code", "text"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_bad_request_gets_its_status_at_submit(address, build, code, text):
    client_class, request = build()
    jobs_before = tree_digest(_home() / "jobs") if (_home() / "jobs").exists() else {}
    with client_class(address, token=TOKEN) as client, pytest.raises(grpc.RpcError) as caught:
        client.submit(request)
    details = caught.value.details()
    assert caught.value.code() == code, details
    assert text in details, details
    assert "\n" not in details and len(details) < LINE_CHARS, details
    assert not (_home() / "jobs").exists() or tree_digest(_home() / "jobs") == jobs_before


def test_unknown_job_is_not_found(address):
    with TrainingClient(address, token=TOKEN) as client, pytest.raises(grpc.RpcError) as caught:
        client.get("no-such-job")
    assert caught.value.code() == CODE.NOT_FOUND


def test_alias_bomb_recipe_is_refused_at_submit_and_the_service_stays_readable(address):
    """Through the service: Submit reads the recipe artifact with the bounded loader and answers
    INVALID_ARGUMENT with one short line; no job is made, earlier outputs are untouched, and the
    service keeps answering (a 351 MB error once made the job unreadable)."""
    recipe = _home() / "artifacts" / "bomb.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(BOMB)
    out = _home() / "artifacts" / "out"
    out.mkdir()
    (out / "report.json").write_text('{"previous": true}')
    before = tree_digest(out)
    _, request = _compress(recipe=_uri(recipe), out_uri=_uri(out))
    with CompressionClient(address, token=TOKEN) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.submit(request)
        with pytest.raises(grpc.RpcError) as unknown:  # the service still answers
            client.get("no-such-job")
    assert refused.value.code() == CODE.INVALID_ARGUMENT
    details = refused.value.details()
    assert details.startswith("recipe: bomb.yaml: anchors and aliases are not accepted"), details
    assert "\n" not in details and len(details) < LIMIT_CHARS, details
    assert unknown.value.code() == CODE.NOT_FOUND
    assert tree_digest(out) == before


# --- `--remote`: a dead port, a wrong or missing token -----------------------------------------
def _dead_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"  # closed again: nothing listens there


def _train_args(remote: str, out: Path) -> list[str]:
    return ["train", "--model", "lenet-300-100", "--dataset", "digits", "--epochs", "1",
            "--out", str(out), "--remote", remote]  # fmt: skip


def _retest_args(remote: str, out: Path) -> list[str]:
    model = out.parent / "m.onnx"
    model.write_bytes(b"x")
    return ["retest", str(model), "--target", "arm-cortex-a53", "--out", str(out),
            "--remote", remote]  # fmt: skip


@pytest.mark.parametrize("args", [_train_args, _retest_args], ids=["train", "retest"])
@pytest.mark.parametrize(
    ("token", "status", "advice"),
    [
        (None, "UNAVAILABLE", "is `sigdl serve` running there?"),  # no server at all
        ("wrong-token", "UNAUTHENTICATED", "check SIGDL_TOKEN"),
        ("", "UNAUTHENTICATED", "missing bearer token"),
    ],
    ids=["dead-port", "wrong-token", "no-token"],
)
def test_remote_failure_is_one_line_and_exit_2(
    address, tmp_path, monkeypatch, capsys, args, token, status, advice
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"previous": true}')
    before = tree_digest(out)
    target = _dead_port() if token is None else address
    if token:
        monkeypatch.setenv("SIGDL_TOKEN", token)
    else:
        monkeypatch.delenv("SIGDL_TOKEN", raising=False)
    code = main(args(target, out))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and len(err[0]) < LIMIT_CHARS, err
    assert target in err[0] and status in err[0] and advice in err[0], err
    assert tree_digest(out) == before


def test_remote_errors_keep_the_status_name(address):
    from services.grpc_common.client import RemoteCallError, remote_errors

    client = TrainingClient(address, token="nope")
    with pytest.raises(RemoteCallError) as caught, remote_errors(address), client:
        client.get("x")
    assert caught.value.code == "UNAUTHENTICATED"
    assert "\n" not in str(caught.value)


def test_remote_outputs_replace_a_used_out_in_whole(address, tmp_path, monkeypatch):
    """`--remote` fetches the job's outputs into a staging folder and swaps it in whole, as a
    local run does: a stale file of an earlier run does not survive in --out."""
    monkeypatch.setenv("SIGDL_TOKEN", TOKEN)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.int8.onnx").write_bytes(b"an earlier run's int8 model")
    assert main(_train_args(address, out)) == 0
    assert not (out / "model.int8.onnx").exists()
    assert {"model.safetensors", "model.json", "model.onnx", "report.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left
