"""The CICD loop as a Kubeflow Pipeline (kfp v2): one run is one iteration.

    train (or start from a trained model)
      -> ParallelFor candidate (recipe x target): compress -> retest on the target
      -> Collected: select (per-target gate against the dense model, Pareto front, proposals)
      -> If any target passed: deploy its best candidate; Else: record why
    ExitHandler: finish (verdict.json, report, MLflow parent run) runs whatever happened.

Every component is a lightweight Python component that is a thin client of the four gRPC
services (`pipelines/steps.py` does the work); parameters are small JSON strings and artifact
URIs, never model bytes. Locally the controller runs this with `kfp.local`; on a cluster,
`sigdl pipeline compile` writes the IR YAML and `sigdl pipeline submit` submits it.

    python -m pipelines.cicd cicd.yaml      # compile (same as `sigdl pipeline compile`)
"""

import sys
from typing import List  # noqa: UP035 - kfp's component signatures need typing.List

from kfp import compiler, dsl
from kfp import kubernetes as k8s

from sigdl.core import __version__

# One image runs every service and every component (Dockerfile at the repository root).
IMAGE = f"sigdl:{__version__}"
PIPELINE_NAME = "sigdl-cicd"
RETRIES = 2  # transient failures (a service restarting) are retried with backoff
# Where a cluster keeps what components read (charts/sigdl renders both).
SERVICES_CONFIG_MAP = "sigdl-services"
S3_SECRET = "sigdl-s3"
MLFLOW_CONFIG_MAP = "sigdl-mlflow"
SERVICE_ADDRESS_ENV = {"training": "SIGDL_TRAINING_ADDR", "compression": "SIGDL_COMPRESSION_ADDR",
                       "retest": "SIGDL_RETEST_ADDR", "deploy": "SIGDL_DEPLOY_ADDR"}  # fmt: skip
S3_ENV = {"endpoint": "SIGDL_S3_ENDPOINT", "access-key": "SIGDL_S3_ACCESS_KEY",
          "secret-key": "SIGDL_S3_SECRET_KEY"}  # fmt: skip
MLFLOW_ENV = {"tracking-uri": "SIGDL_MLFLOW_TRACKING_URI"}
CLIENT_LABEL = "sigdl.io/client"


def component(fn):
    """A lightweight component on our image; kfp itself is in the image already."""
    return dsl.component(fn, base_image=IMAGE, install_kfp_package=False)


@component
def start_run(run_uri: str, pipeline_run_id: str, iteration: int, config_json: str) -> str:

    from pipelines import steps

    return steps.start_run(run_uri, pipeline_run_id, iteration, steps.as_dict(config_json))


@component
def train(services: str, run_uri: str, config_json: str, from_checkpoint: str,
          parent_run_id: str, pipeline_run_id: str, iteration: int) -> str:  # fmt: skip
    import json

    from pipelines import steps
    from sigdl.core.lineage import RunContext

    context = RunContext(parent_run_id, pipeline_run_id, iteration)
    config = steps.as_dict(config_json)
    return json.dumps(steps.train_baseline(services, run_uri, config, from_checkpoint, context))


@component
def compress(services: str, run_uri: str, candidate: dict) -> str:
    import json

    from pipelines import steps
    from pipelines.results import Candidate

    found = steps.compress_candidate(services, run_uri, steps.load_baseline(run_uri),
                                     Candidate.from_json(candidate),
                                     steps.load_context(run_uri))  # fmt: skip
    return json.dumps(found)


@component
def retest(services: str, run_uri: str, compressed: str, requirements: list) -> str:
    from pipelines import steps

    result = steps.retest_candidate(services, run_uri, steps.load_baseline(run_uri),
                                    steps.as_dict(compressed), requirements,
                                    steps.load_context(run_uri))  # fmt: skip
    return result.dumps()


@component
def select(run_uri: str, results: List[str], targets: list, parent_run_id: str,  # noqa: UP006
           pipeline_run_id: str, iteration: int) -> str:  # fmt: skip
    from pipelines import steps
    from pipelines.results import CandidateResult
    from sigdl.core.lineage import RunContext

    context = RunContext(parent_run_id, pipeline_run_id, iteration)
    found = [CandidateResult.from_json(r) for r in results]
    return steps.select(run_uri, found, targets, context).dumps()


@component
def any_target_passed(verdict: str) -> bool:
    from pipelines import steps
    from pipelines.results import RunVerdict

    return steps.any_passed(RunVerdict.from_json(verdict))


@component
def deploy(services: str, run_uri: str, verdict: str, fleet: str, store: str,
           parent_run_id: str, pipeline_run_id: str, iteration: int) -> str:  # fmt: skip
    import json

    from pipelines import steps
    from pipelines.results import CandidateResult, RunVerdict
    from sigdl.core.lineage import RunContext

    context = RunContext(parent_run_id, pipeline_run_id, iteration)
    results = [CandidateResult.from_json(r) for r in steps.read_json(f"{run_uri}/results.json")]
    chosen = RunVerdict.from_json(verdict)
    return json.dumps(steps.deploy_passed(services, run_uri, chosen, results, fleet, store,
                                          context))  # fmt: skip


@component
def record_no_deploy(verdict: str) -> str:
    from pipelines import steps
    from pipelines.results import RunVerdict

    found = RunVerdict.from_json(verdict)
    for target, row in found.targets.items():
        steps.say(f"not deployed to {target}: {row['why']}")
    return "nothing deployed"


@component
def finish(run_uri: str) -> str:
    from pipelines import steps

    return steps.finish_run(run_uri).dumps()


def _small(task: dsl.PipelineTask, cpu: str = "250m", memory: str = "512Mi") -> dsl.PipelineTask:
    """A thin client's resources, and what it reads on a cluster: the services' addresses
    (ConfigMap), the S3 credentials (Secret), the MLflow tracking URI (ConfigMap)."""
    task.set_cpu_request(cpu).set_cpu_limit("1").set_memory_request(memory)
    task.set_memory_limit("2Gi")
    k8s.use_config_map_as_env(task, SERVICES_CONFIG_MAP, SERVICE_ADDRESS_ENV)
    k8s.use_config_map_as_env(task, MLFLOW_CONFIG_MAP, MLFLOW_ENV)
    k8s.use_secret_as_env(task, S3_SECRET, S3_ENV)
    # the chart's NetworkPolicies let in only pods with this label (charts/sigdl)
    k8s.add_pod_label(task, CLIENT_LABEL, "true")
    return task


@dsl.pipeline(name=PIPELINE_NAME, description="SigDL: train -> compress candidates -> retest on "
              "emulated targets -> gate -> deploy to edge fleets (one iteration)")  # fmt: skip
def cicd_pipeline(
    run_uri: str,
    pipeline_run_id: str,
    config_json: str,
    candidates: List[dict],  # noqa: UP006
    targets: list,
    requirements: list,
    iteration: int = 1,
    from_checkpoint: str = "",
    services: str = "",
    fleet: str = "local",
    store: str = "",
) -> None:
    done = _small(finish(run_uri=run_uri))
    with dsl.ExitHandler(done, name="record-verdict"):
        start = _small(start_run(run_uri=run_uri, pipeline_run_id=pipeline_run_id,
                                 iteration=iteration, config_json=config_json))  # fmt: skip
        ids = {"parent_run_id": start.output, "pipeline_run_id": pipeline_run_id,
               "iteration": iteration}  # fmt: skip
        dense = _small(train(services=services, run_uri=run_uri, config_json=config_json,
                             from_checkpoint=from_checkpoint, **ids))  # fmt: skip
        dense.set_retry(num_retries=RETRIES, backoff_duration="10s")
        # inside the loop, the dense model and the lineage ids are read by URI from the run's
        # folder (baseline.json, run.json), after the tasks that wrote them
        with dsl.ParallelFor(candidates, name="candidates") as candidate:
            packed = _small(compress(services=services, run_uri=run_uri, candidate=candidate))
            packed.after(dense).set_retry(num_retries=RETRIES, backoff_duration="10s")
            tested = _small(retest(services=services, run_uri=run_uri, compressed=packed.output,
                                   requirements=requirements))  # fmt: skip
            tested.set_retry(num_retries=RETRIES, backoff_duration="10s")
        chosen = _small(select(run_uri=run_uri, results=dsl.Collected(tested.output),
                               targets=targets, **ids))  # fmt: skip
        passed = _small(any_target_passed(verdict=chosen.output))
        with dsl.If(passed.output == True, name="some-target-passed"):  # noqa: E712
            shipped = _small(deploy(services=services, run_uri=run_uri, verdict=chosen.output,
                                    fleet=fleet, store=store, **ids))  # fmt: skip
            shipped.set_retry(num_retries=RETRIES, backoff_duration="10s")
        with dsl.Else(name="no-target-passed"):
            _small(record_no_deploy(verdict=chosen.output))


def compile_pipeline(path: str) -> str:
    """Write the pipeline's IR YAML to `path`; return the path."""
    compiler.Compiler().compile(cicd_pipeline, package_path=path)
    return path


if __name__ == "__main__":
    print(compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else "cicd.yaml"))
