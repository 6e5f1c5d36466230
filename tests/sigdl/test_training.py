"""The trainer on the bundled digits data set (no files needed), LeNet-5, a few epochs."""

import pytest
import torch

from services.training.stage import build_model
from sigdl.core.datasets import load_dataset
from sigdl.core.errors import InputError
from sigdl.core.evaluation import score_torch
from sigdl.core.training import TrainConfig, fit, lr_at


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_config_validates_and_round_trips():
    cfg = TrainConfig(model="lenet-5", dataset="digits", optimizer="adam", lr=1e-3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="epochs=-1"):
        TrainConfig(model="lenet-5", dataset="digits", epochs=-1)
    with pytest.raises(InputError, match="optimizer='rmsprop'"):
        TrainConfig(model="lenet-5", dataset="digits", optimizer="rmsprop")
    with pytest.raises(InputError, match="unknown training option"):
        TrainConfig.from_dict({"model": "lenet-5", "dataset": "digits", "epoch": 3})


def test_schedules():
    cfg = TrainConfig(model="m", dataset="d", epochs=10, lr=0.1, warmup_epochs=1)
    assert lr_at(cfg, 0, 100) == 0.0
    assert lr_at(cfg, 50, 100) == pytest.approx(0.05)
    assert lr_at(cfg, 1000, 100) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(model="m", dataset="d", lr=0.1, schedule="step", step_epochs=2, gamma=0.5)
    assert lr_at(step, 450, 100) == pytest.approx(0.025)


def _train(digits, epochs=3, seed=0, **kw):
    cfg = TrainConfig(model="lenet-5", dataset="digits", epochs=epochs, seed=seed, **kw)
    model, meta = build_model(cfg, digits)

    def evaluate():
        return score_torch(model, digits.test, meta.channels, meta.input_size)

    history = fit(model, digits.train, cfg, meta.channels, meta.input_size, evaluate=evaluate)
    return model, history


def test_training_learns_digits(digits):
    _, history = _train(digits, epochs=4)
    assert history[0].test.accuracy < history[-1].test.accuracy
    assert history[-1].test.accuracy > 0.9
    assert history[-1].loss < history[0].loss


def test_same_seed_same_weights_other_seed_differs(digits):
    a, _ = _train(digits, epochs=1, seed=3)
    b, _ = _train(digits, epochs=1, seed=3)
    c, _ = _train(digits, epochs=1, seed=4)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.net.conv1.weight, c.net.conv1.weight)


def test_early_stop_at_target_accuracy(digits):
    _, history = _train(digits, epochs=10, target_accuracy=0.5)
    assert len(history) < 10 and history[-1].test.accuracy >= 0.5


def test_after_step_hooks_keep_a_mask(digits):
    cfg = TrainConfig(model="lenet-5", dataset="digits", epochs=1)
    model, meta = build_model(cfg, digits)
    mask = (torch.rand_like(model.net.fc1.weight) > 0.5).float()

    def keep_mask(_model):
        with torch.no_grad():
            model.net.fc1.weight.mul_(mask)

    fit(model, digits.train, cfg, meta.channels, meta.input_size, after_step=[keep_mask])
    assert torch.all(model.net.fc1.weight[mask == 0] == 0)
    assert torch.count_nonzero(model.net.fc1.weight) == int(mask.sum())


def test_batch_larger_than_data_is_an_input_error(digits):
    cfg = TrainConfig(model="lenet-5", dataset="digits", epochs=1, batch_size=100_000)
    model, meta = build_model(cfg, digits)
    with pytest.raises(InputError, match="exceeds"):
        fit(model, digits.train, cfg, meta.channels, meta.input_size)
