"""Data-parallel training with PyTorch DDP, launched through torchrun.

`launch()` runs `python -m torch.distributed.run --standalone --nproc-per-node N -m
sigdl.core.distributed JOB_DIR`; every rank runs `worker()`, which trains with the same
`sigdl.core.training.fit` as a single process (gloo on CPU, nccl on GPU), and rank 0 writes the
final weights and history back into JOB_DIR as safetensors + JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

from sigdl.core import settings
from sigdl.core.checkpoint import PixelModel
from sigdl.core.training import TrainConfig, fit

JOB = "job.json"
STATE = "state.safetensors"
HISTORY = "history.json"


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
    job_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, job_dir / "init.safetensors"
    )
    job = {
        "config": cfg.to_dict(),
        "channels": channels,
        "size": size,
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
        "data_dir": data_dir,
    }
    (job_dir / JOB).write_text(json.dumps(job))
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
    model.load_state_dict(load_file(job_dir / STATE), strict=True)
    return json.loads((job_dir / HISTORY).read_text())


def worker(job_dir: Path) -> None:
    """One rank of a torchrun job: same init on every rank, DDP-averaged gradients."""
    from sigdl.core import zoo
    from sigdl.core.datasets import load_dataset
    from sigdl.core.evaluation import score_torch

    job = json.loads((job_dir / JOB).read_text())
    cfg = TrainConfig.from_dict(job["config"])
    rank, world = settings.RANK.get(), settings.WORLD_SIZE.get()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    data = load_dataset(cfg.dataset, job["data_dir"])
    net = zoo.build_model(
        cfg.model, input_size=job["size"], channels=job["channels"], classes=len(data.classes)
    )
    model = PixelModel(net, job["mean"], job["std"])
    model.load_state_dict(load_file(job_dir / "init.safetensors"), strict=True)
    ddp = DistributedDataParallel(model)

    def evaluate():
        return score_torch(model, data.test, job["channels"], job["size"], cfg.adapt_mode)

    history = fit(
        ddp,
        data.train,
        cfg,
        job["channels"],
        job["size"],
        rank=rank,
        world=world,
        evaluate=evaluate,
    )
    if rank == 0:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, job_dir / STATE)
        (job_dir / HISTORY).write_text(json.dumps([r.to_row() for r in history]))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
