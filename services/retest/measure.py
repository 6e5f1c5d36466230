"""Measured latency on this machine, MLPerf single-stream style.

One query is one batch-1 inference; after a warm-up the queries run back to back until both a
minimum count and a minimum duration are reached, and the 90th percentile is the result
(MLPerf Inference's single-stream metric). Threads are pinned (intra-op N, inter-op 1) and the
graph optimizations are ONNX Runtime's defaults, as in every SigDL session.

    stats = single_stream(onnx_bytes, threads=1, min_queries=200, min_seconds=2.0)
    with pinned(emulation_cpus(2)) as cpus:   # an x86 target's 2 cores, on 2 host CPUs
        stats = single_stream(onnx_bytes, threads=len(cpus))
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sigdl.core import onnx_io, settings
from sigdl.core.errors import InputError

# ONNX Runtime's input types a measurement can feed, and the numpy type it feeds them as
FEED_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}  # fmt: skip


@dataclass
class LatencyStats:
    """Single-stream latency of one model at one thread count."""

    threads: int  # ORT intra-op threads
    queries: int  # timed queries (after warm-up)
    p50_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float

    def to_json(self) -> dict:
        return asdict(self)


def open_session(
    model: bytes, threads: int, seed: int = 0, profile_prefix: str | None = None
) -> tuple[object, dict]:
    """A session of `model` (ONNX bytes) with pinned threads (and ONNX Runtime's per-node
    profiling when `profile_prefix` is given), and a batch-1 feed: random pixels in [0, 1]
    for a float input, random pixel values 0..255 for an integer one (a model that takes
    uint8 images), for every input the model has."""
    sess = onnx_io.session_from_bytes(model, threads, profile_prefix)
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in sess.get_inputs():
        shape = [1 if not isinstance(d, int) else d for d in inp.shape]
        dtype = FEED_TYPES.get(inp.type)
        if dtype is None:
            raise InputError(
                f"model input {inp.name!r} is {inp.type}: expected a float or "
                f"integer tensor ({', '.join(FEED_TYPES)})"
            )
        pixels = rng.random(shape, dtype=np.float32)
        feed[inp.name] = (pixels * 255).round() if np.dtype(dtype).kind in "iub" else pixels
        feed[inp.name] = feed[inp.name].astype(dtype)
    return sess, feed


def query_times(
    sess,
    feed: dict,
    *,
    warmup: int = 5,
    warmup_seconds: float = 0.0,
    min_queries: int = 100,
    min_seconds: float = 1.0,
    max_queries: int = 100_000,
    before_each: Callable[[], object] | None = None,
) -> np.ndarray:
    """Milliseconds of each timed query: untimed warm-up queries until both `warmup` of them
    and `warmup_seconds` are done, then timed ones back to back until both `min_queries` and
    `min_seconds` are reached (or `max_queries`), `before_each` (untimed) before each one."""
    started, done = time.perf_counter(), 0
    while done < warmup or time.perf_counter() - started < warmup_seconds:
        sess.run(None, feed)
        done += 1
    times = []
    started = time.perf_counter()
    while len(times) < max_queries and (
        len(times) < min_queries or time.perf_counter() - started < min_seconds
    ):
        if before_each is not None:
            before_each()
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return np.asarray(times) * 1e3


_CPU_LIST = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")


def parse_cpu_list(text: str) -> list[int]:
    """CPU numbers from a list such as "0-3" or "2,3" (the kernel's cpulist format), sorted;
    InputError (one line) for anything else or an empty range."""
    if not _CPU_LIST.match(text):
        raise InputError(f"CPU list {text!r}: expected CPU numbers such as 0-3 or 2,3")
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise InputError(f"CPU list {text!r}: range {part!r} runs backwards")
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def emulation_cpus(cores: int) -> list[int]:
    """The host CPUs a measurement standing in for a target of `cores` cores is pinned to:
    the first min(cores, available) of SIGDL_EMULATION_CPUS (default: every CPU this process
    may run on). InputError (one line) when that setting names a CPU this process may not use."""
    if cores < 1:
        raise InputError(f"cores={cores}: expected a positive integer")
    allowed = sorted(os.sched_getaffinity(0))
    raw = settings.SIGDL_EMULATION_CPUS.get() or ""
    chosen = allowed
    if raw.strip():
        try:
            chosen = parse_cpu_list(raw)
        except InputError as exc:
            raise InputError(f"setting SIGDL_EMULATION_CPUS: {exc}") from None
        outside = sorted(set(chosen) - set(allowed))
        if outside:
            raise InputError(
                f"setting SIGDL_EMULATION_CPUS={raw!r}: CPU {outside[0]} is not one this process "
                f"may run on ({', '.join(map(str, allowed))})"
            )
    return chosen[:cores]


@contextlib.contextmanager
def pinned(cpus: Sequence[int]) -> Iterator[list[int]]:
    """Run the block on `cpus` only, and restore the affinity it had after. Linux applies
    sched_setaffinity(0, ...) to the calling thread, and the threads ONNX Runtime starts for
    a session created inside the block (its intra-op pool) inherit that mask, so a session
    opened here with len(cpus) intra-op threads runs on exactly these CPUs."""
    cpus = sorted(set(cpus))
    if not cpus:
        raise InputError("pinned(): expected at least one CPU")
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        raise InputError(f"cannot pin to CPUs {cpus}: {exc.strerror}") from None
    try:
        yield cpus
    finally:
        os.sched_setaffinity(0, before)


def pinned_single_stream(model: bytes, cores: int, **timing) -> tuple[LatencyStats, list[int]]:
    """Single-stream latency of `model` on the first min(cores, available) emulation CPUs,
    with as many ONNX Runtime intra-op threads as CPUs pinned; the affinity is restored after."""
    with pinned(emulation_cpus(cores)) as cpus:
        return single_stream(model, len(cpus), **timing), cpus


def node_kernels(trace: str) -> dict[str, dict]:
    """Kernel times (us) of every node in an ONNX Runtime profile trace."""
    nodes: dict[str, dict] = {}
    for event in json.loads(Path(trace).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = nodes.setdefault(event["name"], {"op": event["args"]["op_name"], "us": []})
            node["us"].append(event["dur"])
    return nodes


def summarize(ms: np.ndarray, threads: int) -> LatencyStats:
    """Single-stream statistics of query times in milliseconds."""
    return LatencyStats(
        threads, len(ms), float(np.percentile(ms, 50)), float(np.percentile(ms, 90)),
        float(ms.mean()), float(ms.min()),
    )  # fmt: skip


def single_stream(
    model: bytes,
    threads: int,
    *,
    warmup: int = 5,
    min_queries: int = 100,
    min_seconds: float = 1.0,
    max_queries: int = 100_000,
    seed: int = 0,
) -> LatencyStats:
    """Time batch-1 queries of random pixels in [0, 1] through `model` (ONNX bytes)."""
    sess, feed = open_session(model, threads, seed)
    ms = query_times(sess, feed, warmup=warmup, min_queries=min_queries,
                     min_seconds=min_seconds, max_queries=max_queries)  # fmt: skip
    return summarize(ms, threads)
