"""Which artifact URIs a service request may name: those under the configured roots.

    roots = allowed_roots()                       # SIGDL_ARTIFACT_ROOTS, default $SIGDL_HOME
    check_uri("file:///etc/passwd", "model.uri")  # ArtifactAccessError (PERMISSION_DENIED)
    require_artifact(uri, "model.json")           # ArtifactNotFoundError (NOT_FOUND)

A URI is refused when it lies outside every root once symlinks are resolved, or when it has a
'..' segment at all (also percent-encoded), even one that would land back inside: no request
has a reason to climb.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath
from urllib.parse import unquote

from sigdl.core import settings, store
from sigdl.core.errors import InputError
from sigdl.core.jobs import FieldError


class ArtifactAccessError(InputError, PermissionError):
    """An artifact URI outside the configured roots, or one that climbs out with '..'."""


def allowed_roots() -> list[str]:
    """The URI prefixes requests may read and write: SIGDL_ARTIFACT_ROOTS, else $SIGDL_HOME."""
    raw = settings.SIGDL_ARTIFACT_ROOTS.get()
    if not raw:
        return [store.as_uri(settings.SIGDL_HOME.get())]
    return [store.as_uri(part.strip()) for part in raw.split(",") if part.strip()]


def check_uri(uri: str, name: str, roots: list[str] | None = None) -> str:
    """`uri` when it lies under one of `roots`; FieldError when malformed, ArtifactAccessError
    when outside them or when it climbs with '..' (even if it would land back inside)."""
    roots = allowed_roots() if roots is None else roots
    if not uri:
        raise FieldError(name, "required: expected file:///absolute/path or s3://bucket/key")
    try:
        scheme = store.as_uri(uri).split(":", 1)[0].lower() if "://" in uri else ""
    except store.InvalidURIError as exc:
        raise FieldError(name, str(exc)) from None
    if scheme not in ("file", "s3"):
        raise FieldError(name, f"{uri!r} is not a file:// or s3:// URI")
    if ".." in PurePosixPath(unquote(uri.split("://", 1)[1])).parts:
        raise ArtifactAccessError(f"{name}: {uri!r} climbs with '..'; refused")
    if not any(_under(uri, root) for root in roots):
        raise ArtifactAccessError(
            f"{name}: {uri!r} is outside the artifact roots {', '.join(roots)} "
            "(SIGDL_ARTIFACT_ROOTS); refused"
        )
    return uri


def _under(uri: str, root: str) -> bool:
    if uri.startswith("s3://") and root.startswith("s3://"):
        prefix = root.rstrip("/")
        return uri == prefix or uri.startswith(prefix + "/")
    if uri.lower().startswith("file:") and root.lower().startswith("file:"):
        try:
            # realpath: a symlink inside a root must not lead outside it
            path = os.path.realpath(store.FileBackend.path_of(uri))
            base = os.path.realpath(store.FileBackend.path_of(root))
        except store.InvalidURIError:
            return False
        return path == base or path.startswith(base.rstrip(os.sep) + os.sep)
    return False


def require_artifact(uri: str, member: str | None = None) -> None:
    """ArtifactNotFoundError unless `uri/member` exists (`member` None: `uri` is one artifact
    or a directory-like prefix holding at least one)."""
    if member is not None:
        target = f"{uri.rstrip('/')}/{member}"
        if not store.exists(target):
            raise store.ArtifactNotFoundError(target)
    elif not store.exists(uri) and not store.list_uris(uri):
        raise store.ArtifactNotFoundError(uri)
