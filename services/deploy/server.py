"""sigdl.v1.DeployService: the deploy stage behind the job API.

    sigdl serve deploy --port 50054

Submit checks names (fleet, target, version) and URIs (source, store root, retest report);
`run_job` runs `run_deploy` in the job's worker process, which publishes the package under
`<store>/fleets/<fleet>/<target>/<version>/` and moves `current`; the job's own out_uri gets
the deploy result as report.json. Rollback is a plain unary call (one verified pointer write,
no job): it runs `rollback` in the server process.
"""

from __future__ import annotations

import json

import grpc

from services.deploy.fleet import NotPublishedError, check_name, check_target, check_version
from services.grpc_common.jobservice import JobServicer, input_uri, status_from_errors
from services.protos.sigdl.v1 import deploy_pb2, deploy_pb2_grpc
from sigdl.core import atomic, jobs, roots
from sigdl.core.errors import InputError, one_line


def run_job(params: dict, job: jobs.JobContext) -> dict:
    """In the worker process: package and publish, then record the result."""
    from services.deploy.stage import run_deploy

    result = run_deploy(
        params["source"], params["target"], params["fleet"], store_root=params["store_uri"],
        version=params["version"], on_event=job.emit, retest_report=params["retest_report"],
    )  # fmt: skip
    atomic.write_json(job.out_dir / "report.json", result)
    return result


class DeployServicer(JobServicer):
    service = "deploy"
    full_name = "sigdl.v1.DeployService"
    add_to_server = staticmethod(deploy_pb2_grpc.add_DeployServiceServicer_to_server)
    job_fn = staticmethod(run_job)
    preload = ("services.deploy.stage", "onnx")

    def parse(self, request: deploy_pb2.DeployRequest) -> dict:
        checks = [("fleet", check_name, (request.fleet, "fleet")),
                  ("target", check_target, (request.target,))]  # fmt: skip
        if request.version:
            checks.append(("version", check_version, (request.version,)))
        for name, check, args in checks:
            try:
                check(*args)
            except InputError as exc:
                raise jobs.FieldError(name, str(exc)) from None
        retest = request.retest_report
        return {
            "source": input_uri(request.source, "source"),
            "target": request.target, "fleet": request.fleet,
            "store_uri": roots.check_uri(request.store_uri, "store_uri") if request.store_uri
            else None,
            "version": request.version or None,
            "retest_report": input_uri(retest, "retest_report") if retest.uri else None,
        }  # fmt: skip

    def Rollback(self, request: deploy_pb2.RollbackRequest, context):  # noqa: N802 (the RPC)
        from services.deploy.stage import rollback

        with status_from_errors(context):
            try:
                check_name(request.fleet, "fleet")
                check_target(request.target)
                to = check_version(request.to_version) if request.to_version else None
                uri = request.store_uri
                root = roots.check_uri(uri, "store_uri") if uri else None
                result = rollback(request.fleet, request.target, store_root=root, to_version=to)
            except NotPublishedError as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, one_line(str(exc)))
        return deploy_pb2.RollbackResponse(
            version=result["version"], previous_version=result["previous_version"] or "",
            manifest_sha256=result["manifest_sha256"], pointer_uri=result["pointer_uri"],
            result_json=json.dumps(result),
        )  # fmt: skip


SERVICER = DeployServicer
