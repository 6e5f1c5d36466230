"""Data-parallel training: `--nproc 2` really launches torchrun with two gloo processes on
this machine's loopback, and for the same global batch it takes the same steps as one process."""

import torch

from services.training.stage import build_model, train_model
from sigdl.core.datasets import load_dataset
from sigdl.core.training import TrainConfig


def test_two_processes_match_one_process():
    data = load_dataset("digits")
    cfg = TrainConfig(model="lenet-5", dataset="digits", epochs=2, batch_size=64, seed=5)
    single, meta = build_model(cfg, data)
    ddp, _ = build_model(cfg, data)
    assert all(
        torch.equal(a, b)
        for a, b in zip(single.state_dict().values(), ddp.state_dict().values(), strict=True)
    )
    one = train_model(single, meta, cfg, data, nproc=1, data_dir=None, on_event=None)
    two = train_model(ddp, meta, cfg, data, nproc=2, data_dir=None, on_event=None)
    assert len(one) == len(two) == 2
    for (name, a), b in zip(single.state_dict().items(), ddp.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
    assert abs(one[-1]["test_accuracy"] - two[-1]["test_accuracy"]) < 0.01
    # and they did move away from the initialization
    fresh, _ = build_model(cfg, data)
    assert not torch.allclose(fresh.net.fc1.weight, ddp.net.fc1.weight)
