"""Build and run a gRPC server for one or more stage services, and `sigdl serve`.

    sigdl serve training --port 50051       # one service
    sigdl serve all --port 50050            # the four services on one port, one grpc.Server

Every server serves `grpc.health.v1` (NOT_SERVING until its job pools run and every artifact
root answers; NOT_SERVING again while it shuts down) and server reflection. Each service has
its own job store (`$SIGDL_HOME/jobs/<service>.db`) and worker pool. SIGTERM stops taking jobs,
lets running ones finish for SIGDL_SHUTDOWN_GRACE_S, fails the rest as retryable, and exits.
In tests:

    server = StageServer(["training"], ServerConfig(port=0)); port = server.start()
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.grpc_common.jobservice import JobServicer
from services.grpc_common.security import TlsFiles, TokenInterceptor
from sigdl.core import jobs, settings, store
from sigdl.core.errors import InputError
from sigdl.core.roots import allowed_roots

STAGES = ("training", "compression", "retest", "deploy")
DEFAULT_ADDRESS = {
    "training": settings.SIGDL_TRAINING_ADDR,
    "compression": settings.SIGDL_COMPRESSION_ADDR,
    "retest": settings.SIGDL_RETEST_ADDR,
    "deploy": settings.SIGDL_DEPLOY_ADDR,
}
RPC_THREADS = 64  # each Watch holds a thread while it streams; 8 clients x 4 services fit
READY_RETRY_S = 2.0  # how often an unreachable artifact root is tried again


def servicer_class(stage: str) -> type[JobServicer]:
    if stage not in STAGES:
        raise InputError(f"unknown service {stage!r}: expected one of {', '.join(STAGES)}, all")
    return importlib.import_module(f"services.{stage}.server").SERVICER


def worker_preload() -> tuple[str, ...]:
    """Modules every job worker needs, imported once by the forkserver all workers fork from
    (one per server process, so the union over every stage whose server module loads)."""
    names: set[str] = set()
    for stage in STAGES:
        try:
            cls = servicer_class(stage)
        except ImportError:  # a stage not written yet
            continue
        # the job function is sent by reference: its module (grpc and all) is imported too
        names.update([cls.__module__, *cls.preload])
    if settings.mlflow_tracking_uri() is None:
        names.discard("mlflow")  # seconds of imports that no job would use
    return tuple(sorted(n for n in names if importlib.util.find_spec(n.split(".")[0])))


@dataclass
class ServerConfig:
    """How a server listens and who it lets in; `from_settings` reads SIGDL_*."""

    host: str = "127.0.0.1"  # 0.0.0.0 in a container
    port: int = 0  # 0: a free port, returned by start()
    workers: int = 2  # jobs run at once, per service
    queue_size: int = 16  # jobs waiting beyond them, per service
    token: str | None = None  # bearer token required on every call but health checks
    tls: TlsFiles = field(default_factory=TlsFiles)  # cert+key: TLS; +ca: mutual TLS
    max_message_bytes: int = 4 << 20  # requests and replies carry URIs, never models
    roots: list[str] | None = None  # artifact roots; None: allowed_roots()
    home: Path | None = None  # job stores under home/jobs; None: SIGDL_HOME
    grace_s: float = 30.0  # running jobs may finish this long on shutdown

    @classmethod
    def from_settings(cls, host: str | None = None, port: int | None = None) -> ServerConfig:
        return cls(
            host=host or "127.0.0.1", port=0 if port is None else port,
            workers=settings.SIGDL_WORKERS.get(), queue_size=settings.SIGDL_QUEUE_SIZE.get(),
            token=settings.SIGDL_TOKEN.get(), tls=TlsFiles.from_settings(),
            max_message_bytes=settings.SIGDL_MAX_MESSAGE_BYTES.get(),
            grace_s=settings.SIGDL_SHUTDOWN_GRACE_S.get(),
        )  # fmt: skip


class StageServer:
    """One grpc.Server carrying the job services of `stages`, health and reflection."""

    def __init__(self, stages: list[str], config: ServerConfig) -> None:
        self.config = config
        home = config.home or settings.SIGDL_HOME.get()
        # a token that is set must be one: '' refuses to start instead of turning auth off
        interceptors = [TokenInterceptor(config.token)] if config.token is not None else []
        limit = config.max_message_bytes
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=RPC_THREADS, thread_name_prefix="sigdl-rpc"),
            interceptors=interceptors,
            options=[("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", limit)],
        )  # fmt: skip
        self.servicers: list[JobServicer] = []
        for stage in stages:
            cls = servicer_class(stage)
            pool = jobs.WorkerPool(
                jobs.open_store(cls.service, home), cls.service, cls.job_fn,
                workers=config.workers, queue_size=config.queue_size,
                preload=worker_preload(),
            )  # fmt: skip
            servicer = cls(pool)
            cls.add_to_server(servicer, self.grpc_server)
            self.servicers.append(servicer)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        self.names = [s.full_name for s in self.servicers]
        for name in ["", *self.names]:
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            [*self.names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc_server
        )
        self._ready = threading.Event()
        self._stopping = threading.Event()

    def start(self) -> int:
        """Listen, recover interrupted jobs and start the pools, then serve; return the port.
        Health turns SERVING once every artifact root answers (in the background)."""
        address = f"{self.config.host}:{self.config.port}"
        try:  # bind first: a server that cannot listen must not touch the job stores
            if self.config.tls.server_enabled:
                credentials = self.config.tls.server_credentials()
                port = self.grpc_server.add_secure_port(address, credentials)
            else:
                port = self.grpc_server.add_insecure_port(address)
        except RuntimeError:  # grpc says only "Failed to bind"
            raise InputError(f"cannot listen on {address}: in use or not permitted") from None
        for servicer in self.servicers:
            servicer.pool.start()
        threading.Thread(target=jobs.WorkerPool.warm, name="sigdl-warm", daemon=True).start()
        self.grpc_server.start()
        threading.Thread(target=self._become_ready, name="sigdl-ready", daemon=True).start()
        return port

    def _become_ready(self) -> None:
        roots = self.config.roots if self.config.roots is not None else allowed_roots()
        while not self._stopping.is_set():
            if all(s.pool.ready for s in self.servicers) and _roots_answer(roots):
                break
            self._stopping.wait(READY_RETRY_S)
        if self._stopping.is_set():
            return
        for name in ["", *self.names]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._ready.set()

    def wait_ready(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, no new jobs, running ones get `grace_s` to finish, then stop."""
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        grace = self.config.grace_s if grace_s is None else grace_s
        threads = [threading.Thread(target=s.pool.shutdown, args=(grace,)) for s in self.servicers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.grpc_server.stop(grace=2).wait()
        for servicer in self.servicers:
            servicer.pool.store.close()


def _roots_answer(roots: list[str]) -> bool:
    """Whether every artifact root can be used: a local one exists (made if need be), an S3
    bucket answers."""
    try:
        for root in roots:
            if root.startswith("file:"):
                store.FileBackend.path_of(root).mkdir(parents=True, exist_ok=True)
            else:
                store.exists(root.rstrip("/") + "/.sigdl-ready")
    except (store.StoreError, OSError):
        return False
    return True


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM (the kubelet) or Ctrl-C sets: a server's `serve` waits on it."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def serve(stage: str, host: str | None = None, port: int | None = None) -> int:
    """`sigdl serve STAGE|all`: run until SIGTERM or Ctrl-C, then shut down gracefully."""
    stages = list(STAGES) if stage == "all" else [stage]
    for name in stages:
        servicer_class(name)  # an unknown name fails before anything starts
    if port is None:
        port = int(DEFAULT_ADDRESS[stages[0]].get().rsplit(":", 1)[1])
    config = ServerConfig.from_settings(host, port)
    server = StageServer(stages, config)
    bound = server.start()
    stop = stop_on_signals()
    print(
        f"sigdl serve: {', '.join(server.names)} on {config.host}:{bound} "
        f"(workers {config.workers}, queue {config.queue_size}, "
        f"tls {'mutual' if config.tls.ca else 'on' if config.tls.server_enabled else 'off'}, "
        f"token {'on' if config.token else 'off'})",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    while not stop.wait(0.5):
        pass
    print("sigdl serve: shutting down", file=sys.stderr, flush=True)
    started = time.monotonic()
    server.stop()
    server.grpc_server.wait_for_termination(timeout=1)
    print(f"sigdl serve: stopped in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0
