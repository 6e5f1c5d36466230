"""sigdl.v1.EdgeInferenceService: `sigdl edge-agent` on an edge device.

    sigdl edge-agent --fleet lab --target arm-cortex-a53 --store s3://artifacts --port 50060

Serves Predict (one image or a batch), Label (an operator's labelled sample) and Status with
the model services/edge/agent.py keeps verified and current, plus grpc.health.v1 (NOT_SERVING
until a verified model is loaded) and reflection; TLS and the bearer token come from the same
settings as the stage services. The agent polls `current` in a background thread, and another
uploads the samples it keeps (services/edge/samples.py). In tests:

    server = EdgeServer(agent, port=0); port = server.start()
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.edge.agent import AgentConfig, EdgeAgent, LoadedModel, NotReadyError
from services.edge.samples import StorageFullError, Uploader
from services.grpc_common.security import TlsFiles, TokenInterceptor
from services.grpc_common.server import stop_on_signals
from services.protos.sigdl.v1 import edge_pb2, edge_pb2_grpc
from sigdl.core import settings
from sigdl.core.errors import InputError, one_line

SERVICE = "sigdl.v1.EdgeInferenceService"
RPC_THREADS = 16  # concurrent Predict calls; ONNX Runtime's own threads are the target's


def to_array(tensor: edge_pb2.Tensor, field: str) -> np.ndarray:
    """The float32 array a Tensor carries, or InputError naming `field`."""
    shape = list(tensor.shape)
    if not shape or any(d < 1 for d in shape) or len(shape) > 4:
        raise InputError(f"{field}: shape {shape} is not a 1-4 dimensional shape")
    expected = int(np.prod(shape)) * 4
    if len(tensor.data) != expected:
        raise InputError(
            f"{field}: {len(tensor.data)} bytes of data, expected {expected} (float32 {shape})"
        )
    return np.frombuffer(tensor.data, dtype="<f4").reshape(shape)


def to_tensor(array: np.ndarray) -> edge_pb2.Tensor:
    return edge_pb2.Tensor(shape=list(array.shape), data=array.astype("<f4").tobytes())


class EdgeServicer(edge_pb2_grpc.EdgeInferenceServiceServicer):
    """Parses the request, calls the agent, builds the reply."""

    def __init__(self, agent: EdgeAgent) -> None:
        self.agent = agent

    def Predict(self, request, context):  # noqa: N802 (the RPC's name)
        try:
            pixels = to_array(request.pixels, "pixels")
            private = request.private if request.HasField("private") else None
            result = self.agent.predict(pixels, private)
        except InputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, one_line(str(exc), 500))
        except NotReadyError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return edge_pb2.PredictResponse(
            logits=to_tensor(result.logits), top1=result.top1.tolist(),
            top1_probability=result.top1_probability.tolist(),
            model_version=result.version, manifest_sha256=result.manifest_sha256,
        )  # fmt: skip

    def Label(self, request, context):  # noqa: N802
        try:
            try:
                pixels = to_array(request.pixels, "pixels")
            except InputError as exc:
                self.agent.samples.reject(str(exc))  # a corrupt sample counts as rejected
                raise
            private = request.private if request.HasField("private") else None
            kept = self.agent.label(pixels, request.label, private)
        except StorageFullError as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, one_line(str(exc), 500))
        except InputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, one_line(str(exc), 500))
        except NotReadyError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return edge_pb2.LabelResponse(sha256=kept.sha256, key=kept.key, private=kept.private,
                                      duplicate=kept.duplicate)  # fmt: skip

    def Status(self, request, context):  # noqa: N802
        return edge_pb2.AgentStatus(status_json=self.agent.status().to_json())


class EdgeServer:
    """One grpc.Server with the EdgeInferenceService, health and reflection, and the poller."""

    def __init__(self, agent: EdgeAgent, host: str = "127.0.0.1", port: int = 0) -> None:
        self.agent, self.host, self.port = agent, host, port
        token, self.tls = settings.SIGDL_TOKEN.get(), TlsFiles.from_settings()
        limit = settings.SIGDL_MAX_MESSAGE_BYTES.get()
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=RPC_THREADS, thread_name_prefix="sigdl-edge"),
            interceptors=[TokenInterceptor(token)] if token is not None else [],
            options=[("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", limit)],
        )  # fmt: skip
        edge_pb2_grpc.add_EdgeInferenceServiceServicer_to_server(
            EdgeServicer(agent), self.grpc_server
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            [SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc_server
        )
        agent.on_swap.append(self._serving)
        self._stop = threading.Event()
        self._poller = threading.Thread(
            target=agent.poll_forever, args=(self._stop,), name="sigdl-edge-poll", daemon=True
        )
        self._uploader = threading.Thread(
            target=Uploader(agent.samples).run_forever, args=(self._stop,),
            name="sigdl-edge-upload", daemon=True,
        )  # fmt: skip

    def _serving(self, _model: LoadedModel) -> None:
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def start(self) -> int:
        address = f"{self.host}:{self.port}"
        try:
            if self.tls.server_enabled:
                port = self.grpc_server.add_secure_port(address, self.tls.server_credentials())
            else:
                port = self.grpc_server.add_insecure_port(address)
        except RuntimeError:
            raise InputError(f"cannot listen on {address}: in use or not permitted") from None
        self.grpc_server.start()
        self.agent.address = f"{self.host}:{port}"
        self._poller.start()
        self._uploader.start()
        return port

    def stop(self, grace_s: float = 2.0) -> None:
        self._stop.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace=grace_s).wait()
        self._poller.join(timeout=grace_s)
        self.agent.samples.wake.set()  # an idle uploader sees the stop at once
        self._uploader.join(timeout=grace_s)
        self.agent.stopped = True
        self.agent.write_status()  # the last report says it stopped


def serve(
    fleet: str, target: str, store_root: str, host: str, port: int, canary: bool = False
) -> int:
    """`sigdl edge-agent`: run until SIGTERM or Ctrl-C (`canary`: or SIGDL_AGENT_CANARY)."""
    config = AgentConfig.from_settings(fleet, target, store_root, port)
    if canary:
        config = dataclasses.replace(config, canary=True)
    agent = EdgeAgent(config)
    server = EdgeServer(agent, host, port)
    bound = server.start()
    stop = stop_on_signals()
    print(
        f"sigdl edge-agent {config.agent_id}: {SERVICE} on {host}:{bound}, following "
        f"{config.prefix}/{'canary (else current)' if config.canary else 'current'} every "
        f"{config.poll_s:g} s ({agent.threads} threads)",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0
