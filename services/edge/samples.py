"""Data the edge agent acquires: hard examples and labelled samples, kept on the device and
uploaded to the edge site's object store and (when not private) synced to the cloud store.

    samples = SampleStore(DataConfig.from_settings("lab", "arm-cortex-a53", "edge-1", folder))
    samples.keep_hard(batch, probabilities, "v3", manifest_sha256, private=None)
    samples.label(pixels, 7, private=True, model_version="v3", manifest_sha256=...)
    Uploader(samples).run_once()    # or run_forever(stop) in a thread

A sample is one input, float32 (1, C, H, W) pixels in [0, 1], saved with numpy.save
(allow_pickle=False: loading it never runs code) beside a small JSON record (label if any,
private flag, model version, top-1 probability and margin, sha256, time). Its key is
`<prefix>/samples/<fleet>/<target>/<sha256 of the .npy>.npy` (and `.json`), so an upload that
is retried, or the same input kept twice, writes the same key with the same bytes.

On the device a pending sample is `<sha>.npy` + `<sha>.json` in the samples folder, and a
marker file per destination it has reached (`<sha>.edge`, `<sha>.cloud`); once every
destination it is owed has it, its files are deleted. The folder holds at most
SIGDL_EDGE_SAMPLES_MAX_BYTES: when full, a new hard example is dropped, and a labelled sample
evicts the oldest unlabelled hard examples (an operator's label is worth more) or is refused.
A private sample goes to the edge site only; the cloud store never receives it, and one made
private after it was synced is deleted from the cloud store.

The uploader sends edge-site uploads first, then cloud syncs, through one token bucket
(SIGDL_EDGE_UPLOAD_BYTES_PER_S); a destination that fails is retried with exponential backoff
while the other carries on.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from sigdl.core import settings, store
from sigdl.core.errors import InputError, one_line

SAMPLE_SCHEMA_VERSION = 1
SAMPLES = "samples"  # the key prefix under a store prefix
COUNTERS = "counters.json"
EDGE, CLOUD, RETRACT = "edge", "cloud", "retract"  # marker suffixes
THROTTLE_CHUNK = 64 << 10  # bytes an upload reads between token-bucket waits
RETRY_BASE_S = 0.5  # first wait after a failed upload; doubles per failure in a row
RETRY_MAX_S = 30.0
IDLE_WAIT_S = 1.0  # how often an idle uploader looks for work (new samples wake it at once)
SHA_FILE_RE = re.compile(r"^([0-9a-f]{64})\.json$")


class StorageFullError(InputError):
    """Edge storage holds SIGDL_EDGE_SAMPLES_MAX_BYTES of samples not yet uploaded."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def sample_key(fleet: str, target: str, sha256: str) -> str:
    """The key of a sample's .npy under a store prefix: the same bytes, the same key."""
    return f"{SAMPLES}/{fleet}/{target}/{sha256}.npy"


@dataclass(frozen=True)
class HardExampleRule:
    """Sedna's hard-example filter on one prediction's softmax probabilities."""

    top1: float  # hard when the top-1 probability is below this
    margin: float  # or when top-1 minus top-2 probability is below this

    def __post_init__(self) -> None:
        for name, value in (("top-1 threshold", self.top1), ("margin", self.margin)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"hard-example {name} {value}: expected a number in [0, 1]")

    def judge(self, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hard mask, top-1 probability, margin), each (N,), of (N, classes) probabilities."""
        ordered = np.sort(probabilities, axis=1)
        top1 = ordered[:, -1]
        second = ordered[:, -2] if ordered.shape[1] > 1 else np.zeros_like(top1)
        margin = top1 - second
        return (top1 < self.top1) | (margin < self.margin), top1, margin


@dataclass(frozen=True)
class DataConfig:
    """Where one agent keeps its samples and where they go; `from_settings` reads SIGDL_EDGE_*."""

    folder: Path  # local edge storage of pending samples
    fleet: str
    target: str
    agent_id: str
    rule: HardExampleRule
    max_bytes: int = 256 << 20  # local storage cap of pending samples
    sample_max_bytes: int = 2 << 20  # largest single sample's pixels
    private_default: bool = True  # a sample nobody marked stays at the edge site
    edge_uri: str | None = None  # edge site prefix (None: samples stay on the device)
    cloud_uri: str | None = None  # cloud prefix (None: nothing leaves the edge site)
    bytes_per_s: int = 1 << 20  # upload bandwidth, both destinations (0: unlimited)

    def __post_init__(self) -> None:
        for name, value in (
            ("SIGDL_EDGE_SAMPLES_MAX_BYTES", self.max_bytes),
            ("SIGDL_EDGE_SAMPLE_MAX_BYTES", self.sample_max_bytes),
        ):
            if value < 1:
                raise InputError(f"{name}={value}: expected a positive number of bytes")
        if self.bytes_per_s < 0:
            raise InputError(f"SIGDL_EDGE_UPLOAD_BYTES_PER_S={self.bytes_per_s}: expected >= 0")
        if self.edge_uri and self.cloud_uri and _same_place(self.edge_uri, self.cloud_uri):
            raise InputError(
                f"SIGDL_EDGE_STORE {self.edge_uri!r} and SIGDL_CLOUD_STORE {self.cloud_uri!r} "
                "overlap: private samples would reach the cloud store"
            )

    @classmethod
    def from_settings(cls, fleet: str, target: str, agent_id: str, folder: Path) -> DataConfig:
        edge, cloud = settings.SIGDL_EDGE_STORE.get(), settings.SIGDL_CLOUD_STORE.get()
        return cls(
            folder=folder,
            fleet=fleet,
            target=target,
            agent_id=agent_id,
            rule=HardExampleRule(
                settings.SIGDL_EDGE_HARD_TOP1.get(), settings.SIGDL_EDGE_HARD_MARGIN.get()
            ),
            max_bytes=settings.SIGDL_EDGE_SAMPLES_MAX_BYTES.get(),
            sample_max_bytes=settings.SIGDL_EDGE_SAMPLE_MAX_BYTES.get(),
            private_default=settings.SIGDL_EDGE_PRIVATE_DEFAULT.get(),
            edge_uri=store.as_uri(edge).rstrip("/") if edge else None,
            cloud_uri=store.as_uri(cloud).rstrip("/") if cloud else None,
            bytes_per_s=settings.SIGDL_EDGE_UPLOAD_BYTES_PER_S.get(),
        )


def _same_place(a: str, b: str) -> bool:
    a, b = a.rstrip("/") + "/", b.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


@dataclass(frozen=True)
class KeptSample:
    """What keeping one sample did."""

    sha256: str
    key: str  # relative to a store prefix
    private: bool
    duplicate: bool  # the same pixels were already pending: their record was updated


@dataclass
class DataCounts:
    """The data part of an agent's status (persisted in the samples folder across restarts)."""

    # samples accepted (hard examples + labelled); the same pixels are counted again only once
    # their earlier copy has left the device (it then uploads to the same keys: a no-op there)
    kept: int = 0
    hard: int = 0
    labelled: int = 0
    uploaded_edge: int = 0  # samples the edge site's store holds
    synced_cloud: int = 0  # non-private samples the cloud store holds
    retracted_cloud: int = 0  # samples made private after syncing, deleted from the cloud store
    rejected: int = 0  # corrupt or oversized samples refused, and any found corrupt on disk
    dropped: int = 0  # hard examples dropped or evicted because local storage was full
    last_rejection: dict | None = None  # {"reason", "at"}
    last_upload_error: dict | None = None  # {"destination", "reason", "at"}


def check_sample(pixels: np.ndarray, shape: tuple[int, int, int], max_bytes: int) -> np.ndarray:
    """One image as float32 (1, C, H, W) in [0, 1] of the model's C, H, W, or InputError."""
    if pixels.nbytes > max_bytes:
        raise InputError(
            f"sample of {pixels.nbytes} bytes is over the {max_bytes}-byte limit "
            "(SIGDL_EDGE_SAMPLE_MAX_BYTES)"
        )
    if pixels.dtype != np.float32:
        raise InputError(f"sample of dtype {pixels.dtype}: expected float32 pixels")
    batch = pixels[None] if pixels.ndim == 3 else pixels
    if batch.ndim != 4 or batch.shape[0] != 1 or tuple(batch.shape[1:]) != tuple(shape):
        raise InputError(
            f"sample of shape {list(pixels.shape)}: expected one image, [C, H, W] or "
            f"[1, C, H, W] with C, H, W = {list(shape)}"
        )
    if not np.isfinite(batch).all():
        raise InputError("sample holds NaN or infinite values: expected pixels in [0, 1]")
    if batch.min() < 0.0 or batch.max() > 1.0:
        raise InputError(
            f"sample's pixels span [{batch.min():.4g}, {batch.max():.4g}]: expected [0, 1] "
            "(pixel / 255)"
        )
    return np.ascontiguousarray(batch)


def _load_counts(path: Path) -> DataCounts:
    """The counters an earlier run of this agent left; fresh ones if none (or unreadable)."""
    try:
        return DataCounts(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return DataCounts()


def encode(pixels: np.ndarray) -> bytes:
    """The .npy bytes of (1, C, H, W) float32 pixels; never a pickle."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(pixels, dtype="<f4"), allow_pickle=False)
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class SampleStore:
    """Pending samples in local edge storage, under a byte cap; thread-safe."""

    def __init__(self, config: DataConfig) -> None:
        self.config = config
        self.folder = config.folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.wake = threading.Event()  # set when there is something new to upload
        self.counts = _load_counts(self.folder / COUNTERS)
        self._pending: dict[str, int] = {}  # sha -> bytes on disk, oldest first
        for path in sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
            match = SHA_FILE_RE.match(path.name)
            npy = path.with_suffix(".npy")
            if match and npy.exists():
                self._pending[match.group(1)] = path.stat().st_size + npy.stat().st_size

    # --- keeping ------------------------------------------------------------------------------
    def keep_hard(
        self,
        batch: np.ndarray,
        probabilities: np.ndarray,
        model_version: str,
        manifest_sha256: str,
        private: bool | None,
    ) -> int:
        """Keep the rows of a predicted (N, C, H, W) batch the model was unsure of; return how
        many were newly kept (a full storage drops them)."""
        hard, top1, margin = self.config.rule.judge(probabilities)
        kept = 0
        for i in np.flatnonzero(hard):
            record = {
                "source": "hard",
                "label": None,
                "predicted": int(probabilities[i].argmax()),
                "top1_probability": round(float(top1[i]), 6),
                "margin": round(float(margin[i]), 6),
            }
            try:
                result = self._keep(
                    batch[i : i + 1], record, model_version, manifest_sha256, private, evict=False
                )
            except StorageFullError:
                with self._lock:
                    self.counts.dropped += 1
                    self._save_counts()
                continue
            kept += not result.duplicate
        return kept

    def label(
        self,
        pixels: np.ndarray,
        label: int,
        private: bool | None,
        model_version: str,
        manifest_sha256: str,
        shape: tuple[int, int, int],
        classes: int | None,
    ) -> KeptSample:
        """Keep an operator's labelled sample, or raise InputError saying why it is refused."""
        try:
            batch = check_sample(pixels, shape, self.config.sample_max_bytes)
            if label < 0 or (classes is not None and label >= classes):
                expected = f"0 <= label < {classes}" if classes is not None else "label >= 0"
                raise InputError(f"label {label}: expected {expected}")
        except InputError as exc:
            self.reject(str(exc))
            raise
        record = {
            "source": "label",
            "label": int(label),
            "predicted": None,
            "top1_probability": None,
            "margin": None,
        }
        return self._keep(batch, record, model_version, manifest_sha256, private, evict=True)

    def reject(self, reason: str) -> None:
        with self._lock:
            self.counts.rejected += 1
            self.counts.last_rejection = {"reason": one_line(reason, 300), "at": now()}
            self._save_counts()

    def _keep(
        self,
        batch: np.ndarray,
        record: dict,
        model_version: str,
        manifest_sha256: str,
        private: bool | None,
        evict: bool,
    ) -> KeptSample:
        data = encode(batch)
        sha = hashlib.sha256(data).hexdigest()
        private = self.config.private_default if private is None else bool(private)
        key = sample_key(self.config.fleet, self.config.target, sha)
        with self._lock:
            if sha in self._pending:
                return self._merge(sha, key, record, private)
            meta = {
                "schema_version": SAMPLE_SCHEMA_VERSION,
                "sha256": sha,
                "key": key,
                "shape": list(batch.shape),
                "dtype": "float32",
                **record,
                "private": private,
                "model_version": model_version,
                "manifest_sha256": manifest_sha256,
                "fleet": self.config.fleet,
                "target": self.config.target,
                "agent_id": self.config.agent_id,
                "time": now(),
            }
            meta_bytes = (json.dumps(meta, indent=1) + "\n").encode()
            size = len(data) + len(meta_bytes)
            self._make_room(size, evict)
            _write_atomic(self.folder / f"{sha}.npy", data)
            _write_atomic(self.folder / f"{sha}.json", meta_bytes)  # last: it commits the sample
            self._pending[sha] = size
            self.counts.kept += 1
            if record["source"] == "label":
                self.counts.labelled += 1
            else:
                self.counts.hard += 1
            self._save_counts()
        self.wake.set()
        return KeptSample(sha, key, private, duplicate=False)

    def _merge(self, sha: str, key: str, record: dict, private: bool) -> KeptSample:
        """The same pixels again: a label is added and private sticks; the record re-uploads."""
        path = self.folder / f"{sha}.json"
        meta = json.loads(path.read_text())
        changed = private and not meta["private"]
        if record["source"] == "label" and (meta["source"], meta["label"]) != (
            "label",
            record["label"],
        ):
            if meta["source"] != "label":
                self.counts.labelled += 1
            meta.update(source="label", label=record["label"])
            changed = True
        if not changed:
            return KeptSample(sha, key, meta["private"], duplicate=True)
        meta["private"] = meta["private"] or private
        _write_atomic(path, (json.dumps(meta, indent=1) + "\n").encode())
        self._pending[sha] = path.stat().st_size + (self.folder / f"{sha}.npy").stat().st_size
        if self._marker(sha, EDGE).exists():
            self._marker(sha, EDGE).unlink()
            self.counts.uploaded_edge -= 1  # it is counted again when the new record lands
        if self._marker(sha, CLOUD).exists():
            self._marker(sha, CLOUD).unlink()
            self.counts.synced_cloud -= 1
            if meta["private"]:
                self._marker(sha, RETRACT).touch()
        self._save_counts()
        self.wake.set()
        return KeptSample(sha, key, meta["private"], duplicate=True)

    def _make_room(self, size: int, evict: bool) -> None:
        cap, used = self.config.max_bytes, sum(self._pending.values())
        if used + size <= cap:
            return
        if evict:
            for sha in list(self._pending):
                if used + size <= cap:
                    break
                meta = json.loads((self.folder / f"{sha}.json").read_text())
                if meta["source"] == "hard" and not self._marker(sha, RETRACT).exists():
                    used -= self._pending[sha]
                    self._remove(sha)
                    self.counts.dropped += 1
        if used + size > cap:
            raise StorageFullError(
                f"edge storage is full: {used} of {cap} bytes (SIGDL_EDGE_SAMPLES_MAX_BYTES) "
                "hold samples not yet uploaded"
            )

    # --- what the uploader sees ---------------------------------------------------------------
    def _marker(self, sha: str, what: str) -> Path:
        return self.folder / f"{sha}.{what}"

    def owed(self, destination: str) -> list[str]:
        """Pending samples `destination` (EDGE, CLOUD or RETRACT) still needs, oldest first."""
        with self._lock:
            shas = list(self._pending)
        out = []
        for sha in shas:
            try:
                if destination == RETRACT:
                    if self._marker(sha, RETRACT).exists():
                        out.append(sha)
                elif not self._marker(sha, destination).exists() and not (
                    destination == CLOUD and self.meta(sha)["private"]
                ):
                    out.append(sha)
            except FileNotFoundError:
                continue  # evicted meanwhile
        return out

    def meta(self, sha: str) -> dict:
        return json.loads((self.folder / f"{sha}.json").read_text())

    def files(self, sha: str) -> tuple[bytes, bytes]:
        """The .npy and .json bytes of a pending sample."""
        return (self.folder / f"{sha}.npy").read_bytes(), (self.folder / f"{sha}.json").read_bytes()

    def mark(self, sha: str, destination: str) -> None:
        """`destination` holds the sample (or, RETRACT, the cloud no longer does); delete the
        local copy once every destination it is owed has it."""
        with self._lock:
            if sha not in self._pending:
                return
            if destination == RETRACT:
                self._marker(sha, RETRACT).unlink(missing_ok=True)
                self.counts.retracted_cloud += 1
            elif destination == CLOUD and self.meta(sha)["private"]:
                # made private while it was on its way: take it back from the cloud store
                self._marker(sha, RETRACT).touch()
            else:
                self._marker(sha, destination).touch()
                if destination == EDGE:
                    self.counts.uploaded_edge += 1
                else:
                    self.counts.synced_cloud += 1
            if self._done(sha):
                self._remove(sha)
            self._save_counts()

    def discard_corrupt(self, sha: str, reason: str) -> None:
        with self._lock:
            self._remove(sha)
        self.reject(reason)

    def _done(self, sha: str) -> bool:
        """Every destination the sample is owed has it. One owed nowhere (no store set, or
        private with no edge store) stays on the device: it is nowhere else."""
        if self._marker(sha, RETRACT).exists():
            return False
        owed = [EDGE] if self.config.edge_uri else []
        if self.config.cloud_uri and not self.meta(sha)["private"]:
            owed.append(CLOUD)
        return bool(owed) and all(self._marker(sha, d).exists() for d in owed)

    def _remove(self, sha: str) -> None:
        self._pending.pop(sha, None)
        # the record first: a crash half-way leaves an .npy without .json, which is not pending
        for suffix in ("json", "npy", EDGE, CLOUD, RETRACT):
            (self.folder / f"{sha}.{suffix}").unlink(missing_ok=True)

    def _save_counts(self) -> None:
        _write_atomic(self.folder / COUNTERS, json.dumps(asdict(self.counts)).encode())

    def upload_error(self, destination: str | None, reason: str | None) -> None:
        with self._lock:
            self.counts.last_upload_error = reason and {
                "destination": destination,
                "reason": one_line(reason, 300),
                "at": now(),
            }

    def status(self) -> dict:
        """The counts `sigdl fleet status` shows per agent."""
        with self._lock:
            pending, pending_bytes = len(self._pending), sum(self._pending.values())
            counts = asdict(self.counts)
        return {
            **counts,
            "pending": pending,
            "pending_bytes": pending_bytes,
            "max_bytes": self.config.max_bytes,
            "edge_store": self.config.edge_uri,
            "cloud_store": self.config.cloud_uri,
        }


# --- uploading ---------------------------------------------------------------------------------
@dataclass
class TokenBucket:
    """A bandwidth limit: `take(n)` returns once n bytes fit in `rate` bytes/s on average.

    Tokens may go negative (a take bigger than the burst borrows); the next taker waits for
    the debt to be paid, so the long-run rate holds whatever the chunk sizes."""

    rate: float  # bytes per second; 0 means unlimited
    burst: float = THROTTLE_CHUNK  # bytes that may go at once after an idle spell
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _tokens: float = field(default=0.0, init=False)
    _last: float | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def take(self, n: int) -> None:
        if self.rate <= 0 or n <= 0:
            return
        with self._lock:
            t = self.clock()
            if self._last is None:
                self._tokens = self.burst
            else:
                self._tokens = min(self.burst, self._tokens + (t - self._last) * self.rate)
            self._last = t
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)


class ThrottledReader:
    """A byte stream whose reads take their size from a token bucket first."""

    def __init__(self, data: bytes, bucket: TokenBucket) -> None:
        self._data, self._at, self._bucket = data, 0, bucket

    def read(self, n: int = -1) -> bytes:
        n = THROTTLE_CHUNK if n is None or n < 0 else min(n, THROTTLE_CHUNK)
        chunk = self._data[self._at : self._at + n]
        self._bucket.take(len(chunk))  # what is sent, not what was asked for
        self._at += len(chunk)
        return chunk


class Uploader:
    """Moves pending samples to the edge site's store and the cloud store."""

    def __init__(self, samples: SampleStore, bucket: TokenBucket | None = None) -> None:
        self.samples = samples
        self.config = samples.config
        self.bucket = bucket or TokenBucket(self.config.bytes_per_s)
        self.failures = 0  # upload passes in a row that failed somewhere

    def run_once(self) -> bool:
        """One pass: retractions, then edge uploads, then cloud syncs. True when every owed
        destination was reached (nothing left that can be done now)."""
        ok = True
        passes = [
            (RETRACT, self.config.cloud_uri),
            (EDGE, self.config.edge_uri),
            (CLOUD, self.config.cloud_uri),
        ]
        for destination, prefix in passes:
            if prefix is None:
                continue
            try:
                for sha in self.samples.owed(destination):
                    self._send(sha, destination, prefix)
            except (store.StoreError, OSError) as exc:
                self.samples.upload_error(destination, f"{type(exc).__name__}: {exc}")
                ok = False
        if ok:
            self.samples.upload_error(None, None)
        self.failures = 0 if ok else self.failures + 1
        return ok

    def _send(self, sha: str, destination: str, prefix: str) -> None:
        npy_uri = f"{prefix}/{sample_key(self.config.fleet, self.config.target, sha)}"
        json_uri = npy_uri[: -len(".npy")] + ".json"
        if destination == RETRACT:
            store.delete(json_uri)
            store.delete(npy_uri)
            self.samples.mark(sha, RETRACT)
            return
        try:
            data, meta = self.samples.files(sha)
        except FileNotFoundError:
            return  # evicted since it was listed
        if destination == CLOUD and json.loads(meta)["private"]:
            return  # made private since it was listed
        if hashlib.sha256(data).hexdigest() != sha:
            self.samples.discard_corrupt(sha, f"sample {sha[:16]}... is corrupt on disk: dropped")
            return
        # content-addressed: an object at this key holds these bytes (a retry skips them)
        if not store.exists(npy_uri):
            sent = store.put_stream(npy_uri, ThrottledReader(data, self.bucket), len(data))
            if sent != sha:
                raise store.StoreError(f"{npy_uri!r}: sent sha256 {sent[:16]}..., expected {sha}")
        store.put_stream(json_uri, ThrottledReader(meta, self.bucket), len(meta))
        self.samples.mark(sha, destination)

    def backoff_s(self) -> float:
        if self.failures == 0:
            return IDLE_WAIT_S
        return min(RETRY_BASE_S * 2 ** (self.failures - 1), RETRY_MAX_S)

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # never let the uploader die: samples wait on disk
                self.samples.upload_error(None, f"{type(exc).__name__}: {exc}")
                self.failures += 1
            wait = self.backoff_s()
            if self.failures == 0:
                self.samples.wake.wait(wait)
            else:
                stop.wait(wait)  # a failing store is not hammered by new samples
            self.samples.wake.clear()
