"""The outer loop: one pipeline run per iteration until every target passes its gate.

Kubeflow Pipelines has no while loop, so this controller starts a run of `pipelines/cicd.py`,
reads the verdict it wrote (`<run_uri>/verdict.json`), and, while some target failed and the
budget lasts, starts the next run with the candidates that run proposed for the failed targets,
from the same dense model. `sigdl run` drives it with the local runner (kfp.local and `sigdl
serve all` on loopback); `sigdl pipeline submit --iterate` with the cluster runner.

    result = run_loop(LoopConfig(), LocalRunner(...))      # see pipelines/local.py
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Protocol

from pipelines.results import Candidate, RunVerdict
from sigdl.core import settings, store
from sigdl.core.errors import InputError, short
from sigdl.core.yamlio import load_yaml_file

BUILTIN_RECIPES = ("deep-compression-{model}", "sparse-{model}")
FALLBACK_RECIPES = ("deep-compression",)
MAX_LIST = 256  # targets, requirements or recipes in one loop config


@dataclass
class LoopConfig:
    """The loop's options; a YAML file given to `sigdl run --config` sets these keys."""

    model: str = "lenet-5"  # zoo name
    dataset: str = "digits"  # needs no download: scikit-learn ships it
    epochs: int = 15  # training of the dense model
    nproc: int = 1  # data-parallel processes for training
    train: dict = field(default_factory=dict)  # any other TrainConfig option
    targets: list[str] = field(default_factory=lambda: ["arm-cortex-a53", "movidius-ma2450"])
    recipes: list[str] | None = None  # None: the built-in recipes made for the model
    requirements: list[str] = field(
        default_factory=lambda: ["accuracy_drop<=1", "fps>=30", "size_kb<=512"]
    )  # every target's gate (`sigdl retest --require` syntax); accuracy vs the dense model
    max_iterations: int = 3  # pipeline runs before giving up
    from_checkpoint: str | None = None  # a `sigdl train` output to start from instead of training
    fleet: str = "local"  # deploy publishes to fleets/<fleet>/<target>/ ...
    store: str | None = None  # ... under this artifact root (None: $SIGDL_HOME/artifacts)
    out: str | None = None  # None: $SIGDL_HOME/runs/<pipeline run id>
    runs_uri: str | None = None  # where runs write (cluster: s3://...); None: `out` on disk

    @classmethod
    def from_file(cls, path: str | Path) -> LoopConfig:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"--config {short(str(path))} does not exist")
        data = load_yaml_file(path, f"--config {short(str(path))}")
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise InputError(f"--config {str(path)!r}: expected a mapping of options")
        known = {f.name for f in fields(cls)}
        unknown = sorted((k for k in data if k not in known), key=str)
        if unknown:
            names = ", ".join(str(k)[:40] for k in unknown[:5])
            raise InputError(
                f"--config {str(path)!r}: unknown key(s) {names}; "
                f"expected some of {', '.join(sorted(known))}"
            )
        cfg = cls(**data)
        try:
            cfg.check()
        except InputError as exc:
            raise InputError(f"--config {str(path)!r}: {exc}") from None
        return cfg

    def check(self) -> None:
        """Types a YAML file can get wrong, named with what was expected."""
        expect = [("model", str), ("dataset", str), ("fleet", str), ("targets", list),
                  ("requirements", list), ("train", dict), ("epochs", int),
                  ("max_iterations", int), ("nproc", int)]  # fmt: skip
        optional = ("recipes", "from_checkpoint", "store", "out", "runs_uri")
        expect += [(name, list if name == "recipes" else str) for name in optional
                   if getattr(self, name) is not None]  # fmt: skip
        for name, kind in expect:
            value = getattr(self, name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise InputError(f"{name}={short(value)}: expected a {kind.__name__}")
        for name in ("targets", "requirements", "recipes"):
            value = getattr(self, name) or []
            if len(value) > MAX_LIST or not all(isinstance(v, str) and v for v in value):
                raise InputError(
                    f"{name}={short(value)}: expected at most {MAX_LIST} non-empty strings"
                )
        if not self.targets:
            raise InputError("targets=[]: expected at least one target")
        for name, low, top in (("epochs", 0, 10_000), ("max_iterations", 1, 100),
                               ("nproc", 1, 1024)):  # fmt: skip
            value = getattr(self, name)
            if not low <= value <= top:
                raise InputError(f"{name}={value}: expected an integer in {low}..{top}")

    def recipe_names(self) -> list[str]:
        from services.compression.recipe import list_recipes

        if self.recipes:
            return list(self.recipes)
        known = list_recipes()
        own = [r.format(model=self.model) for r in BUILTIN_RECIPES]
        return [r for r in own if r in known] or list(FALLBACK_RECIPES)

    def pipeline_config(self) -> dict:
        """What the pipeline's train step needs."""
        return {"model": self.model, "dataset": self.dataset, "epochs": self.epochs,
                "nproc": self.nproc, "train": self.train}  # fmt: skip


def first_candidates(cfg: LoopConfig) -> list[Candidate]:
    """Iteration 1: every recipe for every target."""
    pairs = [(t, r) for t in cfg.targets for r in cfg.recipe_names()]
    return [Candidate(id=f"i1-c{i}", iteration=1, target=t, recipe=r, recipe_name=r)
            for i, (t, r) in enumerate(pairs)]  # fmt: skip


class Runner(Protocol):
    """Runs one pipeline run with these arguments and returns once it has ended."""

    def run(self, arguments: dict) -> None: ...


@dataclass
class LoopResult:
    pipeline_run_id: str
    out: str
    passed: bool  # every target passed in some iteration
    iterations: list[RunVerdict]
    deployed: dict  # target -> {"candidate", "version", "iteration"}
    seconds: float
    report: str  # the last iteration's report.md

    def to_json(self) -> dict:
        data = asdict(self)
        data["iterations"] = [v.to_json() for v in self.iterations]
        return {"command": "run", **data}


def new_run_id() -> str:
    return f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def run_uri_of(cfg: LoopConfig, out: Path, run_id: str, iteration: int) -> str:
    """Where an iteration writes: `<out>/iteration-N` on disk, or, on a cluster,
    `<runs_uri>/<run id>/iteration-N` (two loops never share a folder)."""
    if cfg.runs_uri:
        return f"{cfg.runs_uri.rstrip('/')}/{run_id}/iteration-{iteration}"
    return f"{store.as_uri(str(out))}/iteration-{iteration}"


def run_arguments(cfg: LoopConfig, run_id: str, iteration: int, run_uri: str,
                  candidates: list[dict], targets: list[str], from_checkpoint: str = "",
                  services: str = "") -> dict:  # fmt: skip
    """The pipeline's arguments for one iteration."""
    return {
        "run_uri": run_uri, "pipeline_run_id": f"{run_id}-i{iteration}",
        "config_json": json.dumps(cfg.pipeline_config()), "candidates": candidates,
        "targets": list(targets), "requirements": list(cfg.requirements),
        "iteration": iteration, "from_checkpoint": from_checkpoint, "services": services,
        "fleet": cfg.fleet, "store": cfg.store or "",
    }  # fmt: skip


def run_loop(cfg: LoopConfig, runner: Runner, services: str = "",
             on_line: Callable[[str], None] | None = None) -> LoopResult:  # fmt: skip
    """Iterate pipeline runs until every target passed or `max_iterations` were spent."""
    say = on_line or (lambda line: None)
    started = time.monotonic()
    run_id = new_run_id()
    out = Path(cfg.out) if cfg.out else settings.SIGDL_HOME.get() / "runs" / run_id
    out.mkdir(parents=True, exist_ok=True)
    candidates = [c.to_json() for c in first_candidates(cfg)]
    pending = list(cfg.targets)
    from_checkpoint = store.as_uri(cfg.from_checkpoint) if cfg.from_checkpoint else ""
    history: list[RunVerdict] = []
    deployed: dict[str, dict] = {}
    for iteration in range(1, cfg.max_iterations + 1):
        run_uri = run_uri_of(cfg, out, run_id, iteration)
        per_target = {t: sum(c["target"] == t for c in candidates) for t in pending}
        say(f"iteration {iteration}: {len(candidates)} candidates "
            f"({', '.join(f'{t}: {n}' for t, n in per_target.items())})")  # fmt: skip
        runner.run(run_arguments(cfg, run_id, iteration, run_uri, candidates, pending,
                                 from_checkpoint, services))  # fmt: skip
        verdict = read_verdict(run_uri)
        history.append(verdict)
        for target, row in verdict.deployed.items():
            deployed[target] = {**row, "iteration": iteration}
        pending = [t for t in pending if not verdict.targets.get(t, {}).get("passed")]
        if verdict.status != "succeeded" or not pending or not verdict.proposals:
            break
        candidates = verdict.proposals
        from_checkpoint = from_checkpoint or f"{run_uri}/train"
    report = write_loop_report(cfg, out, run_id, history)
    result = LoopResult(
        pipeline_run_id=run_id, out=str(out), passed=not pending, iterations=history,
        deployed=deployed, seconds=time.monotonic() - started, report=report,
    )  # fmt: skip
    (out / "loop.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def write_loop_report(cfg: LoopConfig, out: Path, run_id: str, history: list[RunVerdict]) -> str:
    """The report of the whole loop (`<out>/report/`): every iteration's candidates in one
    table and one plot, the last verdict, and the iterations before it."""
    from pipelines.report import write_report
    from pipelines.results import CandidateResult

    results: list[CandidateResult] = []
    for iteration in range(1, len(history) + 1):
        uri = f"{run_uri_of(cfg, out, run_id, iteration)}/results.json"
        if store.exists(uri):
            results += [CandidateResult.from_json(r) for r in json.loads(store.get_bytes(uri))]
    deployed = {t: row for v in history for t, row in v.deployed.items()}
    last = history[-1]
    targets = {t: row for v in history for t, row in v.targets.items() if row["passed"]}
    merged = {**last.targets, **targets}
    summary = replace(last, targets=merged, deployed=deployed, front=[],
                      passed=all(row["passed"] for row in merged.values()))  # fmt: skip
    paths = write_report(out / "report", summary, results, history=history)
    return str(paths["md"])


def read_verdict(run_uri: str) -> RunVerdict:
    uri = f"{run_uri}/verdict.json"
    if not store.exists(uri):
        raise InputError(f"the pipeline run wrote no verdict at {uri}: see its log")
    return RunVerdict.from_json(json.loads(store.get_bytes(uri)))
