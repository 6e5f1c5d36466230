"""The loop on one machine (`sigdl run`, `make run`): real services, a real pipeline run.

`EmbeddedServices` starts `sigdl serve all` as a child process on 127.0.0.1 (a free port) and
waits until its health check says SERVING; `LocalRunner` runs the kfp pipeline of
`pipelines/cicd.py` with `kfp.local`'s SubprocessRunner (no containers: each component runs in
a subprocess of this Python), its log in `<out>/kfp.log`; the lines the components mark
(`pipelines.steps.say`) are shown as they come. MLflow is the SQLite store under SIGDL_HOME.

    with EmbeddedServices(out / "services.log", roots=[...]) as services:
        result = run_loop(cfg, LocalRunner(out), services.address, on_line=print)
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pipelines.steps import LINE_PREFIX
from sigdl.core import settings
from sigdl.core.errors import InputError

STARTUP_TIMEOUT_S = 120.0  # `sigdl serve all` imports torch, mlflow, onnxruntime: seconds
LISTENING = re.compile(r"sigdl serve: .* on ([0-9.]+):(\d+) ")


class EmbeddedServices:
    """`sigdl serve all` in a child process for the length of a `with` block."""

    def __init__(self, log_path: Path, roots: list[str]) -> None:
        self.log_path = log_path
        self.roots = roots  # artifact roots the services may read and write
        self.process: subprocess.Popen | None = None
        self.address = ""

    def __enter__(self) -> EmbeddedServices:
        # the child's settings: ours, with the artifact roots of this run
        env = settings.environment_with(SIGDL_ARTIFACT_ROOTS=",".join(self.roots))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        command = [sys.executable, "-m", "sigdl.cli", "serve", "all", "--port", "0"]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        stdin=subprocess.DEVNULL)  # fmt: skip
        log.close()
        try:
            self.address = self._wait_listening()
            self._wait_serving()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_listening(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            found = LISTENING.search(text)
            if found:
                return f"{found.group(1)}:{found.group(2)}"
            if self.process.poll() is not None:
                last = text.strip().splitlines()[-1:] or ["(no output)"]
                raise InputError(f"`sigdl serve all` exited with {self.process.returncode}: "
                                 f"{last[0]} (log: {self.log_path})")  # fmt: skip
            time.sleep(0.2)
        raise InputError(f"`sigdl serve all` did not listen within {STARTUP_TIMEOUT_S:.0f} s "
                         f"(log: {self.log_path})")  # fmt: skip

    def _wait_serving(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                with contextlib.suppress(grpc.RpcError):
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                time.sleep(0.3)
        raise InputError(f"the services at {self.address} did not become SERVING within "
                         f"{STARTUP_TIMEOUT_S:.0f} s (log: {self.log_path})")  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: a graceful shutdown
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _LineEcho(threading.Thread):
    """Follows a growing log file and hands the marked lines, unmarked, to `on_line`."""

    def __init__(self, path: Path, on_line: Callable[[str], None]) -> None:
        super().__init__(name="sigdl-kfp-log", daemon=True)
        self.path, self.on_line = path, on_line
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.path.exists() and not self.stopped.is_set():
            time.sleep(0.05)
        with self.path.open(errors="replace") as stream:
            pending = ""
            while True:
                chunk = stream.read()
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split("\n")
                    for line in lines:
                        at = line.find(LINE_PREFIX)
                        if at >= 0:
                            self.on_line(line[at + len(LINE_PREFIX) :])
                elif self.stopped.is_set():
                    return
                else:
                    time.sleep(0.1)


class LocalRunner:
    """Runs the pipeline with kfp.local, one task after another (parallel retests come from
    the services' worker pools), its whole log in `<out>/kfp.log`."""

    def __init__(self, out: Path, on_line: Callable[[str], None] | None = None) -> None:
        self.out = out
        self.on_line = on_line or (lambda line: None)

    def run(self, arguments: dict) -> None:
        import warnings

        from kfp import local

        from pipelines.cicd import cicd_pipeline

        # kfp.local warns per task that resources and the image mean nothing without
        # containers: true, and said once here
        warnings.filterwarnings("ignore", module=r"kfp\.local")

        iteration = arguments["iteration"]
        log_path = self.out / f"kfp-iteration-{iteration}.log"
        local.init(runner=local.SubprocessRunner(use_venv=False),
                   pipeline_root=str(self.out / "kfp"), raise_on_error=False)  # fmt: skip
        echo = _LineEcho(log_path, self.on_line)
        echo.start()
        root = logging.getLogger()
        saved = root.handlers[:]
        try:
            with log_path.open("w", buffering=1) as log, contextlib.redirect_stdout(log):
                # kfp logs through the root logger, also outside its own logging context:
                # everything it says goes to this run's log, not to the terminal
                root.handlers = [logging.StreamHandler(log)]
                cicd_pipeline(**arguments)
        finally:
            root.handlers = saved
            echo.stopped.set()
            echo.join(timeout=5)


def artifact_roots(out: Path, store_root: str | None) -> list[str]:
    """What the embedded services may touch: SIGDL_HOME, the run's folder, the store."""
    from sigdl.core import store

    roots = [store.as_uri(str(settings.SIGDL_HOME.get())), store.as_uri(str(out))]
    if store_root:
        roots.append(store.as_uri(store_root))
    return roots
