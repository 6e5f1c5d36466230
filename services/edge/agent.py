"""The edge agent's logic: follow a fleet's `current` pointer, verify, swap, predict, report.

    agent = EdgeAgent(AgentConfig.from_settings("lab", "arm-cortex-a53", "s3://artifacts"))
    agent.poll_once()             # 'loaded', 'unchanged', 'refused' or 'error'
    agent.predict(pixels)         # float32 (N, C, H, W) in [0, 1] -> Prediction

`sigdl edge-agent` (services/edge/server.py) runs `poll_forever` in a thread and serves
`predict` over gRPC. What a poll does, in order, refusing the new version at the first failure:

1. read `<store>/fleets/<fleet>/<target>/current` (services/deploy/fleet.py writes it); a
   canary agent (SIGDL_AGENT_CANARY) reads `canary` first and `current` only when there is no
   canary, so a canary rolled back (its pointer removed) sends it back to `current`;
2. download the version's `manifest.json` and `signature`; the manifest's sha256 must be the
   one the pointer names, and the signature must verify under the trusted public key
   (SIGDL_VERIFY_KEY) over the manifest's exact bytes;
3. the manifest must be a package for this fleet, target and version, readable by this agent
   (`min_agent_version`), listing only package files;
4. download every file it lists into a staging folder and check each sha256 and size;
5. load the model the target runs (model.int8.onnx on an int8 target when shipped, else
   model.onnx) in ONNX Runtime with the target's thread count, check the model contract and run
   it once; then swap it in with one reference assignment.

A request holds the model it started with, so in-flight requests finish on the old session
while new ones get the new one; no request waits for a swap. A refused version leaves the
model being served untouched, and is not tried again until `current` changes (a store that
cannot be reached is tried again at the next poll). The agent's status (version, health,
latency p50/p99, its last refusal) goes to `<store>/fleets/<fleet>/_agents/<target>/<id>.json`
after every poll, where `sigdl fleet status` reads it.

Every prediction the model was unsure of is kept as a hard example, and `label` keeps an
operator's labelled sample; both go to the edge site's store and, unless private, the cloud
store (services/edge/samples.py); the status gains their counts under `data`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import socket
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort

import targets
from services.edge.samples import DataConfig, KeptSample, SampleStore
from sigdl.core import __version__, onnx_io, settings, signing, store
from sigdl.core.errors import InputError, one_line, short

AGENT_VERSION = __version__
STATUS_SCHEMA_VERSION = 2  # 2: `data`, the samples acquired and where they are
# the store layout services/deploy/fleet.py writes (the contract between deploy and the edge)
POINTER = "current"
CANARY = "canary"
POINTERS = (POINTER, CANARY)  # names no version may take
MANIFEST = "manifest.json"
AGENTS = "_agents"
PACKAGE_FORMAT = "sigdl-edge-package"
PACKAGE_FILES = ("model.onnx", "model.int8.onnx", "model.sdc")
MAX_POINTER_BYTES = 1 << 20  # the pointer holds the history: small, but let it grow
MAX_MANIFEST_BYTES = 1 << 20
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
VERSION_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
LATENCY_WINDOW = 2048  # requests the latency percentiles are taken over


class PackageRefusedError(InputError):
    """The version `current` names failed a check: the agent keeps its model and says why."""


class NotReadyError(Exception):
    """No verified model is loaded yet."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        raise PackageRefusedError(f"min_agent_version {short(version)} is not a version") from None


def default_agent_id(port: int) -> str:
    host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-") or "agent"
    return f"{host[:50]}-{port}"


@dataclass(frozen=True)
class AgentConfig:
    """What one agent follows and how; `from_settings` fills the rest from SIGDL_*."""

    fleet: str  # fleet name
    target: str  # target profile name (targets/<name>.yaml): its threads and precision
    store_root: str  # store root URI the deploy side publishes under
    verify_key: Path  # Ed25519 public key (PEM) packages must be signed with
    agent_id: str  # the name its status is reported under
    cache_dir: Path  # verified packages on local disk
    poll_s: float = 5.0  # seconds between reads of `current`
    canary: bool = False  # follow the `canary` pointer while one exists

    def __post_init__(self) -> None:
        for what, value in (("fleet", self.fleet), ("agent id", self.agent_id)):
            if not NAME_RE.match(value):
                raise InputError(
                    f"{what} {short(value)} is not valid: expected lowercase letters, digits "
                    "and '-' (at most 63)"
                )
        targets.load_profile(self.target)  # an unknown target lists the known ones
        if not math.isfinite(self.poll_s) or self.poll_s <= 0:
            raise InputError(f"poll interval {self.poll_s} s: expected a positive number")

    @classmethod
    def from_settings(cls, fleet: str, target: str, store_root: str, port: int) -> AgentConfig:
        key = settings.SIGDL_VERIFY_KEY.get()
        if key is None:
            raise InputError(
                "the edge agent needs SIGDL_VERIFY_KEY: the public key (signing.pub of "
                "`sigdl keys generate`) whose signatures it accepts"
            )
        # port 0 (a free one, chosen later) cannot name the agent: its process id does
        agent_id = settings.SIGDL_AGENT_ID.get() or default_agent_id(port or os.getpid())
        root = store.as_uri(store_root).rstrip("/")
        return cls(
            fleet=fleet, target=target, store_root=root, verify_key=key, agent_id=agent_id,
            cache_dir=settings.SIGDL_HOME.get() / "edge" / agent_id,
            poll_s=settings.SIGDL_AGENT_POLL_S.get(), canary=settings.SIGDL_AGENT_CANARY.get(),
        )  # fmt: skip

    @property
    def prefix(self) -> str:
        return f"{self.store_root}/fleets/{self.fleet}/{self.target}"

    @property
    def status_uri(self) -> str:
        return f"{self.store_root}/fleets/{self.fleet}/{AGENTS}/{self.target}/{self.agent_id}.json"


@dataclass(frozen=True)
class LoadedModel:
    """One verified package version, loaded and ready to answer."""

    version: str
    manifest_sha256: str
    model_file: str  # which file of the package runs
    session: ort.InferenceSession
    input_shape: tuple[int, int, int]  # (C, H, W)
    threads: int
    folder: Path  # the verified files on local disk
    loaded_at: str

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return onnx_io.predict(self.session, pixels)  # (N, classes)


@dataclass(frozen=True)
class Prediction:
    logits: np.ndarray  # (N, classes) float32
    top1: np.ndarray  # (N,) int64
    top1_probability: np.ndarray  # (N,) float32
    version: str
    manifest_sha256: str


class LatencyWindow:
    """The last LATENCY_WINDOW request latencies, for p50/p99."""

    def __init__(self) -> None:
        self._ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._lock = threading.Lock()
        self.requests = 0
        self.failed = 0

    def add(self, ms: float) -> None:
        with self._lock:
            self._ms.append(ms)
            self.requests += 1

    def fail(self) -> None:
        with self._lock:
            self.failed += 1

    def summary(self) -> dict:
        with self._lock:
            values = np.array(self._ms, dtype=np.float64)
        if values.size == 0:
            return {"p50": None, "p99": None, "window": 0}
        p50, p99 = np.percentile(values, [50, 99])
        return {"p50": round(float(p50), 4), "p99": round(float(p99), 4), "window": values.size}


@dataclass
class AgentStatus:
    """What an agent reports: in its status file, and by the EdgeInferenceService Status RPC."""

    agent_id: str
    fleet: str
    target: str
    agent_version: str
    health: str  # SERVING once a verified model is loaded, else NOT_SERVING; STOPPED at exit
    version: str | None  # the package version being served
    manifest_sha256: str | None
    model_file: str | None
    threads: int | None
    loaded_at: str | None
    requests: int
    failed_requests: int
    latency_ms: dict  # {"p50", "p99", "window"} over the last requests
    last_refusal: dict | None  # {"version", "reason", "at"} of the last version refused
    last_error: dict | None  # {"reason", "at"}: the store could not be read (tried again)
    address: str | None  # host:port it serves on
    updated: str
    schema_version: int = STATUS_SCHEMA_VERSION
    swaps: list[dict] = field(default_factory=list)  # the last few swaps and their duration
    data: dict | None = None  # samples kept, uploaded, synced, pending, rejected (samples.py)
    canary: bool = False  # a canary agent: it follows the `canary` pointer while one exists

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


class EdgeAgent:
    """Follows one fleet/target in one store and serves its current verified model."""

    def __init__(
        self, config: AgentConfig, address: str | None = None, data: DataConfig | None = None
    ) -> None:
        self.config = config
        data = data or DataConfig.from_settings(
            config.fleet, config.target, config.agent_id, config.cache_dir / "samples"
        )
        self.samples = SampleStore(data)
        self.address = address
        self.public_key = signing.load_public_key(config.verify_key)
        profile = targets.load_profile(config.target)
        self.threads = max(1, min(int(profile["compute"]["cores"]), os.cpu_count() or 1))
        self.precision = profile["native_precision"]
        self.latency = LatencyWindow()
        self._model: LoadedModel | None = None
        self._seen_pointer: str | None = None  # sha256 of the pointer last acted on
        self._last_refusal: dict | None = None
        self._last_error: dict | None = None
        self._swaps: deque[dict] = deque(maxlen=5)
        self._poll_lock = threading.Lock()
        self.on_swap: list = []  # callables(LoadedModel), e.g. the server's health update
        self.stopped = False  # set by the server on shutdown: reported as health STOPPED

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    # --- following `current` ------------------------------------------------------------------
    def poll_once(self) -> str:
        """Read `current` and act on it: 'unchanged', 'loaded', 'refused' or 'error'."""
        with self._poll_lock:
            outcome = self._poll()
        self.write_status()
        return outcome

    def _poll(self) -> str:
        try:
            raw = self._read_pointer()
        except store.ArtifactNotFoundError:
            return "unchanged"  # nothing published yet
        except (store.StoreError, OSError) as exc:
            self._last_error = {"reason": one_line(str(exc), 300), "at": now()}
            return "error"
        pointer_digest = hashlib.sha256(raw).hexdigest()
        if pointer_digest == self._seen_pointer:
            return "unchanged"
        version = None
        try:
            pointer = _parse_json(raw, "the current pointer")
            version = _pointer_version(pointer)
            if self._model is not None and (version, pointer.get("manifest_sha256")) == (
                self._model.version,
                self._model.manifest_sha256,
            ):
                self._seen_pointer = pointer_digest  # e.g. a rollback back to what we serve
                return "unchanged"
            started = time.perf_counter()
            loaded = self._install(pointer, version)
        except (PackageRefusedError, store.ArtifactNotFoundError, InputError) as exc:
            if isinstance(exc, store.StoreError) and not isinstance(
                exc, store.ArtifactNotFoundError
            ):
                self._last_error = {"reason": one_line(str(exc), 300), "at": now()}
                return "error"  # the store failed us, not the package: try again next poll
            self._seen_pointer = pointer_digest
            reason = one_line(str(exc), 500)
            self._last_refusal = {"version": version, "reason": reason, "at": now()}
            return "refused"
        except OSError as exc:
            self._last_error = {"reason": one_line(str(exc), 300), "at": now()}
            return "error"
        previous, self._model = self._model, loaded  # the swap: one reference assignment
        self._swaps.append({"version": loaded.version, "from": previous and previous.version,
                            "load_ms": round((time.perf_counter() - started) * 1e3, 2),
                            "at": loaded.loaded_at})  # fmt: skip
        self._seen_pointer = pointer_digest
        self._last_error = None
        for callback in self.on_swap:
            callback(loaded)
        if previous is not None and previous.folder != loaded.folder:
            shutil.rmtree(previous.folder, ignore_errors=True)  # its session is in memory
        return "loaded"

    def _read_pointer(self) -> bytes:
        """The bytes of the pointer this agent follows now: `canary` while a canary agent finds
        one, else `current`."""
        if self.config.canary:
            with contextlib.suppress(store.ArtifactNotFoundError):
                return _read_capped(f"{self.config.prefix}/{CANARY}", MAX_POINTER_BYTES)
        return _read_capped(f"{self.config.prefix}/{POINTER}", MAX_POINTER_BYTES)

    def _install(self, pointer: dict, version: str) -> LoadedModel:
        """Download, verify and load `version`; raise PackageRefusedError saying what failed."""
        prefix = f"{self.config.prefix}/{version}"
        manifest_bytes = _read_capped(f"{prefix}/{MANIFEST}", MAX_MANIFEST_BYTES)
        manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
        if manifest_sha256 != pointer.get("manifest_sha256"):
            raise PackageRefusedError(
                f"{version}: manifest.json has sha256 {manifest_sha256[:16]}..., but `current` "
                f"names {short(pointer.get('manifest_sha256'))}"
            )
        try:
            signature = _read_capped(f"{prefix}/{signing.SIGNATURE}", signing.MAX_SIGNATURE_BYTES)
        except store.ArtifactNotFoundError:
            raise PackageRefusedError(f"{version} is unsigned (no signature file)") from None
        try:
            signing.verify(manifest_bytes, signature, self.public_key)
        except signing.SignatureError as exc:
            raise PackageRefusedError(f"{version}: {exc}") from None
        manifest = _parse_json(manifest_bytes, "manifest.json")
        files = self._check_manifest(manifest, version)
        self.config.cache_dir.mkdir(parents=True, exist_ok=True)
        folder = self.config.cache_dir / f"{version}-{manifest_sha256[:12]}"
        staging = self.config.cache_dir / f".staging-{os.getpid()}-{time.monotonic_ns()}"
        try:
            for name, entry in files.items():
                got = store.get_file(f"{prefix}/{name}", staging / name)
                size = (staging / name).stat().st_size
                if (got, size) != (entry["sha256"], entry["size"]):
                    raise PackageRefusedError(
                        f"{version}: {name} has sha256 {got[:16]}... ({size} bytes), but the "
                        f"signed manifest says {entry['sha256'][:16]}... ({entry['size']} bytes)"
                    )
            model_file = self._model_file(files)
            loaded = self._load(staging, model_file, version, manifest_sha256, folder)
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return loaded

    def _check_manifest(self, manifest: dict, version: str) -> dict[str, dict]:
        expected = {"format": PACKAGE_FORMAT, "fleet": self.config.fleet,
                    "target": self.config.target, "version": version}  # fmt: skip
        for key, value in expected.items():
            if manifest.get(key) != value:
                raise PackageRefusedError(
                    f"{version}: the manifest's {key} is {short(manifest.get(key))}, expected "
                    f"{value!r}"
                )
        needed = str(manifest.get("min_agent_version", "0"))
        if _version_tuple(needed) > _version_tuple(AGENT_VERSION):
            raise PackageRefusedError(
                f"{version} needs agent {needed} or newer; this agent is {AGENT_VERSION}"
            )
        files = manifest.get("files")
        if not isinstance(files, dict) or "model.onnx" not in files:
            raise PackageRefusedError(f"{version}: the manifest lists no model.onnx")
        for name, entry in files.items():
            if name not in PACKAGE_FILES:
                raise PackageRefusedError(
                    f"{version}: the manifest lists {short(name)}, not a package file"
                )
            ok = isinstance(entry, dict) and SHA256_RE.match(str(entry.get("sha256", "")))
            if not ok or not isinstance(entry.get("size"), int) or entry["size"] < 0:
                raise PackageRefusedError(f"{version}: the manifest's entry of {name} is malformed")
        return files

    def _model_file(self, files: dict) -> str:
        return (
            "model.int8.onnx"
            if self.precision == "int8" and "model.int8.onnx" in files
            else ("model.onnx")
        )

    def _load(
        self, staging: Path, model_file: str, version: str, manifest_sha256: str, folder: Path
    ) -> LoadedModel:
        try:
            session = onnx_io.session(staging / model_file, self.threads)
            names = (
                [i.name for i in session.get_inputs()],
                [o.name for o in session.get_outputs()],
            )
            if names != ([onnx_io.INPUT], [onnx_io.OUTPUT]):
                raise InputError(f"its inputs/outputs are {names}, not pixels -> logits")
            shape = onnx_io.input_shape(session)
            onnx_io.predict(session, np.zeros((1, *shape), np.float32))  # it runs, and is warm
        except InputError as exc:
            raise PackageRefusedError(f"{version}: {model_file} cannot be served: {exc}") from None
        return LoadedModel(version, manifest_sha256, model_file, session, shape, self.threads,
                           folder, now())  # fmt: skip

    def poll_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # never let the poller die: the model must keep serving
                self._last_error = {"reason": one_line(f"{type(exc).__name__}: {exc}", 300),
                                    "at": now()}  # fmt: skip
            stop.wait(self.config.poll_s)

    # --- serving ------------------------------------------------------------------------------
    def predict(self, pixels: np.ndarray, private: bool | None = None) -> Prediction:
        """Logits, top-1 and its probability for (N, C, H, W) or (C, H, W) pixels. Inputs the
        model is unsure of are kept as hard examples (`private` None: the agent's default)."""
        started = time.perf_counter()
        model = self._model  # one read: this request runs on this model, whatever swaps
        if model is None:
            raise NotReadyError("no verified model is loaded yet")
        try:
            batch = check_pixels(pixels, model.input_shape)
            logits = model.run(batch)
        except Exception:
            self.latency.fail()
            raise
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        top1 = probabilities.argmax(axis=1)
        with contextlib.suppress(OSError):  # a failing disk costs the sample, not the answer
            self.samples.keep_hard(
                batch, probabilities, model.version, model.manifest_sha256, private
            )
        self.latency.add((time.perf_counter() - started) * 1e3)
        return Prediction(logits.astype(np.float32), top1.astype(np.int64),
                          probabilities[np.arange(len(top1)), top1].astype(np.float32),
                          model.version, model.manifest_sha256)  # fmt: skip

    def label(self, pixels: np.ndarray, label: int, private: bool | None = None) -> KeptSample:
        """Keep an operator's labelled sample, checked against the served model's input."""
        model = self._model
        if model is None:
            raise NotReadyError("no verified model is loaded yet: samples are checked against it")
        classes = model.session.get_outputs()[0].shape[-1]
        return self.samples.label(
            pixels,
            label,
            private,
            model.version,
            model.manifest_sha256,
            model.input_shape,
            classes if isinstance(classes, int) else None,
        )

    # --- reporting ----------------------------------------------------------------------------
    def status(self) -> AgentStatus:
        model = self._model
        health = "STOPPED" if self.stopped else "SERVING" if model else "NOT_SERVING"
        return AgentStatus(
            agent_id=self.config.agent_id, fleet=self.config.fleet, target=self.config.target,
            agent_version=AGENT_VERSION, health=health,
            version=model and model.version, manifest_sha256=model and model.manifest_sha256,
            model_file=model and model.model_file, threads=model and model.threads,
            loaded_at=model and model.loaded_at, requests=self.latency.requests,
            failed_requests=self.latency.failed, latency_ms=self.latency.summary(),
            last_refusal=self._last_refusal, last_error=self._last_error, address=self.address,
            updated=now(), swaps=list(self._swaps), data=self.samples.status(),
            canary=self.config.canary,
        )  # fmt: skip

    def write_status(self) -> None:
        """Report to the store; a store that is down now is reported to at the next poll."""
        with contextlib.suppress(store.StoreError, OSError):
            store.put_bytes(self.config.status_uri, self.status().to_json().encode())


def check_pixels(pixels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A (N, C, H, W) float32 batch of the model's C, H, W, or InputError naming what is off."""
    batch = pixels[None] if pixels.ndim == 3 else pixels
    if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(shape) or batch.shape[0] < 1:
        raise InputError(
            f"pixels of shape {list(pixels.shape)}: expected [C, H, W] or [N, C, H, W] with "
            f"C, H, W = {list(shape)}"
        )
    if not np.isfinite(batch).all():
        raise InputError("pixels hold NaN or infinite values: expected values in [0, 1]")
    return batch


def _read_capped(uri: str, limit: int) -> bytes:
    with store.open_read(uri) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise PackageRefusedError(f"{uri!r} is over {limit} bytes: not what SigDL publishes there")
    return data


def _parse_json(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PackageRefusedError(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise PackageRefusedError(f"{what} is not a JSON object")
    return obj


def _pointer_version(pointer: dict) -> str:
    version = pointer.get("version")
    if not isinstance(version, str) or not VERSION_RE.match(version) or version in POINTERS:
        raise PackageRefusedError(f"the pointer names {short(version)}: not a version")
    return version
