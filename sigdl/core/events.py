"""One event type for progress, from a stage function to whoever watches it.

A stage function calls `on_event(ProgressEvent(...))`; a service's job worker sends
`event.to_json()` to the job store, which keeps it and streams it in `JobEvent.data_json`; the gRPC
client reads it back with `ProgressEvent.from_json`; the CLI, the API and the pipeline print
`event.line()`. The kinds in use:

| kind | stage | done / total | figures |
| --- | --- | --- | --- |
| epoch | train, compress (retraining) | epoch / epochs | loss, train_accuracy, images_per_s |
| trainjob | train on a cluster | progress % / 100 | trainjob, phase, active, ready, succeeded |
| kubejob | compress, retest as Kubernetes Jobs | | job, phase, active, ready, succeeded, failed |
| step, round, ladder | compress | recipe step / steps | type, accuracy, sparsity, bytes |
| load, predict, measure, accuracy | retest | items / items | label |
| upload, current, unchanged | deploy | files / files | file, version, manifest_sha256 |
| log | any; job backends: work started, pod states | | (the message only) |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sigdl.core.errors import InputError

Figure = int | float | str | bool | None


@dataclass(frozen=True)
class ProgressEvent:
    """What a stage reports while it works: a kind, how far (`done` of `total`), its figures."""

    schema_version: ClassVar[int] = 1

    kind: str
    done: int | None = None
    total: int | None = None
    figures: Mapping[str, Figure] = field(default_factory=dict)
    message: str = ""

    @classmethod
    def of(
        cls, kind: str, done: int | None = None, total: int | None = None, **figures: Any
    ) -> ProgressEvent:
        """`ProgressEvent.of("epoch", 3, 10, loss=0.1)`: the figures as keywords (lists and
        dicts among them are dropped: an event carries scalars)."""
        scalars = {k: v for k, v in figures.items() if isinstance(v, int | float | str | bool)}
        return cls(kind, done, total, scalars)

    def __getitem__(self, name: str) -> Figure:
        """A figure by name (`event["loss"]`), as the dict events of earlier releases read."""
        return self.figures[name]

    def line(self) -> str:
        """One line for a person: `epoch 3/10: loss 0.1 train_accuracy 0.97`."""
        if self.message:
            return self.message
        head = self.kind + (f" {self.done}/{self.total}" if self.total else "")
        numbers = " ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in self.figures.items()
            if v is not None
        )
        return f"{head}: {numbers}" if numbers else head

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "done": self.done,
            "total": self.total,
            "figures": dict(self.figures),
            "message": self.message,
        }

    @classmethod
    def from_json(cls, data: object) -> ProgressEvent:
        """Read `to_json()` back; anything else is an InputError naming what was wrong."""
        if not isinstance(data, Mapping):
            raise InputError(f"progress event: expected a mapping, got {type(data).__name__}")
        if data.get("schema_version") != cls.schema_version:
            raise InputError(
                f"progress event schema_version={data.get('schema_version')!r}: "
                f"expected {cls.schema_version}"
            )
        kind, figures = data.get("kind"), data.get("figures") or {}
        if not isinstance(kind, str) or not kind:
            raise InputError(f"progress event kind={kind!r}: expected a non-empty string")
        if not isinstance(figures, Mapping):
            raise InputError(f"progress event figures={figures!r}: expected a mapping")
        for name in ("done", "total"):
            value = data.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise InputError(f"progress event {name}={value!r}: expected an integer or null")
        return cls(kind, data.get("done"), data.get("total"), dict(figures),
                   str(data.get("message") or ""))  # fmt: skip


EventFn = Callable[[ProgressEvent], None]


def log(message: str) -> ProgressEvent:
    """A progress event that is only a line of text."""
    return ProgressEvent("log", message=message)


def epoch_event(row: Mapping[str, Any], epochs: int | None = None) -> ProgressEvent:
    """An `epoch` event from a training row (`EpochResult.to_row()`): done is the epoch."""
    figures = {k: v for k, v in row.items() if k != "epoch"}
    return ProgressEvent.of("epoch", int(row["epoch"]), epochs, **figures)
