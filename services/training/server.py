"""sigdl.v1.TrainingService: the training stage behind the job API.

    sigdl serve training --port 50051

The servicer only turns a TrainRequest into a TrainConfig (INVALID_ARGUMENT naming the field
when it cannot); `run_job` runs `run_training` in the job's worker process, forwarding each
epoch as a progress event.
"""

from __future__ import annotations

from services.grpc_common.jobservice import JobServicer, dataset_field, json_object, lineage_of
from services.protos.sigdl.v1 import training_pb2, training_pb2_grpc
from sigdl.core import jobs, roots, zoo
from sigdl.core.errors import InputError
from sigdl.core.training import TrainConfig


def run_job(params: dict, job: jobs.JobContext) -> dict:
    """In the worker process: train into the job's output directory."""
    from services.training.stage import run_training
    from sigdl.core.lineage import RunContext

    return run_training(
        TrainConfig.from_dict(params["config"]),
        job.out_dir,
        nproc=params["nproc"],
        on_event=job.emit,
        lineage=RunContext.from_json(params.get("lineage")),
        job=job,
    )


class TrainingServicer(JobServicer):
    service = "training"
    full_name = "sigdl.v1.TrainingService"
    add_to_server = staticmethod(training_pb2_grpc.add_TrainingServiceServicer_to_server)
    job_fn = staticmethod(run_job)
    # imported lazily by the first training otherwise: seconds of every job's time
    preload = ("services.training.stage", "sklearn.datasets", "onnxscript", "torch._dynamo",
               "mlflow")  # fmt: skip

    def parse(self, request: training_pb2.TrainRequest) -> dict:
        dataset_field(request.dataset, required=True)
        try:
            zoo.get_spec(request.model)
        except InputError as exc:
            raise jobs.FieldError("model", str(exc)) from None
        if request.nproc < 0:
            raise jobs.FieldError("nproc", f"{request.nproc}: expected >= 1 (0 means 1)")
        options = json_object(request.config_json, "config_json")
        given = {"model": request.model, "dataset": request.dataset, "epochs": request.epochs}
        try:
            cfg = TrainConfig.from_dict({**options, **given})
        except TypeError as exc:  # a config_json value of the wrong type
            raise jobs.FieldError("config_json", str(exc)) from None
        # the artifacts a retraining from the edge reads: under the roots, and there
        for name, member in (("init_checkpoint", "model.json"), ("extra_samples", None)):
            uri = getattr(cfg, name)
            if uri:
                roots.require_artifact(roots.check_uri(uri, f"config_json.{name}"), member)
        return {"config": cfg.to_dict(), "nproc": request.nproc or 1,
                "lineage": lineage_of(request.lineage)}  # fmt: skip


SERVICER = TrainingServicer
