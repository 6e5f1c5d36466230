"""Data-parallel training with PyTorch DDP, launched through torchrun.

`launch()` runs `python -m torch.distributed.run --standalone --nproc-per-node N -m
sigdl.core.distributed JOB_DIR`; every rank runs `worker()`, which trains with the same
`sigdl.core.training.fit` as a single process (gloo; fit keeps the model on the CPU, so a GPU
node registers nccl for CUDA tensors only), and rank 0 writes the final weights and history back
into JOB_DIR as safetensors + JSON.

JOB_DIR may also be an artifact URI (`s3://bucket/prefix/job`, or `file:///...`): that is how the
nodes of a Kubeflow Trainer TrainJob, which share no disk, share one job. Every rank then fetches
`job.json` and `init.safetensors` from the URI into a private folder, and rank 0 uploads
`state.safetensors` and `history.json` to it when training ends; while it trains, rank 0 stores
an `epoch` event per epoch under `events/` there (sigdl.core.jobrun.EventLog), which the
service following the TrainJob forwards as it comes. torchrun takes its node layout
from the PET_* environment the torch-distributed runtime injects::

    PET_NNODES=2 PET_NPROC_PER_NODE=1 PET_NODE_RANK=0 PET_MASTER_ADDR=... PET_MASTER_PORT=29400 \\
        torchrun -m sigdl.core.distributed s3://sigdl/trainjobs/sigdl-lenet-5-1a2b3c4d
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from sigdl.core import settings, store
from sigdl.core.checkpoint import PixelModel
from sigdl.core.events import EventFn, epoch_event, log
from sigdl.core.jobrun import EventLog
from sigdl.core.training import EpochResult, TrainConfig, fit

JOB = "job.json"
STATE = "state.safetensors"
HISTORY = "history.json"
INIT = "init.safetensors"
INPUTS = (JOB, INIT)  # what every rank reads
OUTPUTS = (STATE, HISTORY)  # what rank 0 writes; the history last, once the weights are there


def launch(
    model: PixelModel,
    cfg: TrainConfig,
    channels: int,
    size: int,
    nproc: int,
    job_dir: Path,
    data_dir: str | None = None,
) -> list[dict]:
    """Train `model` in place with `nproc` DDP processes; return the per-epoch history."""
    write_job(model, cfg, channels, size, job_dir, data_dir)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "-m",
        "sigdl.core.distributed",
        str(job_dir),
    ]
    # torchrun's own start-up chatter goes to our stderr with the progress bars.
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"data-parallel training failed (torchrun exit {result.returncode})")
    return read_result(model, job_dir)


def write_job(
    model: PixelModel,
    cfg: TrainConfig,
    channels: int,
    size: int,
    job_dir: Path,
    data_dir: str | None = None,
) -> None:
    """Write the inputs every rank reads (INPUTS) into `job_dir`."""
    job_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, job_dir / INIT)
    job = {
        "config": cfg.to_dict(),
        "channels": channels,
        "size": size,
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
        "data_dir": data_dir,
    }
    (job_dir / JOB).write_text(json.dumps(job))


def read_result(model: PixelModel, job_dir: Path) -> list[dict]:
    """Load rank 0's weights (OUTPUTS) into `model`; return the per-epoch history."""
    model.load_state_dict(load_file(job_dir / STATE), strict=True)
    return json.loads((job_dir / HISTORY).read_text())


def job_file_uri(job_uri: str, name: str) -> str:
    """The URI of one file of a job kept under an artifact URI prefix."""
    return f"{job_uri.rstrip('/')}/{name}"


def is_uri(job: str) -> bool:
    """Whether a JOB_DIR argument is an artifact URI rather than a local folder."""
    return "://" in job or job.lower().startswith("file:")


def worker(job_dir: Path, on_event: EventFn | None = None) -> None:
    """One rank of a torchrun job: same init on every rank, DDP-averaged gradients; rank 0
    sends an `epoch` event to `on_event` after every epoch."""
    from sigdl.core import zoo
    from sigdl.core.datasets import load_dataset
    from sigdl.core.evaluation import score_torch

    job = json.loads((job_dir / JOB).read_text())
    cfg = TrainConfig.from_dict(job["config"])
    rank, world = settings.RANK.get(), settings.WORLD_SIZE.get()
    cuda = torch.cuda.is_available()
    if cuda:  # a GPU node of a TrainJob: one device per local rank
        torch.cuda.set_device(settings.LOCAL_RANK.get())
    # fit() keeps the model on the CPU, whose collectives need gloo even where nccl is there
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    data = load_dataset(cfg.dataset, job["data_dir"])
    net = zoo.build_model(
        cfg.model, input_size=job["size"], channels=job["channels"], classes=len(data.classes)
    )
    model = PixelModel(net, job["mean"], job["std"])
    model.load_state_dict(load_file(job_dir / INIT), strict=True)
    ddp = DistributedDataParallel(model)

    def evaluate():
        return score_torch(model, data.test, job["channels"], job["size"], cfg.adapt_mode)

    def on_epoch(result: EpochResult) -> None:
        if rank == 0 and on_event is not None:
            on_event(epoch_event(result.to_row(), cfg.epochs))

    if rank == 0 and on_event is not None:
        on_event(log(f"training {cfg.model} on {cfg.dataset}: {world} processes (DDP)"))
    history = fit(
        ddp,
        data.train,
        cfg,
        job["channels"],
        job["size"],
        rank=rank,
        world=world,
        evaluate=evaluate,
        on_epoch=on_epoch,
    )
    if rank == 0:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, job_dir / STATE)
        (job_dir / HISTORY).write_text(json.dumps([r.to_row() for r in history]))
    dist.barrier()
    dist.destroy_process_group()


def node_main(job: str) -> None:
    """What torchrun runs on every rank: `job` is a local JOB_DIR, or an artifact URI that the
    ranks of several nodes share (fetch INPUTS from it; rank 0 uploads OUTPUTS to it)."""
    if not is_uri(job):
        worker(Path(job))
        return
    rank0 = settings.RANK.get() == 0
    with tempfile.TemporaryDirectory(prefix="sigdl-rank-") as tmp:
        local = Path(tmp)
        for name in INPUTS:
            store.get_file(job_file_uri(job, name), local / name)
        if not rank0:
            worker(local)
            return
        with EventLog(job) as events:  # stored as they come, the rest when training ends
            worker(local, events.append)
        for name in OUTPUTS:
            store.put_file(job_file_uri(job, name), local / name)


if __name__ == "__main__":
    node_main(sys.argv[1])
