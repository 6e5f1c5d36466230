"""sigdl.v1.CompressionService: the compression stage behind the job API.

    sigdl serve compression --port 50052

Submit checks that the checkpoint exists (NOT_FOUND) under the artifact roots
(PERMISSION_DENIED) and that the recipe is built in or names a YAML artifact that parses as a
recipe (INVALID_ARGUMENT otherwise); `run_job` runs
`run_compression` in the job's worker process, forwarding the ladder and retraining epochs.
"""

from __future__ import annotations

from pathlib import Path

from services.compression.recipe import Recipe, list_recipes
from services.grpc_common.jobservice import JobServicer, dataset_field, input_uri, lineage_of
from services.protos.sigdl.v1 import common_pb2, compression_pb2, compression_pb2_grpc
from sigdl.core import jobs, store
from sigdl.core.errors import InputError, short
from sigdl.core.yamlio import MAX_YAML_BYTES, load_yaml


def run_job(params: dict, job: jobs.JobContext) -> dict:
    """In the worker process: fetch the checkpoint (and recipe) if remote, compress."""
    from services.compression.stage import run_compression
    from sigdl.core.lineage import RunContext

    recipe = params["recipe"]
    if params["recipe_is_uri"]:
        recipe = job.local(recipe)
    return run_compression(
        job.local(params["checkpoint"]), recipe, params["dataset"], job.out_dir,
        on_event=job.emit, lineage=RunContext.from_json(params.get("lineage")),
    )  # fmt: skip


class CompressionServicer(JobServicer):
    service = "compression"
    full_name = "sigdl.v1.CompressionService"
    add_to_server = staticmethod(compression_pb2_grpc.add_CompressionServiceServicer_to_server)
    job_fn = staticmethod(run_job)
    preload = ("services.compression.stage", "sklearn.datasets", "onnxscript", "torch._dynamo",
               "mlflow")  # fmt: skip

    def parse(self, request: compression_pb2.CompressRequest) -> dict:
        checkpoint = input_uri(request.checkpoint, "checkpoint", member="model.json")
        recipe, is_uri = request.recipe, "://" in request.recipe
        if not recipe:
            raise jobs.FieldError("recipe", "required: a built-in recipe name or a YAML URI")
        if is_uri:
            recipe = input_uri(common_pb2.ArtifactRef(uri=recipe), "recipe")
            check_recipe(recipe)
        elif recipe not in list_recipes():
            raise jobs.FieldError(
                "recipe", f"unknown recipe {short(recipe)}: expected one of "
                f"{', '.join(list_recipes())}, or the file:// or s3:// URI of a recipe YAML",
            )  # fmt: skip
        return {"checkpoint": checkpoint, "recipe": recipe, "recipe_is_uri": is_uri,
                "dataset": dataset_field(request.dataset),
                "lineage": lineage_of(request.lineage)}  # fmt: skip


def check_recipe(uri: str) -> None:
    """A recipe artifact read (up to the YAML size cap) and checked at Submit: a malformed one,
    an alias bomb included, is INVALID_ARGUMENT in milliseconds and never becomes a job."""
    with store.open_read(uri) as stream:
        blob = stream.read(MAX_YAML_BYTES + 1)
    try:
        Recipe.from_dict(load_yaml(blob, where=Path(uri).name), where=Path(uri).name)
    except InputError as exc:
        raise jobs.FieldError("recipe", str(exc)) from None


SERVICER = CompressionServicer
