"""The artifact store against a local directory and a real S3 server (SeaweedFS, `s3_server`).

Run: .venv/bin/pytest tests/sigdl/test_store.py
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sigdl.core import store

MiB = 1 << 20


@pytest.fixture
def s3_config(s3_server, monkeypatch: pytest.MonkeyPatch) -> store.S3Config:
    """The test server's identity, both as settings (module-level API) and as an S3Config."""
    monkeypatch.setenv("SIGDL_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("SIGDL_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("SIGDL_S3_SECRET_KEY", s3_server.secret_key)
    monkeypatch.setenv("SIGDL_S3_SECURE", "false")
    return store.S3Config(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)


@pytest.fixture
def bucket(s3_config: store.S3Config) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_config.make_client().make_bucket(name)
    return name


@pytest.fixture(params=["file", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty prefix URI on each backend (the S3 server starts only when needed)."""
    if request.param == "file":
        return store.as_uri(tmp_path / "artifacts")
    return f"s3://{request.getfixturevalue('bucket')}/run-1"


@pytest.fixture
def backend(root: str, request: pytest.FixtureRequest) -> store.ArtifactBackend:
    """The backend for `root`; S3 with the smallest part size, so a few MiB is multipart."""
    if root.startswith("s3://"):
        config = request.getfixturevalue("s3_config")
        return store.S3Backend(config=config, part_size=store.MIN_PART_SIZE)
    return store.FileBackend()


def test_bytes_round_trip(root: str) -> None:
    uri = f"{root}/model.json"
    data = b'{"zoo": "lenet5"}'
    assert store.put_bytes(uri, data) == hashlib.sha256(data).hexdigest()
    assert store.get_bytes(uri) == data
    assert store.sha256(uri) == hashlib.sha256(data).hexdigest()
    assert store.exists(uri)
    with store.open_read(uri) as stream:
        assert stream.read(4) + stream.read() == data


def test_large_file_streams_both_ways(
    root: str, backend: store.ArtifactBackend, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * MiB + 123))  # 3 parts of 5 MiB on S3
    expected = hashlib.sha256(src.read_bytes()).hexdigest()
    uri = f"{root}/weights/big.bin"
    assert backend.put_file(uri, src) == expected
    assert backend.sha256(uri) == expected
    dest = tmp_path / "down" / "big.bin"
    assert backend.get_file(uri, dest) == expected
    assert dest.read_bytes() == src.read_bytes()
    assert os.listdir(dest.parent) == ["big.bin"]  # the temporary download is gone


def test_s3_large_upload_is_multipart(s3_config: store.S3Config, bucket: str) -> None:
    backend = store.S3Backend(config=s3_config, part_size=store.MIN_PART_SIZE)
    chunks = (os.urandom(MiB) for _ in range(11))  # unknown length, streamed from a generator
    digest = backend.put_stream(f"s3://{bucket}/big.bin", chunks)
    etag = s3_config.make_client().stat_object(bucket, "big.bin").etag
    assert etag.endswith("-3"), etag  # S3 marks multipart ETags with the part count
    assert backend.sha256(f"s3://{bucket}/big.bin") == digest


def test_exists_list_delete(root: str) -> None:
    names = ["a/b.txt", "a/c/d.bin", "ab/x", "e.txt"]
    for name in names:
        store.put_bytes(f"{root}/{name}", name.encode())
    assert store.list_uris(root) == sorted(f"{root}/{n}" for n in names)
    # a prefix is a directory: "a" does not match "ab/x"
    assert store.list_uris(f"{root}/a") == [f"{root}/a/b.txt", f"{root}/a/c/d.bin"]
    assert store.list_uris(f"{root}/a/") == store.list_uris(f"{root}/a")
    assert store.list_uris(f"{root}/nothing-here") == []
    store.delete(f"{root}/a/b.txt")
    assert not store.exists(f"{root}/a/b.txt")
    store.delete(f"{root}/a/b.txt")  # deleting twice is fine
    assert store.list_uris(f"{root}/a") == [f"{root}/a/c/d.bin"]


def test_put_dir_get_dir(root: str, tmp_path: Path) -> None:
    src = tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    files = {"model.onnx": b"onnx", "report.json": b"{}", "sub/manifest.json": b"[]"}
    for name, data in files.items():
        (src / name).write_bytes(data)
    digests = store.put_dir(f"{root}/pkg", src)
    assert digests == {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    dest = tmp_path / "back"
    assert store.get_dir(f"{root}/pkg", dest) == digests
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*.*")} == files


def test_missing_artifact(root: str, tmp_path: Path) -> None:
    uri = f"{root}/missing.onnx"
    assert not store.exists(uri)
    for read in (store.get_bytes, store.sha256, lambda u: store.get_file(u, tmp_path / "x")):
        with pytest.raises(store.ArtifactNotFoundError) as info:
            read(uri)
        assert uri in str(info.value)
        assert isinstance(info.value, FileNotFoundError)
    assert not (tmp_path / "x").exists()
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.uri, str(copy)) == (uri, str(info.value))


def _failing_stream(first: bytes) -> Iterator[bytes]:
    yield first
    raise RuntimeError("source broke mid-way")


@pytest.mark.parametrize("size", [1000, 6 * MiB])  # on S3: a single PUT and a multipart upload
def test_failed_write_keeps_the_previous_artifact(
    root: str, backend: store.ArtifactBackend, tmp_path: Path, size: int
) -> None:
    uri = f"{root}/model.sdc"
    backend.put_bytes(uri, b"previous")
    with pytest.raises(RuntimeError, match="mid-way"):
        backend.put_stream(uri, _failing_stream(b"x" * size))
    assert backend.get_bytes(uri) == b"previous"
    assert backend.list_uris(root) == [uri]
    if root.startswith("file:"):
        assert os.listdir(store.FileBackend.path_of(root)) == ["model.sdc"]  # no temporary left


def test_file_writes_keep_the_umask_permissions(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    store.put_bytes(store.as_uri(path), b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_wrong_credentials(s3_server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGDL_S3_SECRET_KEY", "not-the-secret")
    for call in (lambda: store.put_bytes(f"s3://{bucket}/k", b"x"),
                 lambda: store.get_bytes(f"s3://{bucket}/k")):  # fmt: skip
        with pytest.raises(store.StoreAuthError) as info:
            call()
        message = str(info.value)
        assert s3_server.endpoint in message and repr(s3_server.access_key) in message
        assert "not-the-secret" not in message and "\n" not in message


def test_missing_bucket(s3_server, s3_config: store.S3Config) -> None:
    uri = "s3://no-such-bucket-here/model.onnx"
    expected = f"bucket 'no-such-bucket-here' does not exist at {s3_server.endpoint}"
    calls = (store.get_bytes, store.exists, store.list_uris, lambda u: store.put_bytes(u, b"x"))
    for call in calls:
        with pytest.raises(store.BucketNotFoundError, match=expected):
            call(uri)
    # the failed put must not have created the bucket behind our back
    assert not s3_config.make_client().bucket_exists("no-such-bucket-here")


def test_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("SIGDL_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("SIGDL_S3_ACCESS_KEY", "k")
    monkeypatch.setenv("SIGDL_S3_SECRET_KEY", "s")
    with pytest.raises(store.StoreUnreachableError, match=f"cannot reach S3 server at {endpoint}"):
        store.get_bytes("s3://some-bucket/k")


def test_explicit_client_and_aliases(s3_server, bucket: str, monkeypatch) -> None:
    for name in ("SIGDL_S3_ENDPOINT", "SIGDL_S3_ACCESS_KEY", "SIGDL_S3_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("SIGDL_S3_ENDPOINT", f"http://{s3_server.endpoint}")
    config = store.S3Config.from_settings()
    assert (config.endpoint, config.access_key, config.secure) == (
        s3_server.endpoint, s3_server.access_key, False,
    )  # fmt: skip
    assert s3_server.secret_key not in repr(config)
    backend = store.S3Backend(config=config, client=config.make_client())
    backend.put_bytes(f"s3://{bucket}/k", b"v")
    assert store.get_bytes(f"s3://{bucket}/k") == b"v"  # the module-level API, from settings


def test_unknown_scheme() -> None:
    message = "unsupported artifact URI scheme 'gs' in 'gs://x/y'; registered: file, s3"
    with pytest.raises(store.UnsupportedSchemeError, match=message):
        store.get_bytes("gs://x/y")
    with pytest.raises(ValueError, match="registered: file, s3"):
        store.as_uri("gs://x/y")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://", "names no bucket"),
        ("s3:///key", "names no bucket"),
        ("s3://bucket", "names no object"),
        ("s3://bucket/dir/", "names no object"),
        ("s3://Bad_Bucket/k", "invalid bucket name"),
        ("s3://bucket/pkg/../evil", "'.' or '..' segment"),
        ("file:relative/model.onnx", "relative file URI"),
        ("file://relative/model.onnx", "names host 'relative'"),
        ("/abs/model.onnx", "not an artifact URI"),
    ],
)
def test_bad_uris(uri: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected) as info:
        store.get_bytes(uri)
    assert repr(uri) in str(info.value)


def test_as_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert store.as_uri("out/model onnx") == (tmp_path / "out" / "model onnx").as_uri()
    assert store.as_uri(tmp_path) == tmp_path.as_uri()
    assert store.as_uri("s3://bucket/k") == "s3://bucket/k"
    uri = store.as_uri("dir with space/m.bin")
    store.put_bytes(uri, b"m")
    assert (tmp_path / "dir with space" / "m.bin").read_bytes() == b"m"
    assert store.list_uris(store.as_uri("dir with space")) == [uri]
    assert store.local_artifact_root().startswith("file:///")


def test_downloads_refuse_names_that_escape(tmp_path: Path) -> None:
    # minio cannot write such keys, but other S3 tools can: listings are not trusted
    assert store._child_path(tmp_path, "a/b.txt", "s3://b/p") == tmp_path / "a" / "b.txt"
    for name in ("../evil.txt", "a/../../evil.txt", "/etc/passwd", ""):
        with pytest.raises(store.StoreError, match="outside"):
            store._child_path(tmp_path, name, "s3://b/p")


def test_the_edge_sites_bucket_has_its_own_server_and_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGDL_S3_ENDPOINT", "127.0.0.1:9000")
    monkeypatch.setenv("SIGDL_S3_ACCESS_KEY", "cloud-key")
    monkeypatch.setenv("SIGDL_S3_SECRET_KEY", "cloud-secret")
    monkeypatch.setenv("SIGDL_EDGE_STORE", "s3://edge-site/lab")
    # without the edge site's own server, its bucket is reached like any other
    assert store.S3Config.for_uri("s3://edge-site/lab/x").access_key == "cloud-key"
    monkeypatch.setenv("SIGDL_EDGE_SITE_S3_ENDPOINT", "http://10.0.0.5:9000")
    monkeypatch.setenv("SIGDL_EDGE_SITE_S3_ACCESS_KEY", "edge-key")
    monkeypatch.setenv("SIGDL_EDGE_SITE_S3_SECRET_KEY", "edge-secret")
    edge = store.S3Config.for_uri("s3://edge-site/lab/samples/a.npy")
    assert (edge.endpoint, edge.access_key, edge.secret_key) == (
        "10.0.0.5:9000", "edge-key", "edge-secret")  # fmt: skip
    for other in ("s3://sigdl/fleets/lab/current", "s3://edge-site-2/lab/x", None):
        assert store.S3Config.for_uri(other).endpoint == "127.0.0.1:9000"
