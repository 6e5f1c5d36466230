"""Who may talk to a service: optional TLS (mutual when a CA is given) and a bearer token.

    tls = TlsFiles.from_settings()                 # SIGDL_TLS_CERT / _KEY / _CA
    server.add_secure_port(addr, tls.server_credentials())
    channel = grpc.secure_channel(addr, tls.channel_credentials())

On a server, a CA means "require client certificates signed by it"; on a client, it is the root
that the server's certificate must chain to, and a cert/key pair is presented when given.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

import grpc

from sigdl.core import settings
from sigdl.core.errors import InputError

# Kubernetes' native grpc probes cannot send a token: health stays open, it tells nothing secret
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one side of a TLS connection; every field may be None."""

    cert: Path | None = None  # this side's certificate chain
    key: Path | None = None  # its private key
    ca: Path | None = None  # server: client CA (mTLS on); client: root for the server's cert

    @classmethod
    def from_settings(cls) -> TlsFiles:
        return cls(
            settings.SIGDL_TLS_CERT.get(), settings.SIGDL_TLS_KEY.get(), settings.SIGDL_TLS_CA.get()
        )

    @property
    def server_enabled(self) -> bool:
        return self.cert is not None

    @property
    def client_enabled(self) -> bool:
        return self.ca is not None or self.cert is not None

    def _read(self, name: str) -> bytes | None:
        path = getattr(self, name)
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"TLS {name} {str(path)!r} cannot be read: {exc.strerror}") from None

    def server_credentials(self) -> grpc.ServerCredentials:
        if self.cert is None or self.key is None:
            raise InputError("TLS needs both SIGDL_TLS_CERT and SIGDL_TLS_KEY")
        ca = self._read("ca")
        return grpc.ssl_server_credentials(
            [(self._read("key"), self._read("cert"))],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self._read("ca"),
            private_key=self._read("key"),
            certificate_chain=self._read("cert"),
        )


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call (but health checks) whose `authorization` metadata is not
    `Bearer <token>`, with UNAUTHENTICATED, before the servicer sees it."""

    def __init__(self, token: str) -> None:
        if not token:
            raise InputError("SIGDL_TOKEN is empty: expected a token or no setting at all")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_METHOD_PREFIXES):
            return continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(given).encode(), self._expected):
            return continuation(handler_call_details)
        reason = "missing bearer token" if not given else "invalid bearer token"
        return _refusal(continuation(handler_call_details), reason)


def _refusal(handler: grpc.RpcMethodHandler | None, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that aborts with UNAUTHENTICATED."""

    def deny(request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    if handler is None or not (handler.request_streaming or handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(deny)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.stream_unary_rpc_method_handler(deny)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata a client sends with every call."""
    return (("authorization", f"Bearer {token}"),) if token else ()
