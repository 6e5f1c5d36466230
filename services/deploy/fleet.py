"""Where edge packages live in the artifact store, and the `current` pointer of each fleet.

Layout under a store root (a ``file://`` folder or an ``s3://bucket/prefix``)::

    fleets/<fleet>/<target>/v1/model.onnx, model.sdc, manifest.json, signature
    fleets/<fleet>/<target>/v2/...
    fleets/<fleet>/<target>/current     {"version": "v2", "manifest_sha256": ..., "history": [...]}
    fleets/<fleet>/<target>/canary      {"version": "v3", "manifest_sha256": ..., "base": "v2"}
    fleets/<fleet>/_agents/<target>/<agent-id>.json    what each edge agent last reported

A version folder is immutable once published. `current` is one small JSON object written in a
single atomic put (a rename on disk, one PUT on S3), and only after every file of its version
has been uploaded and read back with the expected sha256: an edge agent that reads `current`
always finds a complete, verified version. The history of what was current lives in the same
object, so pointer and history can never disagree. A `canary` pointer, while it exists, names a
version that only canary agents follow (services/deploy/canary.py promotes or removes it).

    ft = FleetTarget.at("s3://artifacts", "lab", "jetson-tx2")
    ft.read_pointer()["version"]  # 'v2'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import targets
from sigdl.core import signing, store
from sigdl.core.errors import InputError, short
from sigdl.core.events import EventFn, ProgressEvent

POINTER = "current"
CANARY = "canary"  # the pointer canary agents follow while it exists
MANIFEST = "manifest.json"
SIGNATURE = signing.SIGNATURE  # beside the manifest in a signed version folder
# where edge agents report their status (services/edge/agent.py): beside the targets of a
# fleet, under a name no target can have ('_' is not allowed in one)
AGENTS = "_agents"
# a DNS label: fleet and target names may become Kubernetes labels and hostnames on the edge
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
VERSION_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
NUMBERED_RE = re.compile(r"^v(\d+)$")  # the versions SigDL numbers itself: v1, v2, ...

# One publisher at a time per fleet/target in this process (the deploy service runs jobs in a
# thread pool). Publishers in other processes are caught by the pointer check before the swap.
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class ConcurrentPublishError(store.StoreError):
    """`current` moved while this publish was uploading: another publisher got there first."""


class NotPublishedError(InputError):
    """The fleet/target or version asked for has nothing published (NOT_FOUND over gRPC)."""


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InputError(
            f"{what} {short(value)} is not valid: expected lowercase letters, digits and '-' "
            "(at most 63, starting and ending with a letter or digit)"
        )
    return value


def check_target(value: str) -> str:
    """A well-formed name of a target profile in `targets/` (without a power mode: a fleet
    runs a device, whatever mode it is set to)."""
    check_name(value, "target")
    names = targets.profile_names()
    if value not in names:
        raise InputError(f"unknown target {value!r}; available: {', '.join(names)}")
    return value


def check_version(value: str) -> str:
    if not isinstance(value, str) or not VERSION_RE.match(value) or value in (POINTER, CANARY):
        raise InputError(
            f"version {short(value)} is not valid: expected e.g. 'v3' or '2026-11-24.1' (lowercase "
            f"letters, digits, '.', '_', '-'; not {POINTER!r} or {CANARY!r})"
        )
    return value


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class FleetTarget:
    """The packages of one target model in one fleet, under one store root."""

    root: str  # store root URI, no trailing slash
    fleet: str  # fleet name (a DNS label)
    target: str  # target profile name (a DNS label)

    @classmethod
    def at(cls, store_root: str | None, fleet: str, target: str) -> FleetTarget:
        root = store.as_uri(store_root) if store_root else store.local_artifact_root()
        return cls(root.rstrip("/"), check_name(fleet, "fleet"), check_target(target))

    @property
    def prefix(self) -> str:
        return f"{self.root}/fleets/{self.fleet}/{self.target}"

    def uri(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])

    @contextlib.contextmanager
    def lock(self):
        with _LOCKS_GUARD:
            lock = _LOCKS.setdefault(self.prefix, threading.Lock())
        with lock:
            yield

    # --- reading ------------------------------------------------------------------------------
    def read_pointer(self) -> dict | None:
        """The `current` pointer, or None before the first publish."""
        return self._read_json(POINTER)

    def read_canary(self) -> dict | None:
        """The `canary` pointer, or None when no canary is in progress."""
        return self._read_json(CANARY)

    def _read_json(self, name: str) -> dict | None:
        try:
            data = store.get_bytes(self.uri(name))
        except store.ArtifactNotFoundError:
            return None
        return _stored_json(data, self.uri(name))

    def read_manifest(self, version: str) -> tuple[dict, str]:
        """A version's manifest and the sha256 of its bytes."""
        data = store.get_bytes(self.uri(version, MANIFEST))
        return _stored_json(data, self.uri(version, MANIFEST)), hashlib.sha256(data).hexdigest()

    def version_folders(self) -> dict[str, set[str]]:
        """Every version folder in the store with the names of its files (complete or not)."""
        folders: dict[str, set[str]] = {}
        for uri in store.list_uris(self.prefix):
            version, _, name = uri[len(self.prefix) + 1 :].partition("/")
            if name:
                folders.setdefault(version, set()).add(name)
        return folders

    def next_version(self, folders: dict[str, set[str]] | None = None) -> str:
        """v<N+1> over every numbered folder present, so no published number is ever reused."""
        folders = self.version_folders() if folders is None else folders
        numbers = [int(m.group(1)) for v in folders if (m := NUMBERED_RE.match(v))]
        return f"v{max(numbers, default=0) + 1}"

    def verify_version(self, version: str) -> tuple[dict, str]:
        """Read a version back and check every file against its manifest (sha256 of the stored
        bytes, not an ETag); return the manifest and its own sha256."""
        try:
            manifest, digest = self.read_manifest(version)
        except store.ArtifactNotFoundError:
            raise NotPublishedError(
                f"version {version!r} of {self.fleet}/{self.target} does not exist in {self.root}"
            ) from None
        for name, entry in manifest["files"].items():
            got = store.sha256(self.uri(version, name))
            if got != entry["sha256"]:
                raise store.StoreError(
                    f"{self.uri(version, name)!r}: stored sha256 {got} differs from the "
                    f"manifest's {entry['sha256']}"
                )
        return manifest, digest

    # --- writing ------------------------------------------------------------------------------
    def upload_version(
        self,
        version: str,
        files: dict[str, Path],
        manifest_bytes: bytes,
        on_event: Callable[[dict], None] | None = None,
        signature: bytes | None = None,
    ) -> str:
        """Upload the files, then the manifest, then its `signature` (when signed), verify
        each, return the manifest's sha256.

        On any failure the files uploaded so far are removed: a version folder either holds a
        verified package or nothing (short of a crash, which `current` never points at)."""
        uploaded: list[str] = []
        total = len(files) + 1 + (signature is not None)
        try:
            for name, path in sorted(files.items()):
                expected = store.put_file(self.uri(version, name), path)
                uploaded.append(self.uri(version, name))
                self._verify(uploaded[-1], expected)
                emit(on_event, ProgressEvent.of("upload", len(uploaded), total, file=name))
            digest = store.put_bytes(self.uri(version, MANIFEST), manifest_bytes)
            uploaded.append(self.uri(version, MANIFEST))
            self._verify(uploaded[-1], digest)
            emit(on_event, ProgressEvent.of("upload", len(uploaded), total, file=MANIFEST))
            if signature is not None:
                expected = store.put_bytes(self.uri(version, SIGNATURE), signature)
                uploaded.append(self.uri(version, SIGNATURE))
                self._verify(uploaded[-1], expected)
                emit(on_event, ProgressEvent.of("upload", total, total, file=SIGNATURE))
        except BaseException:
            for uri in uploaded:
                with contextlib.suppress(Exception):
                    store.delete(uri)
            raise
        return digest

    @staticmethod
    def _verify(uri: str, expected: str) -> None:
        got = store.sha256(uri)
        if got != expected:
            raise store.StoreError(f"{uri!r}: read back sha256 {got}, uploaded {expected}")

    def swap_pointer(self, seen: dict | None, version: str, manifest_sha256: str, action: str):
        """Point `current` at `version` in one atomic write, keeping the history.

        `seen` is the pointer read when this publish began; if another writer moved `current`
        since, refuse rather than silently drop its version from the history."""
        now_pointer = self.read_pointer()
        if _version_of(now_pointer) != _version_of(seen):
            raise ConcurrentPublishError(
                f"{self.uri(POINTER)!r} moved from {_version_of(seen)!r} to "
                f"{_version_of(now_pointer)!r} during this publish; retry"
            )
        at = now()
        history = list((seen or {}).get("history", []))
        history.append({"version": version, "manifest_sha256": manifest_sha256,
                        "action": action, "at": at})  # fmt: skip
        pointer = {
            "fleet": self.fleet,
            "target": self.target,
            "version": version,
            "manifest": f"{version}/{MANIFEST}",
            "manifest_sha256": manifest_sha256,
            "updated": at,
            "previous": _version_of(seen),
            "history": history,
        }
        store.put_bytes(self.uri(POINTER), (json.dumps(pointer, indent=2) + "\n").encode())
        return pointer

    def write_canary(self, base: dict | None, version: str, manifest_sha256: str) -> dict:
        """Point `canary` at `version` (one atomic write); `base` is the `current` pointer it is
        tried against, so a promotion can tell whether `current` moved meanwhile."""
        pointer = {
            "fleet": self.fleet,
            "target": self.target,
            "version": version,
            "manifest": f"{version}/{MANIFEST}",
            "manifest_sha256": manifest_sha256,
            "base": _version_of(base),
            "created": now(),
        }
        store.put_bytes(self.uri(CANARY), (json.dumps(pointer, indent=2) + "\n").encode())
        return pointer

    def remove_canary(self) -> None:
        """Canary agents go back to `current` at their next poll."""
        store.delete(self.uri(CANARY))  # a missing one is not an error


def _stored_json(data: bytes, uri: str) -> dict:
    """What SigDL wrote; anything else there is a damaged store, not bad input."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise store.StoreError(f"{uri!r} is not valid JSON ({exc}): the store is damaged") from None
    if not isinstance(obj, dict):
        raise store.StoreError(f"{uri!r} is not a JSON object: the store is damaged")
    return obj


def _version_of(pointer: dict | None) -> str | None:
    return pointer["version"] if pointer else None


def emit(on_event: EventFn | None, event: ProgressEvent) -> None:
    if on_event is not None:
        on_event(event)
