"""Read and write artifacts by URI: ``file:///abs/path`` on local disk, ``s3://bucket/key`` on S3.

Stages meet only through artifact URIs, so this module is the one place that knows how bytes get
there. Each URI scheme has a backend in a registry; the module-level functions dispatch on it::

    from sigdl.core import store
    digest = store.put_file("s3://artifacts/run-7/model.onnx", "out/model.onnx")
    store.get_dir("s3://artifacts/run-7", "/tmp/run-7")
    store.list_uris(store.as_uri("out"))  # ['file:///.../out/model.onnx', ...]

Writes are atomic: the file backend writes a temporary file beside the target and renames it over
the target; an S3 object appears only when its upload (single or multipart) completes. The S3
client is built from the SIGDL_S3_* settings unless an ``S3Backend`` is handed its own.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, ClassVar, cast
from urllib.parse import unquote

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from sigdl.core import settings
from sigdl.core.errors import InputError

CHUNK_SIZE = 1 << 20  # bytes per read when streaming: bounds memory use, not speed
MIN_PART_SIZE = 5 << 20  # S3 refuses smaller multipart parts (except the last)
DEFAULT_PART_SIZE = 16 << 20  # 10,000 parts (the S3 limit) of 16 MiB allow objects to 160 GiB
_PARTIAL_SUFFIX = ".sigdl-partial"  # local writes in progress; never listed as artifacts

ByteSource = IO[bytes] | Iterable[bytes]  # a readable binary stream or an iterable of chunks


# --- errors ------------------------------------------------------------------------------------
class StoreError(InputError):
    """Base of every artifact-store error. Messages are one line and never hold a secret.
    An InputError, so that the CLI answers exit 2 with the line; the services map each kind
    to its own status (services/grpc_common/jobservice.py)."""


class ArtifactNotFoundError(StoreError, FileNotFoundError):
    """No artifact at this URI (its bucket or directory may exist)."""

    def __init__(self, uri: str) -> None:
        super().__init__(f"artifact not found: {uri!r}")
        self.uri = uri

    def __reduce__(self) -> tuple[type, tuple[str]]:
        # OSError pickles its args (the message); rebuild from the URI instead
        return (type(self), (self.uri,))


class BucketNotFoundError(StoreError):
    """The S3 bucket a URI names does not exist: a configuration error, not a missing artifact."""


class StoreAuthError(StoreError):
    """The S3 server refused our credentials."""


class StoreUnreachableError(StoreError, ConnectionError):
    """The S3 server could not be reached at all."""


class InvalidURIError(StoreError, InputError):
    """A malformed artifact URI (a ValueError, so the CLI reports it as bad input)."""


class UnsupportedSchemeError(InvalidURIError):
    """An artifact URI whose scheme has no registered backend."""


# --- streaming helpers -------------------------------------------------------------------------
class _ChunkReader:
    """Adapts an iterable of byte chunks to the ``read(n)`` that the backends consume."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buffer) < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        n = len(self._buffer) if n < 0 else n
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data


class _HashingReader:
    """Passes reads through from a byte source, hashing and counting every byte on the way."""

    def __init__(self, source: ByteSource) -> None:
        reader = source if hasattr(source, "read") else _ChunkReader(cast(Iterable[bytes], source))
        self._read = cast(IO[bytes], reader).read
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _write_local(path: Path, reader: _HashingReader, length: int = -1) -> None:
    """Stream `reader` into `path` through a temporary file beside it, then rename it into place.

    A reader of `path` sees the old file or the new one, never a partial one; a failure anywhere
    (including in the source) leaves the old file as it was and no temporary file behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_PARTIAL_SUFFIX}")
    try:
        # O_EXCL: never share a temporary file with another writer; mode 0o666 lets the umask
        # decide (mkstemp would force 0600 onto the final artifact)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            while chunk := reader.read(CHUNK_SIZE):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if length >= 0 and reader.size != length:
            raise StoreError(
                f"{str(path)!r}: expected {length} bytes, the source gave {reader.size}"
            )
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _child_path(root: Path, relative: str, prefix_uri: str) -> Path:
    """`root / relative`, refusing names (from a remote listing) that would escape `root`."""
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or ".." in parts:
        raise StoreError(
            f"refusing to download {relative!r} under {prefix_uri!r}: it would land outside "
            f"{str(root)!r}"
        )
    return root.joinpath(*parts)


# --- the backend interface ---------------------------------------------------------------------
class ArtifactBackend(ABC):
    """One storage system. Subclasses supply the primitives; the rest is built on them here."""

    scheme: ClassVar[str]  # the URI scheme this backend serves

    @abstractmethod
    def _write(self, uri: str, reader: _HashingReader, length: int) -> None:
        """Atomically store everything `reader` yields at `uri` (`length` -1: unknown)."""

    @abstractmethod
    def open_read(self, uri: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A context manager yielding a binary stream of the artifact (maybe not seekable)."""

    @abstractmethod
    def exists(self, uri: str) -> bool: ...

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Remove the artifact; removing a missing one is not an error (retries stay simple)."""

    @abstractmethod
    def _walk(self, prefix_uri: str) -> Iterator[str]:
        """Relative '/'-separated names of every artifact under `prefix_uri`, in any order."""

    @abstractmethod
    def _join(self, prefix_uri: str, relative: str) -> str:
        """The URI of `relative` under `prefix_uri`."""

    def put_stream(self, uri: str, source: ByteSource, length: int = -1) -> str:
        """Store a stream or an iterable of chunks at `uri`; return its sha256 hex digest."""
        reader = _HashingReader(source)
        self._write(uri, reader, length)
        return reader.hexdigest()

    def put_bytes(self, uri: str, data: bytes) -> str:
        return self.put_stream(uri, io.BytesIO(data), len(data))

    def put_file(self, uri: str, local_path: str | os.PathLike[str]) -> str:
        with open(local_path, "rb") as f:
            return self.put_stream(uri, f, os.fstat(f.fileno()).st_size)

    def put_dir(self, uri_prefix: str, local_dir: str | os.PathLike[str]) -> dict[str, str]:
        """Upload every file under `local_dir`; return {relative name: sha256}."""
        root = Path(local_dir)
        if not root.is_dir():
            raise InputError(f"cannot upload {str(root)!r}: not a directory")
        digests = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            digests[rel] = self.put_file(self._join(uri_prefix, rel), path)
        return digests

    def get_bytes(self, uri: str) -> bytes:
        with self.open_read(uri) as stream:
            return stream.read()

    def get_file(self, uri: str, local_path: str | os.PathLike[str]) -> str:
        """Download atomically to `local_path`; return the sha256 of what was written."""
        with self.open_read(uri) as stream:
            reader = _HashingReader(stream)
            _write_local(Path(local_path), reader)
        return reader.hexdigest()

    def get_dir(self, uri_prefix: str, local_dir: str | os.PathLike[str]) -> dict[str, str]:
        """Download every artifact under `uri_prefix` into `local_dir`; return {name: sha256}."""
        root = Path(local_dir)
        return {
            rel: self.get_file(self._join(uri_prefix, rel), _child_path(root, rel, uri_prefix))
            for rel in sorted(self._walk(uri_prefix))
        }

    def list_uris(self, prefix_uri: str) -> list[str]:
        """Every artifact under `prefix_uri` (a directory-like prefix), recursive and sorted."""
        return sorted(self._join(prefix_uri, rel) for rel in self._walk(prefix_uri))

    def sha256(self, uri: str) -> str:
        """Hash the stored bytes themselves (an S3 ETag is not a content digest)."""
        digest = hashlib.sha256()
        with self.open_read(uri) as stream:
            while chunk := stream.read(CHUNK_SIZE):
                digest.update(chunk)
        return digest.hexdigest()


# --- file:// -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileBackend(ArtifactBackend):
    """Artifacts as files on a local (or mounted) file system."""

    scheme: ClassVar[str] = "file"

    @staticmethod
    def path_of(uri: str) -> Path:
        """The absolute path a ``file:`` URI names; percent-escapes are decoded."""
        expected = "expected file:///absolute/path"
        if not uri.lower().startswith("file:"):
            raise InvalidURIError(f"{uri!r} is not a file URI: {expected}")
        rest = uri[len("file:") :]
        if rest.startswith("//"):
            host, _, path = rest[2:].partition("/")
            if host not in ("", "localhost"):
                raise InvalidURIError(f"{uri!r} names host {host!r}; only local files: {expected}")
            rest = "/" + path
        if not rest.startswith("/"):
            raise InvalidURIError(f"{uri!r} is a relative file URI: {expected}")
        return Path(unquote(rest))

    def _write(self, uri: str, reader: _HashingReader, length: int) -> None:
        _write_local(self.path_of(uri), reader, length)

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[IO[bytes]]:
        try:
            stream = self.path_of(uri).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactNotFoundError(uri) from None
        with stream:
            yield stream

    def exists(self, uri: str) -> bool:
        return self.path_of(uri).is_file()

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(uri).unlink()

    def _walk(self, prefix_uri: str) -> Iterator[str]:
        root = self.path_of(prefix_uri)
        if not root.is_dir():
            return
        for path in root.rglob("*"):
            if path.is_file() and not path.name.endswith(_PARTIAL_SUFFIX):
                yield path.relative_to(root).as_posix()

    def _join(self, prefix_uri: str, relative: str) -> str:
        return (self.path_of(prefix_uri) / relative).as_uri()


# --- s3:// -------------------------------------------------------------------------------------
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})
_AUTH_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)


def parse_s3_uri(uri: str, *, object_required: bool = True) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into (bucket, key). Keys are taken literally, not unescaped."""
    if not uri.startswith("s3://"):
        raise InvalidURIError(f"{uri!r} is not an S3 URI: expected s3://bucket/key")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise InvalidURIError(f"{uri!r} names no bucket: expected s3://bucket/key")
    if not _BUCKET_RE.match(bucket):
        raise InvalidURIError(
            f"{uri!r} has an invalid bucket name {bucket!r}: expected 3-63 lowercase letters, "
            "digits, '.' or '-'"
        )
    if object_required and (not key or key.endswith("/")):
        raise InvalidURIError(f"{uri!r} names no object: expected s3://bucket/key")
    if {".", ".."} & set(key.split("/")):
        # servers disagree on what such a key means; minio refuses it, so say so here
        raise InvalidURIError(f"{uri!r} has a '.' or '..' segment: expected a plain key")
    return bucket, key


def _bucket(uri: str) -> str:
    return parse_s3_uri(uri, object_required=False)[0]


@dataclass(frozen=True)
class S3Config:
    """Where the S3 server is and who we are to it. ``from_settings()`` reads SIGDL_S3_*."""

    endpoint: str  # host:port; an http:// or https:// prefix is accepted and sets `secure`
    access_key: str | None = None  # None: anonymous requests
    secret_key: str | None = field(default=None, repr=False)  # never printed nor quoted
    secure: bool = False  # HTTPS
    region: str | None = "us-east-1"  # sent with requests so the client skips a location lookup

    def __post_init__(self) -> None:
        scheme, sep, rest = self.endpoint.partition("://")
        if sep and scheme in ("http", "https"):
            # frozen: the normalized values are set once, here
            object.__setattr__(self, "endpoint", rest.rstrip("/"))
            object.__setattr__(self, "secure", scheme == "https")
        if not self.endpoint or "/" in self.endpoint:
            raise InputError(f"S3 endpoint {self.endpoint!r} is not valid: expected host:port")
        if self.access_key and self.secret_key is None:
            raise InputError(
                f"S3 access key {self.access_key!r} has no secret key: set SIGDL_S3_SECRET_KEY"
            )

    @classmethod
    def from_settings(cls) -> S3Config:
        return cls(
            endpoint=settings.SIGDL_S3_ENDPOINT.get(),
            access_key=settings.SIGDL_S3_ACCESS_KEY.get(),
            secret_key=settings.SIGDL_S3_SECRET_KEY.get(),
            secure=settings.SIGDL_S3_SECURE.get(),
            region=settings.SIGDL_S3_REGION.get(),
        )

    @classmethod
    def for_uri(cls, uri: str | None) -> S3Config:
        """The edge site's server and keys (SIGDL_EDGE_SITE_S3_*) for a URI in the bucket of
        SIGDL_EDGE_STORE when they are set; the SIGDL_S3_* ones for every other URI."""
        edge, endpoint = settings.SIGDL_EDGE_STORE.get(), settings.SIGDL_EDGE_SITE_S3_ENDPOINT.get()
        if not (uri and edge and endpoint and edge.startswith("s3://")):
            return cls.from_settings()
        if _bucket(uri) != _bucket(edge):
            return cls.from_settings()
        return cls(
            endpoint=endpoint,
            access_key=settings.SIGDL_EDGE_SITE_S3_ACCESS_KEY.get(),
            secret_key=settings.SIGDL_EDGE_SITE_S3_SECRET_KEY.get(),
            region=settings.SIGDL_S3_REGION.get(),
        )

    def make_client(self) -> Minio:
        """Build the MinIO client: the one place in SigDL where that happens."""
        http = urllib3.PoolManager(
            # minio's default waits 5 minutes to connect and retries refusals 5 times: an
            # unreachable server must fail in seconds; reads of big objects may still take long
            timeout=urllib3.Timeout(connect=10, read=300),
            retries=urllib3.Retry(
                total=5, connect=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
            maxsize=10,
            # no ca_certs: urllib3 then loads the system store, which honors SSL_CERT_FILE
            cert_reqs="CERT_REQUIRED",
        )
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
            http_client=http,
        )


def _network_reason(exc: BaseException) -> str:
    """The socket-level reason ('Connection refused') buried in urllib3's exception chain."""
    current: BaseException | None = exc
    for _ in range(8):
        if current is None:
            break
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        current = getattr(current, "reason", None) or current.__cause__ or current.__context__
    return type(exc).__name__


@dataclass
class S3Backend(ArtifactBackend):
    """Artifacts as objects on an S3 server (MinIO in a cluster, SeaweedFS in tests).

    Pass `client` to use an already-built ``Minio`` (custom TLS, proxies); `config` still names
    the endpoint and access key that error messages quote.
    """

    scheme: ClassVar[str] = "s3"
    config: S3Config = field(default_factory=S3Config.from_settings)
    client: Minio | None = None  # built from `config` when None
    part_size: int = DEFAULT_PART_SIZE  # multipart part size in bytes
    _known_buckets: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {self.part_size} is below the S3 minimum {MIN_PART_SIZE}")
        if self.client is None:
            self.client = self.config.make_client()

    @property
    def _minio(self) -> Minio:
        return cast(Minio, self.client)

    @contextlib.contextmanager
    def _errors(self, uri: str) -> Iterator[None]:
        """Turn minio and urllib3 failures into one-line store errors naming URI and endpoint."""
        endpoint = self.config.endpoint
        try:
            yield
        except S3Error as exc:
            raise self._translate(exc, uri) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise StoreUnreachableError(
                f"cannot reach S3 server at {endpoint} ({_network_reason(exc)}) for {uri!r}; "
                "check SIGDL_S3_ENDPOINT"
            ) from exc
        except MinioException as exc:  # answers that are not S3 XML (proxies, 5xx pages)
            reason = " ".join(str(exc).split())[:200]
            raise StoreError(f"S3 server at {endpoint} failed on {uri!r}: {reason}") from exc

    def _translate(self, exc: S3Error, uri: str) -> StoreError:
        endpoint, code = self.config.endpoint, exc.code
        if code in _NOT_FOUND_CODES:
            return ArtifactNotFoundError(uri)
        if code == "NoSuchBucket":
            return self._no_bucket(exc.bucket_name or parse_s3_uri(uri, object_required=False)[0])
        if code in _AUTH_CODES:
            who = repr(self.config.access_key) if self.config.access_key else "none (anonymous)"
            return StoreAuthError(
                f"S3 server at {endpoint} refused access key {who} ({code}) for {uri!r}; "
                "check SIGDL_S3_ACCESS_KEY and SIGDL_S3_SECRET_KEY"
            )
        message = " ".join(str(exc.message).split())
        return StoreError(f"S3 server at {endpoint} answered {code} for {uri!r}: {message}")

    def _no_bucket(self, bucket: str) -> BucketNotFoundError:
        self._known_buckets.discard(bucket)
        return BucketNotFoundError(f"bucket {bucket!r} does not exist at {self.config.endpoint}")

    def _require_bucket(self, bucket: str) -> None:
        # Checked before writes because some servers (SeaweedFS) create a missing bucket on PUT,
        # which would hide a typo in a URI; and on a key miss, because HEAD cannot tell the two
        if bucket not in self._known_buckets:
            if not self._minio.bucket_exists(bucket):
                raise self._no_bucket(bucket)
            self._known_buckets.add(bucket)

    def _write(self, uri: str, reader: _HashingReader, length: int) -> None:
        bucket, key = parse_s3_uri(uri)
        with self._errors(uri):
            self._require_bucket(bucket)
            # Atomic by S3 semantics: the object appears when the PUT or the multipart completion
            # succeeds; minio aborts a multipart upload whose source stream raises.
            self._minio.put_object(bucket, key, reader, length, part_size=self.part_size)

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[IO[bytes]]:
        bucket, key = parse_s3_uri(uri)
        with self._errors(uri):
            response = self._minio.get_object(bucket, key)
            try:
                yield cast(IO[bytes], response)
            finally:
                response.close()
                response.release_conn()

    def exists(self, uri: str) -> bool:
        """Whether the object exists; a missing bucket raises BucketNotFoundError."""
        bucket, key = parse_s3_uri(uri)
        with self._errors(uri):
            try:
                self._minio.stat_object(bucket, key)
                return True
            except S3Error as exc:
                if exc.code not in _NOT_FOUND_CODES:
                    raise
            self._require_bucket(bucket)
            return False

    def delete(self, uri: str) -> None:
        bucket, key = parse_s3_uri(uri)
        with self._errors(uri):
            self._require_bucket(bucket)
            self._minio.remove_object(bucket, key)

    def _walk(self, prefix_uri: str) -> Iterator[str]:
        bucket, key = parse_s3_uri(prefix_uri, object_required=False)
        prefix = key if not key or key.endswith("/") else key + "/"
        with self._errors(prefix_uri):
            for obj in self._minio.list_objects(bucket, prefix=prefix, recursive=True):
                name = cast(str, obj.object_name)
                if not obj.is_dir and not name.endswith("/"):
                    yield name[len(prefix) :]

    def _join(self, prefix_uri: str, relative: str) -> str:
        bucket, key = parse_s3_uri(prefix_uri, object_required=False)
        prefix = key if not key or key.endswith("/") else key + "/"
        return f"s3://{bucket}/{prefix}{relative}"


@functools.lru_cache(maxsize=8)
def _shared_s3_backend(config: S3Config) -> S3Backend:
    # One backend per distinct configuration: module-level calls reuse its connection pool and
    # known-bucket cache, while settings changed at run time (tests) still take effect.
    return S3Backend(config=config)


# --- the registry and the module-level API -----------------------------------------------------
BackendFactory = Callable[[], ArtifactBackend]
_REGISTRY: dict[str, BackendFactory] = {}
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def register_backend(scheme: str, factory: BackendFactory) -> None:
    """Serve URIs of `scheme` with backends made by `factory` (called once per operation)."""
    _REGISTRY[scheme.lower()] = factory


def registered_schemes() -> list[str]:
    return sorted(_REGISTRY)


def _scheme_of(uri: str) -> str:
    match = _SCHEME_RE.match(uri) if isinstance(uri, str) else None
    if match is None:
        raise InvalidURIError(
            f"{uri!r} is not an artifact URI: expected file:///absolute/path or s3://bucket/key "
            "(as_uri() turns a local path into one)"
        )
    scheme = match.group(1).lower()
    if scheme not in _REGISTRY:
        raise UnsupportedSchemeError(
            f"unsupported artifact URI scheme {scheme!r} in {uri!r}; "
            f"registered: {', '.join(registered_schemes())}"
        )
    return scheme


def backend_for(uri: str) -> ArtifactBackend:
    """The backend that serves `uri`, by its scheme (and, for s3, by its bucket's server)."""
    scheme = _scheme_of(uri)
    if scheme == S3Backend.scheme and _REGISTRY[scheme] is _default_s3:
        return _shared_s3_backend(S3Config.for_uri(uri))
    return _REGISTRY[scheme]()


def _default_s3() -> S3Backend:
    return _shared_s3_backend(S3Config.from_settings())


register_backend(FileBackend.scheme, FileBackend)
register_backend(S3Backend.scheme, _default_s3)


def as_uri(path_or_uri: str | os.PathLike[str]) -> str:
    """A URI unchanged (its scheme checked), or a local path as an absolute ``file://`` URI."""
    if isinstance(path_or_uri, str) and (
        re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path_or_uri) or path_or_uri.startswith("file:")
    ):
        _scheme_of(path_or_uri)
        return path_or_uri
    # abspath, not resolve(): keep the caller's symlinks, which may be the stable name
    return Path(os.path.abspath(Path(path_or_uri).expanduser())).as_uri()


def local_artifact_root() -> str:
    """The embedded default home of artifacts: ``$SIGDL_HOME/artifacts`` as a file URI."""
    return as_uri(settings.SIGDL_HOME.get() / "artifacts")


def put_stream(uri: str, source: ByteSource, length: int = -1) -> str:
    """Store a binary stream or an iterable of byte chunks at `uri`; return its sha256."""
    return backend_for(uri).put_stream(uri, source, length)


def put_bytes(uri: str, data: bytes) -> str:
    """Store `data` at `uri`; return its sha256 hex digest."""
    return backend_for(uri).put_bytes(uri, data)


def put_file(uri: str, local_path: str | os.PathLike[str]) -> str:
    """Stream a local file to `uri`; return its sha256 hex digest."""
    return backend_for(uri).put_file(uri, local_path)


def put_dir(uri_prefix: str, local_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Upload every file under `local_dir` below `uri_prefix`; return {relative name: sha256}."""
    return backend_for(uri_prefix).put_dir(uri_prefix, local_dir)


def replace_dir(
    uri_prefix: str, local_dir: str | os.PathLike[str], last: str = "report.json"
) -> dict[str, str]:
    """Make `uri_prefix` hold exactly the files of `local_dir` (a job's whole-folder output on
    S3): upload every file, `last` (the report whose digests bind the others) after the rest,
    then delete the objects of an earlier run that this one did not write; return
    {relative name: sha256}. An object store has no multi-object swap: while this runs, or if
    it fails halfway, a reader sees new files beside the old report or old files beside the
    new one, which the artifact chain (sigdl/core/chain.py) refuses rather than trusts."""
    backend = backend_for(uri_prefix)
    root = Path(local_dir)
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    before = set(backend.list_uris(uri_prefix))
    digests = {}
    for name in sorted(names, key=lambda n: n == last):  # stable: `last` moves to the end
        digests[name] = backend.put_file(backend._join(uri_prefix, name), root / name)
    for stale in before - {backend._join(uri_prefix, n) for n in names}:
        backend.delete(stale)
    return digests


def get_bytes(uri: str) -> bytes:
    return backend_for(uri).get_bytes(uri)


def get_file(uri: str, local_path: str | os.PathLike[str]) -> str:
    """Download `uri` atomically to `local_path`; return the sha256 of what was written."""
    return backend_for(uri).get_file(uri, local_path)


def get_dir(uri_prefix: str, local_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Download every artifact under `uri_prefix` into `local_dir`; return {name: sha256}."""
    return backend_for(uri_prefix).get_dir(uri_prefix, local_dir)


def open_read(uri: str) -> contextlib.AbstractContextManager[IO[bytes]]:
    """``with open_read(uri) as stream:`` a binary stream of the artifact (maybe not seekable)."""
    return backend_for(uri).open_read(uri)


def exists(uri: str) -> bool:
    return backend_for(uri).exists(uri)


def list_uris(prefix_uri: str) -> list[str]:
    """Every artifact under `prefix_uri` (a directory-like prefix), recursive and sorted."""
    return backend_for(prefix_uri).list_uris(prefix_uri)


def delete(uri: str) -> None:
    """Remove the artifact at `uri`; a missing one is not an error."""
    backend_for(uri).delete(uri)


def sha256(uri: str) -> str:
    """The sha256 hex digest of the artifact's bytes."""
    return backend_for(uri).sha256(uri)
