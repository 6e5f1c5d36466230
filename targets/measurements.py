"""Published latencies of real boards: `targets/measurements/<target>.yaml`, checked on load.

Each file lists batch-1 figures copied from a public source (a URL or a paper's table, with the
quoted row). An entry's `role` says what it may be used for:

- `fit`: a model outside the SigDL zoo; the only figures a target's latency fit may read.
- `validation`: a zoo model (sigdl/core/zoo.py); never read by a fit, only compared against.

A zoo model marked `fit` or a non-zoo model marked `validation` is refused, so a fit that reads
`fit_set(target)` can never see the validation set.

    from targets.measurements import fit_set, validation_set
    for m in fit_set("jetson-tx2"):
        print(m.model, m.precision, m.latency_ms, m.source.url)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

# the two leaf modules every loader of ours shares (they import nothing else of SigDL)
from sigdl.core.errors import InputError, short
from sigdl.core.yamlio import load_yaml_file

HERE = Path(__file__).resolve().parent / "measurements"
ROLES = ("fit", "validation")
PRECISIONS = ("fp32", "fp16", "int8")
STATISTICS = ("mean", "median", "min")
# The zoo's names and aliases (sigdl/core/zoo.py; a test keeps the two equal). Listed here
# because targets/ imports nothing of ours but the leaf modules, and the zoo imports torch.
ZOO_MODELS = (
    "alexnet", "lenet-300-100", "lenet-5", "mobilenet-v1", "mobilenet", "mobilenet-v2",
    "squeezenet-1.0", "squeezenet", "squeezenet-1.1", "vgg-16", "vgg16",
)  # fmt: skip
_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")
_ENTRY_KEYS = {
    "model", "role", "runtime", "precision", "threads", "batch", "input_shape", "latency_ms",
    "statistic", "clock", "note", "source",
}  # fmt: skip


class MeasurementError(InputError):
    """A measurements file that is missing, malformed or breaks the fit/validation split."""


@dataclass(frozen=True)
class Source:
    """Where a figure was published."""

    quote: str  # the table row or sentence the figure was copied from
    url: str | None = None  # the page or repository file (pinned to a commit where possible)
    citation: str | None = None  # a paper's title, venue and table/figure, when no URL


@dataclass(frozen=True)
class Measurement:
    """One published batch-`batch` latency of `model` on the file's target."""

    target: str  # profile name, e.g. "arm-cortex-a72"
    model: str  # lower-case architecture name, e.g. "resnet-18"; a zoo name for validation
    role: str  # "fit" or "validation"
    runtime: str  # inference runtime, e.g. "ncnn", "tensorrt", "ncsdk"
    precision: str  # "fp32", "fp16" or "int8"
    threads: int  # CPU threads (for an accelerator, the host threads driving it)
    batch: int  # images per inference
    input_shape: tuple[int, ...]  # (N, C, H, W) with N == batch
    latency_ms: float  # the published latency of one inference
    source: Source
    statistic: str | None = None  # "mean", "median" or "min" where the source says
    clock: str | None = None  # board, clock or power mode where the source says
    note: str | None = None  # how the figure was taken, caveats

    @property
    def is_zoo(self) -> bool:
        return is_zoo_model(self.model)


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", name.lower())


def is_zoo_model(name: str) -> bool:
    """Whether `name` (case, '-' and '_' ignored) is a zoo model's name or alias."""
    return _normal(name) in {_normal(zoo) for zoo in ZOO_MODELS}


def target_names() -> list[str]:
    """Every target with a shipped measurements file, sorted."""
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def _fail(where: str, field: str, expected: str, got: object) -> MeasurementError:
    return MeasurementError(f"{where}: field {field!r}: expected {expected}, got {short(got)}")


def _text(data: dict, key: str, where: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, key, "a non-empty string", value)
    return value


def _count(data: dict, key: str, where: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(where, key, "an integer >= 1", value)
    return value


def _choice(data: dict, key: str, where: str, allowed: tuple[str, ...], required=True):
    value = data.get(key)
    if value is None and not required:
        return None
    if value not in allowed:
        raise _fail(where, key, f"one of {', '.join(allowed)}", value)
    return value


def _source(data: object, where: str) -> Source:
    if not isinstance(data, dict):
        raise _fail(where, "source", "a mapping with url or citation, and quote", data)
    unknown = set(data) - {"url", "citation", "quote"}
    if unknown:
        raise _fail(where, "source", "only url, citation and quote", sorted(map(str, unknown)))
    url = _text(data, "url", f"{where}.source", required=False)
    citation = _text(data, "citation", f"{where}.source", required=False)
    if url is None and citation is None:
        raise _fail(where, "source", "a url or a citation", data)
    if url is not None and not url.startswith(("https://", "http://")):
        raise _fail(f"{where}.source", "url", "an http(s) URL", url)
    quote = _text(data, "quote", f"{where}.source")
    return Source(quote=quote, url=url, citation=citation)


def _entry(data: object, target: str, where: str) -> Measurement:
    if not isinstance(data, dict):
        raise MeasurementError(f"{where}: expected a mapping, got {short(data)}")
    unknown = set(data) - _ENTRY_KEYS
    if unknown:
        raise MeasurementError(f"{where}: unknown fields {short(sorted(map(str, unknown)))}")
    model = _text(data, "model", where)
    if not _NAME.match(model):
        raise _fail(where, "model", "a lower-case name such as 'resnet-18'", model)
    role = _choice(data, "role", where, ROLES)
    if role == "fit" and is_zoo_model(model):
        raise MeasurementError(
            f"{where}: zoo model {model!r} is marked 'fit'; zoo models are the validation set"
        )
    if role == "validation" and not is_zoo_model(model):
        raise MeasurementError(
            f"{where}: {model!r} is not a zoo model but is marked 'validation'; use 'fit'"
        )
    batch = _count(data, "batch", where)
    shape = data.get("input_shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)
        or shape[0] != batch
    ):
        expected = "[N, C, H, W] of positive integers with N == batch"
        raise _fail(where, "input_shape", expected, shape)
    latency = data.get("latency_ms")
    if isinstance(latency, bool) or not isinstance(latency, int | float) or not latency > 0:
        raise _fail(where, "latency_ms", "a positive number", latency)
    return Measurement(
        target=target,
        model=model,
        role=role,
        runtime=_text(data, "runtime", where),
        precision=_choice(data, "precision", where, PRECISIONS),
        threads=_count(data, "threads", where),
        batch=batch,
        input_shape=tuple(shape),
        latency_ms=float(latency),
        source=_source(data.get("source"), where),
        statistic=_choice(data, "statistic", where, STATISTICS, required=False),
        clock=_text(data, "clock", where, required=False),
        note=_text(data, "note", where, required=False),
    )


def load_file(path: str | Path) -> list[Measurement]:
    """Read and check one measurements file; MeasurementError names the first bad field."""
    path = Path(path)
    try:
        data = load_yaml_file(path)
    except InputError as exc:
        raise MeasurementError(str(exc)) from None
    if not isinstance(data, dict) or set(data) != {"target", "board", "entries"}:
        raise MeasurementError(f"{path}: expected a mapping with exactly target, board and entries")
    target = _text(data, "target", str(path))
    if target != path.stem:
        raise _fail(str(path), "target", f"{path.stem!r} (the file name)", target)
    _text(data, "board", str(path))
    entries = data["entries"]
    if not isinstance(entries, list) or not entries:
        raise _fail(str(path), "entries", "a non-empty list", entries)
    return [_entry(e, target, f"{path}: entries[{i}]") for i, e in enumerate(entries)]


@functools.cache
def _load_cached(target: str) -> tuple[Measurement, ...]:
    if target not in target_names():  # never a path: '../x'
        known = ", ".join(target_names())
        raise MeasurementError(f"no measurements for target {short(target)}; available: {known}")
    return tuple(load_file(HERE / f"{target}.yaml"))


def measurements(target: str) -> list[Measurement]:
    """Every published figure for `target` (a profile name without a power mode)."""
    return list(_load_cached(str(target).strip().lower()))


def fit_set(target: str) -> list[Measurement]:
    """The figures a latency fit of `target` may read: non-zoo models only."""
    return [m for m in measurements(target) if m.role == "fit"]


def validation_set(target: str) -> list[Measurement]:
    """The zoo models' figures on `target`: for comparison, never for a fit."""
    return [m for m in measurements(target) if m.role == "validation"]
