"""The Python API for notebooks: each stage as a function that returns a typed result.

    import sigdl

    trained = sigdl.train("lenet-5", "digits", "runs/t", epochs=3)
    small = sigdl.compress(trained.out, "deep-compression-lenet-5", "runs/c")
    checked = sigdl.retest(small.out, "arm-cortex-a53", dataset="digits", requirements=["fps>=30"])
    if checked.passed:
        sigdl.deploy(small.out, "arm-cortex-a53", "lab")
    loop = sigdl.run({"epochs": 3})  # the whole loop, as `sigdl run`

Each function calls the plain function of its stage, as the CLI does, and returns the stage's
typed report (sigdl/core/reports.py): a frozen dataclass with the headline figures typed and
the whole report.json in `.report`; `to_json()` and `from_json()` round-trip it:

    result = TrainResult.from_json(json.loads(Path("runs/t/report.json").read_text()))

`on_event` receives each ProgressEvent (sigdl/core/events.py) as the stage reports it.

The stages are imported only when a function is called, so the result types load cheaply.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sigdl.core.errors import InputError
from sigdl.core.events import EventFn
from sigdl.core.reports import CompressResult, DeployResult, RetestResult, TrainResult

if TYPE_CHECKING:
    from pipelines.controller import LoopConfig, LoopResult

__all__ = [
    "CompressResult",
    "DeployResult",
    "RetestResult",
    "TrainResult",
    "compress",
    "deploy",
    "retest",
    "run",
    "train",
]


def _folder(path: str | Path | None) -> str | None:
    return str(path) if path else None


def train(
    model: str,
    dataset: str,
    out: str | Path,
    *,
    epochs: int = 20,
    nproc: int = 1,
    data_dir: str | Path | None = None,
    on_event: EventFn | None = None,
    **options: Any,
) -> TrainResult:
    """`sigdl train`: train a zoo model; `options` are other TrainConfig fields (lr=0.01, ...)."""
    from services.training.stage import run_training
    from sigdl.core.training import TrainConfig

    cfg = TrainConfig.from_dict({"model": model, "dataset": dataset, "epochs": epochs, **options})
    report = run_training(cfg, out, nproc=nproc, data_dir=_folder(data_dir), on_event=on_event)
    return TrainResult.from_report(report)


def compress(
    checkpoint_dir: str | Path,
    recipe: str | Path,
    out: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    on_event: EventFn | None = None,
) -> CompressResult:
    """`sigdl compress`: a built-in recipe name or a YAML file; `dataset` defaults to the
    checkpoint's."""
    from services.compression.stage import run_compression

    report = run_compression(checkpoint_dir, recipe, dataset, out, data_dir=_folder(data_dir),
                             on_event=on_event)  # fmt: skip
    return CompressResult.from_report(report)


def retest(
    model: str | Path,
    target: str,
    *,
    dataset: str | None = None,
    requirements: Sequence[str] = (),
    out: str | Path | None = None,
    precision: str | None = None,
    baseline_accuracy: float | None = None,
    data_dir: str | Path | None = None,
    on_event: EventFn | None = None,
) -> RetestResult:
    """`sigdl retest`: a model.onnx, a .sdc or a train/compress folder on an emulated target.
    A failed gate is a result (`passed` False, `failures`), not an exception."""
    from services.retest.stage import run_retest

    if isinstance(requirements, str):  # one requirement given bare would split into letters
        requirements = [requirements]
    report = run_retest(
        str(model), target, Path(out) if out is not None else None, dataset=dataset,
        precision=precision, requirements=list(requirements), data_dir=data_dir,
        on_event=on_event, baseline_accuracy=baseline_accuracy,
    )  # fmt: skip
    return RetestResult.from_report(report)


def deploy(
    source: str | Path, target: str, fleet: str, *, store: str | None = None
) -> DeployResult:
    """`sigdl deploy`: package a run folder (path, file:// or s3:// URI) for `target` and make
    it the current version of `fleet` under `store` (default: $SIGDL_HOME/artifacts)."""
    from services.deploy.stage import run_deploy

    return DeployResult.from_report(run_deploy(str(source), target, fleet, store_root=store))


def run(
    config: LoopConfig | Mapping[str, Any] | str | Path | None = None,
    *,
    out: str | Path | None = None,
) -> LoopResult:
    """`sigdl run`: the whole loop locally (`sigdl serve all` on loopback, the pipeline with
    kfp.local, one run per iteration). `config`: a LoopConfig, a dict of its fields, a YAML
    file, or None for the defaults. Progress lines go to stderr; check `.passed`."""
    from pipelines.controller import run_loop
    from pipelines.local import EmbeddedServices, LocalRunner, artifact_roots
    from sigdl.core import settings

    cfg = _loop_config(config)
    if out is not None:
        cfg.out = str(Path(out).expanduser().resolve())
    if cfg.out is None:
        stamp = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        cfg.out = str(settings.SIGDL_HOME.get() / "runs" / stamp)
    folder = Path(cfg.out)
    _say(f"run: {folder} ({cfg.model} on {cfg.dataset}; targets {', '.join(cfg.targets)})")
    _say("services: starting `sigdl serve all` on 127.0.0.1")
    with EmbeddedServices(folder / "services.log", artifact_roots(folder, cfg.store)) as services:
        _say(f"services: serving on {services.address}")
        return run_loop(cfg, LocalRunner(folder, on_line=_say), services.address, on_line=_say)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _loop_config(config: LoopConfig | Mapping[str, Any] | str | Path | None) -> LoopConfig:
    """A fresh LoopConfig (the caller's object is never changed) from any accepted form."""
    from pipelines.controller import LoopConfig

    if config is None:
        return LoopConfig()
    if isinstance(config, LoopConfig):
        cfg = dataclasses.replace(config)
    elif isinstance(config, str | Path):
        return LoopConfig.from_file(config)
    elif isinstance(config, Mapping):
        known = {f.name for f in dataclasses.fields(LoopConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise InputError(f"unknown loop option(s) {', '.join(map(repr, unknown))}; "
                             f"expected some of {', '.join(sorted(known))}")  # fmt: skip
        cfg = LoopConfig(**config)
    else:
        raise TypeError(f"config={config!r}: expected a LoopConfig, a dict, a YAML path or None")
    cfg.check()
    return cfg
