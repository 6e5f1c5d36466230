"""Data the edge agent acquires (services/edge/samples.py), on real files: samples kept in a
local folder, uploaded to an edge-site store and a cloud store that are `file://` folders,
a failing destination made with a file where its folder should be. The Label RPC runs against a
real agent serving a real trained model (LeNet-300-100, 1 epoch on digits: seconds)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.deploy.stage import run_deploy, status_summary
from services.edge.agent import AgentConfig, EdgeAgent
from services.edge.samples import (
    EDGE,
    RETRY_MAX_S,
    DataConfig,
    HardExampleRule,
    SampleStore,
    StorageFullError,
    TokenBucket,
    Uploader,
    check_sample,
    encode,
)
from services.edge.server import EdgeServer, to_tensor
from services.protos.sigdl.v1 import edge_pb2, edge_pb2_grpc
from services.training.stage import run_training
from sigdl.core import signing, store
from sigdl.core.errors import InputError
from sigdl.core.training import TrainConfig

SHAPE = (1, 28, 28)
TARGET = "arm-cortex-a53"


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((1, *SHAPE), dtype=np.float32)


def unsure(n: int) -> np.ndarray:
    return np.full((n, 10), 0.1, np.float32)  # a uniform guess: hard by both rules


def make_store(tmp_path: Path, edge: bool = True, cloud: bool = True, **kw) -> SampleStore:
    config = DataConfig(
        folder=tmp_path / "device", fleet="lab", target=TARGET, agent_id="edge-1",
        rule=HardExampleRule(0.5, 0.1),
        edge_uri=(tmp_path / "edge-site").as_uri() if edge else None,
        cloud_uri=(tmp_path / "cloud").as_uri() if cloud else None, bytes_per_s=0, **kw,
    )  # fmt: skip
    return SampleStore(config)


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def label(samples: SampleStore, pixels: np.ndarray, cls: int, private: bool | None):
    return samples.label(pixels, cls, private, "v1", "0" * 64, SHAPE, 10)


def test_hard_example_rule_takes_low_top1_or_low_margin():
    rule = HardExampleRule(top1=0.5, margin=0.1)
    probabilities = np.array([[0.9, 0.05, 0.05],  # sure
                              [0.4, 0.3, 0.3],  # low top-1
                              [0.52, 0.46, 0.02]])  # fmt: skip  # top-1 fine, margin 0.06
    hard, top1, margin = rule.judge(probabilities)
    assert hard.tolist() == [False, True, True]
    np.testing.assert_allclose(margin, [0.85, 0.1, 0.06], atol=1e-6)
    np.testing.assert_allclose(top1, [0.9, 0.4, 0.52])
    with pytest.raises(InputError, match="expected a number in"):
        HardExampleRule(1.5, 0.1)


@pytest.mark.parametrize(
    ("pixels", "reason"),
    [
        (np.full((1, *SHAPE), np.nan, np.float32), "NaN or infinite"),
        (np.zeros((1, 2, 28, 28), np.float32), "expected one image"),
        (np.zeros((2, *SHAPE), np.float32), "expected one image"),
        (np.full((1, *SHAPE), 2.0, np.float32), "expected \\[0, 1\\]"),
        (np.zeros((1, 3, 28, 28), np.float32), "over the 7000-byte limit"),
        (np.zeros((1, *SHAPE), np.float64), "expected float32"),
    ],
)
def test_a_corrupt_or_oversized_sample_is_rejected_with_a_reason(tmp_path, pixels, reason):
    assert check_sample(image(0), SHAPE, 7000).shape == (1, *SHAPE)
    samples = make_store(tmp_path, sample_max_bytes=7000)
    with pytest.raises(InputError, match=reason) as err:
        label(samples, pixels, 3, False)
    assert "\n" not in str(err.value)
    status = samples.status()
    assert (status["rejected"], status["kept"], status["pending"]) == (1, 0, 0)
    assert reason.replace("\\", "")[:8] in status["last_rejection"]["reason"]
    with pytest.raises(InputError, match="0 <= label < 10"):
        label(samples, image(0), 10, False)


def test_private_samples_reach_the_edge_site_only_under_content_keys(tmp_path):
    samples = make_store(tmp_path)
    pixels = np.concatenate([image(1), image(2)])
    assert samples.keep_hard(pixels, unsure(2), "v1", "0" * 64, private=None) == 2  # default
    assert samples.keep_hard(pixels[:1], np.eye(10)[:1], "v1", "0" * 64, private=False) == 0
    public = label(samples, image(3), 4, private=False)
    secret = label(samples, image(4), 5, private=True)
    assert samples.status()["pending"] == 4

    uploader = Uploader(samples)
    assert uploader.run_once()
    edge, cloud = listing(tmp_path / "edge-site"), listing(tmp_path / "cloud")
    prefix = f"samples/lab/{TARGET}"
    assert f"{prefix}/{secret.sha256}.npy" in edge and f"{prefix}/{secret.sha256}.json" in edge
    assert cloud == [f"{prefix}/{public.sha256}.json", f"{prefix}/{public.sha256}.npy"]
    assert len(edge) == 8  # two hard examples (private by default) and two labelled samples
    assert public.key == f"{prefix}/{public.sha256}.npy"
    stored = tmp_path / "edge-site" / public.key
    assert stored.read_bytes() == encode(image(3))
    np.testing.assert_array_equal(np.load(stored, allow_pickle=False), image(3))
    record = json.loads((tmp_path / "cloud" / public.key).with_suffix(".json").read_text())
    assert (record["label"], record["private"], record["sha256"]) == (4, False, public.sha256)
    records = [json.loads((tmp_path / "edge-site" / k).read_text()) for k in edge if ".json" in k]
    assert sorted(r["source"] for r in records) == ["hard", "hard", "label", "label"]
    assert all(r["top1_probability"] == pytest.approx(0.1) for r in records if r["label"] is None)

    status = samples.status()
    assert (status["kept"], status["hard"], status["labelled"]) == (4, 2, 2)
    assert (status["uploaded_edge"], status["synced_cloud"], status["pending"]) == (4, 1, 0)
    assert listing(tmp_path / "device") == ["counters.json"]  # uploaded: the device is freed

    # the same sample again, and the uploader run again: the same keys, nothing new
    assert label(samples, image(3), 4, private=False).key == public.key
    assert uploader.run_once() and uploader.run_once()
    assert listing(tmp_path / "edge-site") == edge and listing(tmp_path / "cloud") == cloud


def test_a_failing_destination_is_retried_with_backoff_while_the_other_carries_on(tmp_path):
    samples = make_store(tmp_path)
    (tmp_path / "edge-site").write_text("not a folder")  # the edge site's store is broken
    public = label(samples, image(1), 1, private=False)
    secret = label(samples, image(2), 2, private=True)
    uploader = Uploader(samples)
    assert not uploader.run_once() and not uploader.run_once()
    assert [uploader.failures, uploader.backoff_s()] == [2, 1.0]
    uploader.failures = 50
    assert uploader.backoff_s() == RETRY_MAX_S
    status = samples.status()
    assert status["last_upload_error"]["destination"] == EDGE
    assert (status["uploaded_edge"], status["synced_cloud"], status["pending"]) == (0, 1, 2)
    assert listing(tmp_path / "cloud") == [
        f"samples/lab/{TARGET}/{public.sha256}.{ext}" for ext in ("json", "npy")
    ]

    # the public sample now turns private before the edge site is back: the cloud gives it up
    assert label(samples, image(1), 1, private=True).duplicate
    (tmp_path / "edge-site").unlink()
    assert uploader.run_once() and uploader.failures == 0
    assert listing(tmp_path / "cloud") == []
    keys = {f"samples/lab/{TARGET}/{s.sha256}.npy" for s in (public, secret)}
    assert keys <= set(listing(tmp_path / "edge-site"))
    status = samples.status()
    assert (status["uploaded_edge"], status["synced_cloud"], status["retracted_cloud"]) == (2, 0, 1)
    assert (status["pending"], status["last_upload_error"]) == (0, None)


def test_storage_cap_drops_hard_examples_and_makes_room_for_labels(tmp_path):
    size = len(encode(image(0))) + 700  # one sample and its record, about
    samples = make_store(tmp_path, edge=False, cloud=False, max_bytes=2 * size)
    assert samples.keep_hard(np.concatenate([image(i) for i in range(3)]), unsure(3), "v1",
                             "0" * 64, None) == 2  # fmt: skip
    assert samples.status()["dropped"] == 1
    first = label(samples, image(10), 1, True)  # evicts the oldest hard example
    second = label(samples, image(11), 2, True)
    status = samples.status()
    assert (status["pending"], status["dropped"], status["labelled"]) == (2, 3, 2)
    with pytest.raises(StorageFullError, match="SIGDL_EDGE_SAMPLES_MAX_BYTES"):
        label(samples, image(12), 3, True)  # labels are never evicted
    # with no store set, nothing is uploaded and nothing is deleted: the device is their home
    assert Uploader(samples).run_once()
    assert {p.stem for p in (tmp_path / "device").glob("*.npy")} == {first.sha256, second.sha256}


def test_pending_samples_and_counts_survive_a_restart_and_corruption_is_caught(tmp_path):
    samples = make_store(tmp_path, cloud=False)
    kept = [label(samples, image(i), i, False) for i in range(2)]
    (tmp_path / "edge-site").write_text("down")
    assert not Uploader(samples).run_once()
    (tmp_path / "device" / f"{kept[0].sha256}.npy").write_bytes(encode(image(99)))  # bit rot
    (tmp_path / "edge-site").unlink()

    again = make_store(tmp_path, cloud=False)  # the agent restarted
    assert (again.status()["pending"], again.status()["kept"]) == (2, 2)
    assert Uploader(again).run_once()
    assert listing(tmp_path / "edge-site") == [
        f"samples/lab/{TARGET}/{kept[1].sha256}.{ext}" for ext in ("json", "npy")
    ]
    status = again.status()
    assert (status["rejected"], status["uploaded_edge"], status["pending"]) == (1, 1, 0)
    assert "corrupt on disk" in status["last_rejection"]["reason"]


def test_token_bucket_holds_the_rate():
    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s

    bucket = TokenBucket(rate=1000, burst=100, clock=lambda: clock[0], sleep=sleep)
    for _ in range(50):
        bucket.take(100)  # 5000 bytes: 100 go in the first burst, the rest at 1000 B/s
    assert clock[0] == pytest.approx(4.9)
    unlimited = TokenBucket(rate=0, clock=lambda: 0.0, sleep=lambda s: pytest.fail("slept"))
    unlimited.take(10**9)


def test_uploads_go_through_the_bandwidth_limit(tmp_path):
    samples = make_store(tmp_path)
    for i in range(3):
        label(samples, image(i), i, False)
    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s

    bucket = TokenBucket(rate=10_000, burst=1000, clock=lambda: clock[0], sleep=sleep)
    assert Uploader(samples, bucket).run_once()
    sent = sum(p.stat().st_size for r in ("edge-site", "cloud") for p in (tmp_path / r).rglob("*")
               if p.is_file())  # fmt: skip
    assert clock[0] == pytest.approx((sent - 1000) / 10_000)  # all but the first burst waited


def test_fleet_status_shows_pending_data_per_agent():
    status = {"fleet": "lab", "store_root": "s3://b", "targets": [{
        "target": TARGET, "current": "v1", "versions": [], "agents": [{
            "agent_id": "edge-1", "health": "SERVING", "version": "v1", "latency_ms": {},
            "data": {"kept": 5, "hard": 3, "labelled": 2, "uploaded_edge": 4, "synced_cloud": 1,
                     "pending": 1, "pending_bytes": 3000, "rejected": 2, "dropped": 0,
                     "last_upload_error": None}}]}]}  # fmt: skip
    text = status_summary(status)
    assert "kept 5 (3 hard, 2 labelled), uploaded to edge 4, synced to cloud 1, pending 1" in text
    assert "rejected 2" in text


# --- the Label RPC on a real agent -----------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        mp.setenv("SIGDL_PROGRESS", "0")
        run_training(TrainConfig(model="lenet-300-100", dataset="digits", epochs=1), root)
    return root


def test_label_rpc_keeps_samples_and_rejects_bad_ones_with_a_reason(run_dir, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    private, public = signing.generate_keys(tmp_path / "keys")
    monkeypatch.setenv("SIGDL_SIGNING_KEY", str(private))
    monkeypatch.setenv("SIGDL_VERIFY_KEY", str(public))
    monkeypatch.setenv("SIGDL_EDGE_STORE", (tmp_path / "edge-site").as_uri())
    monkeypatch.setenv("SIGDL_EDGE_SAMPLE_MAX_BYTES", "5000")
    root = tmp_path / "store"
    config = AgentConfig.from_settings("lab", TARGET, str(root), 0)
    agent = EdgeAgent(AgentConfig(**{**config.__dict__, "agent_id": "edge-1"}))
    server = EdgeServer(agent, port=0)
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = edge_pb2_grpc.EdgeInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:  # before a model: nothing to check against
                stub.Label(edge_pb2.LabelRequest(pixels=to_tensor(image(0)), label=1), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            run_deploy(str(run_dir), TARGET, "lab", store_root=str(root))
            agent.poll_once()
            reply = stub.Label(edge_pb2.LabelRequest(pixels=to_tensor(image(0)), label=1,
                                                     private=False), timeout=10)  # fmt: skip
            assert (reply.private, reply.duplicate) == (False, False)
            assert reply.key == f"samples/lab/{TARGET}/{reply.sha256}.npy"
            default = stub.Label(edge_pb2.LabelRequest(pixels=to_tensor(image(1)), label=2))
            assert default.private  # SIGDL_EDGE_PRIVATE_DEFAULT
            corrupt = edge_pb2.LabelRequest(pixels=edge_pb2.Tensor(shape=[1, 28, 28],
                                                                   data=b"\x00" * 5))  # fmt: skip
            for request, reason in [
                (corrupt, "5 bytes of data, expected 3136"),
                (edge_pb2.LabelRequest(pixels=to_tensor(np.full((1, *SHAPE), np.nan))), "NaN"),
                (edge_pb2.LabelRequest(pixels=to_tensor(np.zeros((1, 3, 28, 28)))), "5000-byte"),
                (edge_pb2.LabelRequest(pixels=to_tensor(image(2)), label=10), "label < 10"),
            ]:
                with pytest.raises(grpc.RpcError) as err:
                    stub.Label(request, timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert reason in err.value.details() and "\n" not in err.value.details()
            noise = np.random.default_rng(5).random((4, *SHAPE), dtype=np.float32)
            stub.Predict(edge_pb2.PredictRequest(pixels=to_tensor(noise)), timeout=10)
        status = agent.status().data
        assert (status["labelled"], status["rejected"]) == (2, 4)
        assert status["kept"] == 2 + status["hard"]
        deadline = time.monotonic() + 20
        while agent.status().data["pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert agent.status().data["uploaded_edge"] == status["kept"]
        assert len(store.list_uris((tmp_path / "edge-site").as_uri())) == 2 * status["kept"]
    finally:
        server.stop()
