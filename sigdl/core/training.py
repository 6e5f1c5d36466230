"""The trainer every stage uses: training, and retraining after each compression step.

One code path serves a single process and each rank of a data-parallel (DDP) job: every rank
walks the same seeded permutation and takes its interleaved share of each global batch, so N
ranks with batch B/N each and averaged gradients take the same steps as one process with B.

    history = fit(model, data.train, TrainConfig(model="lenet-5", dataset="mnist"), ...)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from sigdl.core import settings
from sigdl.core.datasets import Split, adapt
from sigdl.core.errors import InputError
from sigdl.core.evaluation import Score

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")
ADAPT_MODES = ("resize", "pad")


@dataclass
class DistillConfig:
    """Knowledge distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
    Network", 2015): the student also matches a teacher's softened outputs. The loss is
    (1 - weight) * CE(student, labels) + weight * T^2 * KL(softmax(t / T) || softmax(s / T)),
    the T^2 keeping the soft term's gradients on the hard term's scale."""

    weight: float = 0.5  # share of the soft-target term, in (0, 1]
    temperature: float = 4.0  # T > 0: softens both distributions

    def __post_init__(self) -> None:
        for name, ok, expected in [
            ("weight", _is_number(self.weight) and 0 < self.weight <= 1, "a number in (0, 1]"),
            ("temperature", _is_number(self.temperature) and 0 < self.temperature <= 100,
             "a number in (0, 100]"),
        ]:  # fmt: skip
            if not ok:
                raise InputError(f"distill.{name}={getattr(self, name)!r}: expected {expected}")
        self.weight, self.temperature = float(self.weight), float(self.temperature)

    @classmethod
    def of(cls, value: object) -> DistillConfig | None:
        """From a mapping (`{weight, temperature}`), a DistillConfig or None."""
        if value is None or isinstance(value, DistillConfig):
            return value
        if not isinstance(value, dict):
            raise InputError(
                f"distill={value!r}: expected a mapping with weight and temperature, or null"
            )
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise InputError(
                f"distill: unknown field(s) {', '.join(map(repr, unknown))}; "
                f"expected some of {', '.join(known)}"
            )
        return cls(**value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def distillation_loss(
    logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, cfg: DistillConfig
) -> torch.Tensor:
    """Hinton et al.'s loss: the hard-label cross-entropy blended with T^2 x the KL divergence
    from the teacher's softened distribution. logits, teacher: (B, K); labels: (B,)."""
    hard = F.cross_entropy(logits, labels)
    t = cfg.temperature
    soft = F.kl_div(
        F.log_softmax(logits / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - cfg.weight) * hard + cfg.weight * t * t * soft


@dataclass
class TrainConfig:
    """How to train one model on one data set; round-trips through JSON (`to_dict`)."""

    model: str  # zoo name
    dataset: str  # data-set name (or imagefolder:PATH)
    epochs: int = 20
    batch_size: int = 64  # global batch, split evenly over DDP ranks
    optimizer: str = "sgd"  # sgd (momentum, Nesterov) | adam
    lr: float = 0.02  # peak learning rate (0.05 sometimes diverges on LeNet-5 without warm-up)
    momentum: float = 0.9  # sgd only
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # per-step cosine decay | step (x gamma every step_epochs) | constant
    step_epochs: int = 10
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0 to lr
    seed: int = 0  # model init, batch order
    input_size: int | None = None  # None: the model's default for small models, else data size
    channels: int | None = None  # None: the data set's channels
    adapt_mode: str = "resize"  # how images reach input_size: resize | pad
    target_accuracy: float | None = None  # stop once test accuracy reaches this (0..1)
    max_train_samples: int | None = None  # train on the first N samples only (smoke runs)
    # retraining from the edge (pipelines/trigger.py): start from these weights (a `sigdl
    # train` output's URI) instead of a fresh init, and add a sample set's labelled samples
    # (sigdl/core/sampleset.py) to the training split
    init_checkpoint: str | None = None
    extra_samples: str | None = None
    distill: DistillConfig | None = None  # learn from a teacher's logits too (fit's `teacher`)

    def __post_init__(self) -> None:
        self.distill = DistillConfig.of(self.distill)
        checks = [
            (self.epochs >= 0, "epochs", "an integer >= 0"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.optimizer in OPTIMIZERS, "optimizer", f"one of {', '.join(OPTIMIZERS)}"),
            (self.lr > 0, "lr", "a number > 0"),
            (self.weight_decay >= 0, "weight_decay", "a number >= 0"),
            (self.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}"),
            (self.step_epochs >= 1, "step_epochs", "an integer >= 1"),
            (self.warmup_epochs >= 0, "warmup_epochs", "a number >= 0"),
            (self.adapt_mode in ADAPT_MODES, "adapt_mode", f"one of {', '.join(ADAPT_MODES)}"),
            (
                self.target_accuracy is None or 0 < self.target_accuracy <= 1,
                "target_accuracy",
                "a fraction in (0, 1]",
            ),
            (
                self.max_train_samples is None or self.max_train_samples >= 1,
                "max_train_samples",
                "an integer >= 1",
            ),
            (self.init_checkpoint is None or (isinstance(self.init_checkpoint, str)
             and self.init_checkpoint), "init_checkpoint", "a checkpoint URI"),
            (self.extra_samples is None or (isinstance(self.extra_samples, str)
             and self.extra_samples), "extra_samples", "a sample set URI"),
        ]  # fmt: skip
        for ok, name, expected in checks:
            if not ok:
                raise InputError(f"{name}={getattr(self, name)!r}: expected {expected}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown training option(s) {', '.join(map(repr, unknown))}")
        return cls(**data)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for global step `step` (per-step schedule, with linear warm-up)."""
    epoch = step / steps_per_epoch
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr * epoch / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        total = max(cfg.epochs * steps_per_epoch, 1)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(step / total, 1.0)))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** int(epoch // cfg.step_epochs)
    return cfg.lr


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of sample indices for one epoch; identical on every rank."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


@dataclass
class EpochResult:
    epoch: int  # 1-based
    loss: float  # mean training loss over this rank's samples
    train_accuracy: float  # on the samples seen this epoch (this rank)
    lr: float  # learning rate at the end of the epoch
    seconds: float  # wall time of the training steps
    images_per_s: float  # global images per second over the training steps
    test: Score | None = None  # filled by the evaluation callback

    def to_row(self) -> dict:
        """A flat JSON-ready row for reports and metric logging."""
        row = {k: v for k, v in vars(self).items() if k != "test"}
        if self.test is not None:
            row["test_accuracy"], row["test_loss"] = self.test.accuracy, self.test.loss
        return row


StepHook = Callable[[nn.Module], None]
EpochHook = Callable[[EpochResult], None]


def fit(
    model: nn.Module,
    train: Split,
    cfg: TrainConfig,
    channels: int,
    size: int,
    *,
    rank: int = 0,
    world: int = 1,
    evaluate: Callable[[], Score] | None = None,
    after_step: list[StepHook] | None = None,
    on_epoch: EpochHook | None = None,
    teacher: torch.Tensor | None = None,
) -> list[EpochResult]:
    """Train `model` (a PixelModel, or its DDP wrapper) in place; return per-epoch results.

    `after_step` hooks run after every optimizer step (compression keeps its masks that way);
    `evaluate` scores the model on held-out data after each epoch, for the history and for
    early stopping at `cfg.target_accuracy`. With `cfg.distill`, `teacher` holds the teacher's
    logits for every training sample (N, K), as `teacher_logits` computes them once.
    """
    if cfg.batch_size % world:
        raise InputError(f"batch_size={cfg.batch_size} must be divisible by nproc={world}")
    n = min(len(train.labels), cfg.max_train_samples or len(train.labels))
    if cfg.distill is not None and (teacher is None or len(teacher) < n):
        raise InputError("distill needs the teacher's logits for every training sample")
    steps = n // cfg.batch_size  # drop the last partial batch: every rank gets equal shares
    if cfg.epochs and steps == 0:
        raise InputError(f"batch_size={cfg.batch_size} exceeds the {n} training samples")
    optimizer = make_optimizer(model, cfg)
    history: list[EpochResult] = []
    for epoch in range(cfg.epochs):
        result = _train_epoch(
            model,
            train,
            cfg,
            optimizer,
            epoch,
            steps,
            channels,
            size,
            rank,
            world,
            after_step or [],
            teacher if cfg.distill is not None else None,
        )
        if evaluate is not None:
            result.test = evaluate()
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
        if cfg.target_accuracy and result.test and result.test.accuracy >= cfg.target_accuracy:
            break
    return history


def _train_epoch(
    model: nn.Module,
    train: Split,
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    steps: int,
    channels: int,
    size: int,
    rank: int,
    world: int,
    after_step: list[StepHook],
    teacher: torch.Tensor | None = None,
) -> EpochResult:
    model.train()
    order = epoch_order(
        min(len(train.labels), cfg.max_train_samples or len(train.labels)), cfg.seed, epoch
    )
    loss_sum, correct, seen, lr = 0.0, 0, 0, cfg.lr
    bar = tqdm(
        range(steps),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="step",
        leave=False,
        disable=rank != 0 or not settings.SIGDL_PROGRESS.get(),
        mininterval=1.0,
    )
    start = time.perf_counter()
    for k in bar:
        idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size][rank::world]
        pixels = adapt(train.images[idx], channels, size, cfg.adapt_mode)  # (B/world, C, S, S)
        labels = train.labels[idx]
        lr = lr_at(cfg, epoch * steps + k, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = model(pixels)
        if teacher is None:
            loss = nn.functional.cross_entropy(logits, labels)
        else:
            loss = distillation_loss(logits, teacher[idx], labels, cfg.distill)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for hook in after_step:
            hook(model)
        loss_sum += loss.item() * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        if k % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.4g}")
    seconds = time.perf_counter() - start
    return EpochResult(
        epoch=epoch + 1,
        loss=loss_sum / max(seen, 1),
        train_accuracy=correct / max(seen, 1),
        lr=lr,
        seconds=seconds,
        images_per_s=steps * cfg.batch_size / max(seconds, 1e-9),
    )


@torch.no_grad()
def teacher_logits(
    model: nn.Module,
    train: Split,
    channels: int,
    size: int,
    adapt_mode: str = "resize",
    batch: int = 1000,
) -> torch.Tensor:
    """The logits of `model` (in eval mode) for every training sample, (N, K) float32: computed
    once, then indexed per batch by `fit(teacher=...)` (training applies no augmentation, so a
    sample's pixels are the same in every epoch)."""
    was_training = model.training
    model.eval()
    out = [
        model(adapt(train.images[i : i + batch], channels, size, adapt_mode))
        for i in range(0, len(train.labels), batch)
    ]
    model.train(was_training)
    return torch.cat(out).float()
