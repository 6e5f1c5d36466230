"""What each component of the CICD pipeline does: plain functions, thin clients of the four
gRPC services, that read and write small JSON records under the run's artifact URI.

The kfp components in `pipelines/cicd.py` are one-line wrappers around these, so all of this
runs (and is tested) without Kubeflow. Artifacts travel as URIs, never as bytes: a stage
service writes its outputs under `<run_uri>/...` and the next one reads them there.

    <run_uri>/run.json                      the MLflow parent run, pipeline run id, iteration
    <run_uri>/train/                        the dense model (or none: started from a version)
    <run_uri>/candidates/<id>/compress/     model.sdc, model.onnx, (model.int8.onnx), report
    <run_uri>/candidates/<id>/retest/       report.json, verdict.md
    <run_uri>/proposals/<id>.yaml           the recipes proposed for the next iteration
    <run_uri>/results.json, verdict.json    what select decided; deployed.json
    <run_uri>/report/                       report.md, report.html, the plots

Each step prints one line (`say`) that the local controller echoes and a cluster keeps in the
pod's log.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines import propose
from pipelines.results import Candidate, CandidateResult, RunVerdict
from sigdl.core import lineage, settings, store
from sigdl.core.lineage import RunContext
from sigdl.core.reports import CompressResult, DeployResult, RetestResult, TrainResult
from sigdl.core.yamlio import dump_yaml

LINE_PREFIX = "sigdl| "  # marks the lines the controller shows; the rest is kfp's log
# statuses that mean the candidate's request is wrong (a recipe the service refuses): recorded
# as the candidate's error; any other (UNAVAILABLE, ...) fails the task, which kfp retries
REFUSALS = ("INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "FAILED_PRECONDITION")


def say(line: str) -> None:
    print(f"{LINE_PREFIX}{line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Services:
    """Where the four stage services listen."""

    training: str
    compression: str
    retest: str
    deploy: str

    @classmethod
    def parse(cls, text: str) -> Services:
        """'' -> the SIGDL_*_ADDR settings (a cluster's ConfigMap); 'host:port' -> all four
        there (`sigdl serve all`); or a JSON object naming each."""
        if not text:
            addresses = (settings.SIGDL_TRAINING_ADDR, settings.SIGDL_COMPRESSION_ADDR,
                         settings.SIGDL_RETEST_ADDR, settings.SIGDL_DEPLOY_ADDR)  # fmt: skip
            return cls(*(address.get() for address in addresses))
        if text.lstrip().startswith("{"):
            return cls(**json.loads(text))
        return cls(text, text, text, text)


def _join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def as_dict(value: str | dict) -> dict:
    """A JSON object passed between components: kfp.local hands a str output that holds JSON
    on as the parsed object, a cluster as the string."""
    return value if isinstance(value, dict) else json.loads(value)


def write_json(uri: str, obj: object) -> None:
    store.put_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(uri: str) -> dict:
    return json.loads(store.get_bytes(uri))


def _remote(client, request) -> tuple[dict, str]:
    """Submit, follow to the end, return (report, out_uri); RemoteJobError when it failed."""
    from services.grpc_common.client import finish_job

    job = finish_job(client, request)
    return json.loads(job.report_json), job.out_uri


def _lineage_pb(context: RunContext):
    from services.grpc_common.client import lineage_message

    return lineage_message(context)


# --- start ------------------------------------------------------------------------------------
def start_run(run_uri: str, pipeline_run_id: str, iteration: int, config: dict) -> str:
    """Open the MLflow parent run of this pipeline run; record it in run.json."""
    tracking = lineage.open_lineage()
    parent = ""
    if tracking is not None:
        tags = {lineage.TAG_STAGE: "pipeline", lineage.TAG_PIPELINE_RUN: pipeline_run_id,
                lineage.TAG_ITERATION: str(iteration)}  # fmt: skip
        params = {k: v for k, v in config.items() if k in ("model", "dataset", "epochs")}
        parent = tracking.start_run(f"pipeline {pipeline_run_id} iteration {iteration}",
                                    tags=tags, params=params)  # fmt: skip
    record = {"parent_run_id": parent, "pipeline_run_id": pipeline_run_id, "iteration": iteration,
              "run_uri": run_uri, "started": time.time(), "config": config}  # fmt: skip
    write_json(_join(run_uri, "run.json"), record)
    say(f"iteration {iteration}: pipeline run {pipeline_run_id} ({run_uri})")
    return parent


# --- train (or start from a trained model) ----------------------------------------------------
def train_baseline(services: str, run_uri: str, config: dict, from_checkpoint: str,
                   context: RunContext) -> dict:  # fmt: skip
    """The dense model every candidate is compressed from and judged against: trained by the
    training service, or a checkpoint trained earlier (a later iteration, or a registered
    version's run). Returns {checkpoint_uri, dense_accuracy, model, dataset, version...}."""
    if from_checkpoint:
        trained = TrainResult.from_json(read_json(_join(from_checkpoint, "report.json")))
        checkpoint = from_checkpoint
        say(f"train: from {checkpoint} (dense accuracy {trained.onnx_test_accuracy:.4f})")
    else:
        from services.protos.sigdl.v1 import training_pb2
        from services.training.client import TrainingClient

        options = {k: v for k, v in config.get("train", {}).items()}
        request = training_pb2.TrainRequest(
            out_uri=_join(run_uri, "train"), model=config["model"], dataset=config["dataset"],
            epochs=config["epochs"], nproc=config.get("nproc", 1),
            config_json=json.dumps(options), lineage=_lineage_pb(context),
        )  # fmt: skip
        started = time.monotonic()
        with TrainingClient(Services.parse(services).training, timeout_s=120) as client:
            report, checkpoint = _remote(client, request)
        trained = TrainResult.from_json(report)
        say(f"train: {trained.model} on {trained.dataset}, {config['epochs']} epochs, test "
            f"accuracy {trained.onnx_test_accuracy:.4f} "
            f"({time.monotonic() - started:.0f} s)")  # fmt: skip
    baseline = {
        "checkpoint_uri": checkpoint, "model": trained.model, "dataset": trained.dataset,
        # what the candidates' retest compares with: the dense model under ONNX Runtime
        "dense_accuracy": trained.onnx_test_accuracy,
        "registered_model": trained.registered_model or "", "version": trained.model_version or "",
    }  # fmt: skip
    write_json(_join(run_uri, "baseline.json"), baseline)
    return baseline


def load_baseline(run_uri: str) -> dict:
    """What train_baseline recorded for this run (the tasks inside the candidates' loop read
    it by URI: kfp.local resolves an outer task's output there to the loop item)."""
    return read_json(_join(run_uri, "baseline.json"))


def load_context(run_uri: str) -> RunContext:
    """The run's lineage context as start_run recorded it."""
    run = read_json(_join(run_uri, "run.json"))
    return RunContext(run["parent_run_id"], run["pipeline_run_id"], int(run["iteration"]))


def _parent_version(baseline: dict) -> str:
    if baseline.get("registered_model") and baseline.get("version"):
        return f"{baseline['registered_model']}/{baseline['version']}"
    return ""


# --- compress, retest -------------------------------------------------------------------------
def compress_candidate(services: str, run_uri: str, baseline: dict, candidate: Candidate,
                       context: RunContext) -> dict:  # fmt: skip
    """Compress the dense model with the candidate's recipe. A recipe the service refuses or a
    job that fails is recorded as the candidate's error (the other candidates go on); a
    service that cannot be reached raises, so the task is retried."""
    import grpc

    from services.compression.client import CompressionClient
    from services.grpc_common.client import RemoteJobError
    from services.protos.sigdl.v1 import common_pb2, compression_pb2

    context = replace(context, parent_version=_parent_version(baseline),
                      target=candidate.target, candidate=candidate.id)  # fmt: skip
    request = compression_pb2.CompressRequest(
        out_uri=_join(run_uri, "candidates", candidate.id, "compress"),
        checkpoint=common_pb2.ArtifactRef(uri=baseline["checkpoint_uri"]),
        recipe=candidate.recipe, dataset=baseline["dataset"], lineage=_lineage_pb(context),
    )  # fmt: skip
    started = time.monotonic()
    try:
        with CompressionClient(Services.parse(services).compression, timeout_s=120) as client:
            report, out_uri = _remote(client, request)
    except RemoteJobError as exc:
        say(f"compress {candidate.id} ({candidate.recipe_name}): FAILED {exc}")
        return {"candidate": candidate.to_json(), "error": str(exc)[:500]}
    except grpc.RpcError as exc:
        if exc.code().name not in REFUSALS:
            raise  # UNAVAILABLE and the like: the task is retried
        say(f"compress {candidate.id} ({candidate.recipe_name}): refused: {exc.details()}")
        return {"candidate": candidate.to_json(), "error": str(exc.details())[:500]}
    small = CompressResult.from_json(report)
    say(f"compress {candidate.id} {candidate.recipe_name} for {candidate.target}: "
        f"{small.ratio:.1f}x, accuracy {small.accuracy:.4f} "
        f"({time.monotonic() - started:.0f} s)")  # fmt: skip
    return {
        "candidate": candidate.to_json(), "compressed_uri": out_uri, "ratio": small.ratio,
        "recipe": report["recipe"], "registered_model": small.registered_model or "",
        "model_version": small.model_version or "",
    }  # fmt: skip


def retest_candidate(services: str, run_uri: str, baseline: dict, compressed: dict,
                     requirements: list[str], context: RunContext) -> CandidateResult:  # fmt: skip
    """Retest a compressed candidate on its target, with the target's numerics (an int8
    target runs the model.int8.onnx the compression wrote), gated against the dense model's
    accuracy."""
    from services.grpc_common.client import RemoteJobError
    from services.retest.client import RetestClient, retest_request

    candidate = Candidate.from_json(compressed["candidate"])
    if compressed.get("error"):
        return CandidateResult(candidate=candidate.to_json(), error=compressed["error"],
                               failures=["compression failed"])  # fmt: skip
    context = replace(context, target=candidate.target, candidate=candidate.id)
    request = retest_request(
        compressed["compressed_uri"], candidate.target, dataset=baseline["dataset"],
        precision=candidate.precision or None, requirements=list(requirements),
        baseline_accuracy=baseline["dense_accuracy"], lineage=context,
    )  # fmt: skip
    request.out_uri = _join(run_uri, "candidates", candidate.id, "retest")
    try:
        with RetestClient(Services.parse(services).retest, timeout_s=120) as client:
            report, out_uri = _remote(client, request)
    except RemoteJobError as exc:
        say(f"retest {candidate.id} on {candidate.target}: FAILED {exc}")
        return CandidateResult(candidate=candidate.to_json(), error=str(exc)[:500],
                               failures=["retest failed"])  # fmt: skip
    result = result_of(candidate, compressed, report, out_uri)
    verdict = "pass" if result.passed else "FAIL " + ", ".join(result.failures)
    say(f"retest {candidate.id} on {candidate.target} ({result.precision}): accuracy "
        f"{_pct(result.accuracy)} (drop {result.accuracy_drop_pp:.2f} pt vs dense), "
        f"{result.latency_ms:.3f} ms, {result.size_kb:.1f} KiB: {verdict}")  # fmt: skip
    return result


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def result_of(candidate: Candidate, compressed: dict, report: dict, out_uri: str
              ) -> CandidateResult:  # fmt: skip
    checked = RetestResult.from_json(report)
    return CandidateResult(
        candidate=candidate.to_json(), compressed_uri=compressed["compressed_uri"],
        retest_uri=out_uri, ratio=compressed["ratio"], size_kb=checked.size_kb,
        accuracy=checked.accuracy, baseline_accuracy=checked.baseline_accuracy,
        accuracy_drop_pp=checked.accuracy_drop_pp, latency_ms=checked.latency_ms,
        fps=checked.fps, power_w=checked.power_w, energy_mj=checked.energy_mj,
        memory_mb=checked.memory_mb, precision=checked.precision, passed=checked.passed,
        failures=list(checked.failures), unsupported_ops=list(checked.unsupported_ops),
        registered_model=compressed["registered_model"], model_version=compressed["model_version"],
    )  # fmt: skip


# --- select -----------------------------------------------------------------------------------
def best_of(results: list[CandidateResult]) -> CandidateResult | None:
    """The passing candidate to ship: the smallest, then the fastest, then the most accurate."""
    passing = [r for r in results if r.passed and not r.error]
    if not passing:
        return None
    return min(passing, key=lambda r: (r.size_kb, r.latency_ms, -(r.accuracy or 0.0)))


def best_alias(target: str) -> str:
    return f"best_{target}"


def select(run_uri: str, results: list[CandidateResult], targets: list[str],
           context: RunContext) -> RunVerdict:  # fmt: skip
    """Per target, the best candidate that passed its gate or why none did; the Pareto front;
    for failed targets, the candidates of the next iteration. Writes results.json and
    verdict.json and points the `best_<target>` alias at each winner's registered version."""
    from pipelines.report import pareto_front

    verdict_targets: dict[str, dict] = {}
    proposals: list[dict] = []
    for target in targets:
        mine = [r for r in results if r.target == target]
        best = best_of(mine)
        if best is not None:
            verdict_targets[target] = {"passed": True, "best": best.id,
                                       "why": f"{best.id} passed every check"}  # fmt: skip
            _mark_best(best)
            continue
        why = "; ".join(f"{r.id}: {', '.join(r.failures) or r.error}" for r in mine) or "no run"
        verdict_targets[target] = {"passed": False, "best": "", "why": why}
        proposals += _proposals(run_uri, mine, context.iteration + 1, len(proposals))
    verdict = RunVerdict(
        pipeline_run_id=context.pipeline_run_id, iteration=context.iteration,
        passed=all(t["passed"] for t in verdict_targets.values()), targets=verdict_targets,
        front=pareto_front(results), proposals=proposals,
    )  # fmt: skip
    write_json(_join(run_uri, "results.json"), [r.to_json() for r in results])
    write_json(_join(run_uri, "verdict.json"), verdict.to_json())
    for target, row in verdict_targets.items():
        say(
            f"gate {target}: "
            + (
                f"passed with {row['best']}"
                if row["passed"]
                else f"FAILED ({len(proposals)} proposals for the next iteration)"
            )
        )
    return verdict


def _mark_best(best: CandidateResult) -> None:
    tracking = lineage.open_lineage()
    if tracking is None or not (best.registered_model and best.model_version):
        return
    tracking.set_alias(best.registered_model, best_alias(best.target), best.model_version)


def _proposals(run_uri: str, results: list[CandidateResult], iteration: int, first: int
               ) -> list[dict]:  # fmt: skip
    """Revised recipes for the candidates that came closest, written as YAML under
    <run_uri>/proposals/; duplicates (the same steps) are proposed once."""
    out: list[dict] = []
    seen: set[str] = set()
    for result in propose.closest(results):
        compressed_report = read_json(_join(result.compressed_uri, "report.json"))
        recipe, why = propose.revise(result, compressed_report["recipe"])
        key = json.dumps(recipe["steps"], sort_keys=True)
        if not why or key in seen:
            continue
        seen.add(key)
        cid = f"i{iteration}-c{first + len(out)}"
        name = f"{compressed_report['recipe']['name']}-{cid}"
        body = propose.clean_recipe(recipe, name, f"Proposed after {result.id}: " + "; ".join(why))
        uri = _join(run_uri, "proposals", f"{cid}.yaml")
        store.put_bytes(uri, dump_yaml(body).encode())  # no aliases: load_recipe refuses them
        out.append(propose.next_candidate(result, iteration, first + len(out), uri, name,
                                          why).to_json())  # fmt: skip
    return out


def any_passed(verdict: RunVerdict) -> bool:
    return any(t["passed"] for t in verdict.targets.values())


# --- deploy -----------------------------------------------------------------------------------
def deploy_passed(services: str, run_uri: str, verdict: RunVerdict, results: list[CandidateResult],
                  fleet: str, store_root: str, context: RunContext) -> dict:  # fmt: skip
    """Publish each target's winner to the fleet (deploy service); write deployed.json."""
    from services.deploy.client import DeployClient
    from services.protos.sigdl.v1 import common_pb2, deploy_pb2

    by_id = {r.id: r for r in results}
    deployed: dict[str, dict] = {}
    for target, row in verdict.targets.items():
        if not row["passed"]:
            continue
        best = by_id[row["best"]]
        request = deploy_pb2.DeployRequest(
            out_uri=_join(run_uri, "deploy", target), fleet=fleet, target=target,
            source=common_pb2.ArtifactRef(uri=best.compressed_uri),
            retest_report=common_pb2.ArtifactRef(uri=_join(best.retest_uri, "report.json")),
            store_uri=store_root, lineage=_lineage_pb(replace(context, target=target)),
        )  # fmt: skip
        with DeployClient(Services.parse(services).deploy, timeout_s=120) as client:
            report, _ = _remote(client, request)
        shipped = DeployResult.from_json(report)
        deployed[target] = {
            "candidate": best.id,
            "version": shipped.version,
            "pointer_uri": shipped.pointer_uri,
            "alias": shipped.alias or "",
        }
        say(f"deploy {best.id} to fleet {fleet}/{target}: {shipped.version} is current")
    write_json(_join(run_uri, "deployed.json"), deployed)
    return deployed


# --- finish (the exit handler: always runs) ---------------------------------------------------
def finish_run(run_uri: str, pipeline_status: str = "") -> RunVerdict:
    """Record the run's verdict whatever happened: verdict.json with the run's status, the
    report (markdown, HTML, plots), the parent MLflow run's artifacts and end state."""
    from pipelines.report import write_report

    run = read_json(_join(run_uri, "run.json")) if store.exists(_join(run_uri, "run.json")) else {}
    verdict_uri = _join(run_uri, "verdict.json")
    if store.exists(verdict_uri):
        verdict = RunVerdict.from_json(read_json(verdict_uri))
        status = "succeeded"
    else:  # the run broke before select: say so, with no proposals
        verdict = RunVerdict(pipeline_run_id=run.get("pipeline_run_id", ""),
                             iteration=run.get("iteration", 0), passed=False)  # fmt: skip
        status = "failed"
    if pipeline_status and pipeline_status.upper() not in ("SUCCEEDED", ""):
        status = "failed"
    results_uri = _join(run_uri, "results.json")
    results = ([CandidateResult.from_json(r) for r in read_json(results_uri)]
               if store.exists(results_uri) else [])  # fmt: skip
    deployed_uri = _join(run_uri, "deployed.json")
    deployed = read_json(deployed_uri) if store.exists(deployed_uri) else {}
    with tempfile.TemporaryDirectory(prefix="sigdl-report-") as tmp:
        verdict = replace(verdict, deployed=deployed, status=status)
        paths = write_report(Path(tmp), verdict, results)
        store.put_dir(_join(run_uri, "report"), tmp)
        verdict = replace(verdict, report=_join(run_uri, "report", Path(paths["md"]).name))
        write_json(verdict_uri, verdict.to_json())
        _log_parent(run.get("parent_run_id", ""), verdict, results, Path(tmp))
    say(
        f"iteration {verdict.iteration}: "
        f"{'every target passed' if verdict.passed else 'some target failed its gate'} "
        f"(run {status}); report {verdict.report}"
    )
    return verdict


def _log_parent(parent_run_id: str, verdict: RunVerdict, results: list[CandidateResult],
                report_dir: Path) -> None:  # fmt: skip
    tracking = lineage.open_lineage()
    if tracking is None or not parent_run_id:
        return
    (report_dir / "report.json").write_text(
        json.dumps(
            {"verdict": verdict.to_json(), "results": [r.to_json() for r in results]}, indent=2
        )
    )
    tracking.log_dir(parent_run_id, report_dir, "report")
    tracking.log_metrics(parent_run_id, {
        "passed": float(verdict.passed), "candidates": float(len(results)),
        "passed_candidates": float(sum(r.passed for r in results)),
    })  # fmt: skip
    tracking.end_run(parent_run_id, "FINISHED" if verdict.status == "succeeded" else "FAILED")
