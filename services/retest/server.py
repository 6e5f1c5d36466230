"""sigdl.v1.RetestService: the retest stage behind the job API.

    sigdl serve retest --port 50053

Submit checks the model artifact (NOT_FOUND, PERMISSION_DENIED), the target profile and the
numeric fields (INVALID_ARGUMENT naming them; `baseline_accuracy` must be a fraction, 0 meaning
unset); `run_job` runs `run_retest` in the job's worker process, its MLflow run nested as the
request's `lineage` says. A failed gate is a SUCCEEDED job whose report says
`verdict.passed: false` (the job ran; the model did not pass), so the `passed` metric is 0.
"""

from __future__ import annotations

import targets
from services.grpc_common.jobservice import JobServicer, dataset_field, input_uri, lineage_of
from services.protos.sigdl.v1 import retest_pb2, retest_pb2_grpc
from services.retest.gate import parse_requirement
from sigdl.core import jobs
from sigdl.core.errors import InputError
from sigdl.core.lineage import RunContext

PRECISIONS = ("fp32", "fp16", "int8")


def run_job(params: dict, job: jobs.JobContext) -> dict:
    """In the worker process: fetch the model if remote, retest it into the job's out dir."""
    from services.retest.stage import run_retest

    return run_retest(
        str(job.local(params["model"])), params["target"], job.out_dir,
        dataset=params["dataset"], precision=params["precision"], threads=params["threads"],
        requirements=tuple(params["requirements"]), workers=params["workers"],
        on_event=job.emit, baseline_accuracy=params.get("baseline_accuracy"),
        lineage=RunContext.from_json(params.get("lineage")),
    )  # fmt: skip


class RetestServicer(JobServicer):
    service = "retest"
    full_name = "sigdl.v1.RetestService"
    add_to_server = staticmethod(retest_pb2_grpc.add_RetestServiceServicer_to_server)
    job_fn = staticmethod(run_job)
    preload = ("services.retest.stage", "sklearn.datasets", "onnxruntime", "targets")

    def parse(self, request: retest_pb2.RetestRequest) -> dict:
        try:
            targets.load_profile(request.target)
        except InputError as exc:
            raise jobs.FieldError("target", str(exc)) from None
        if request.precision and request.precision not in PRECISIONS:
            raise jobs.FieldError(
                "precision", f"{request.precision!r}: expected one of {', '.join(PRECISIONS)}"
            )
        for name in ("threads", "workers"):
            if getattr(request, name) < 0:
                raise jobs.FieldError(name, f"{getattr(request, name)}: expected >= 0")
        for i, text in enumerate(request.requirements):  # at Submit, not in a failed job
            try:
                parse_requirement(text)
            except InputError as exc:
                raise jobs.FieldError(f"requirements[{i}]", str(exc)) from None
        baseline = request.baseline_accuracy
        if not 0.0 <= baseline <= 1.0:  # NaN fails this too
            raise jobs.FieldError("baseline_accuracy", f"{baseline}: expected the dense trained "
                                  "model's test accuracy in [0, 1] (0: not given)")  # fmt: skip
        return {
            "model": input_uri(request.model, "model"), "target": request.target,
            "dataset": dataset_field(request.dataset), "precision": request.precision or None,
            "threads": request.threads or None, "requirements": list(request.requirements),
            "workers": request.workers or 1, "baseline_accuracy": baseline or None,
            "lineage": lineage_of(request.lineage),
        }  # fmt: skip

    def metrics(self, report: dict) -> dict[str, float]:
        numbers = super().metrics(report)
        verdict = report.get("verdict") or {}
        if "passed" in verdict:
            numbers["passed"] = float(bool(verdict["passed"]))
        if isinstance(report.get("latency_ms"), int | float):
            numbers["latency_ms"] = float(report["latency_ms"])
        return numbers


SERVICER = RetestServicer
