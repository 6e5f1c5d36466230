"""Trained checkpoints: `model.safetensors` (tensors only) + `model.json` (how to rebuild them).

Loading a checkpoint never runs code from the artifact: the JSON names a zoo model and its
constructor arguments, the safetensors file holds the tensors.

    model, meta = load_checkpoint("runs/lenet5")
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors
from torch import nn

from sigdl.core import atomic, zoo
from sigdl.core.errors import InputError

FORMAT = "sigdl.core.checkpoint/v1"
WEIGHTS = "model.safetensors"
META = "model.json"


class PixelModel(nn.Module):
    """A zoo network behind its input normalization, so that it takes pixels in [0, 1].

    Keeping the normalization inside the module puts it inside every exported ONNX graph,
    which is the deployable-model contract (float32 NCHW pixels in [0, 1], logits out).
    """

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) in [0, 1]
        return self.net((pixels - self.mean) / self.std)  # (N, classes) logits


@dataclass
class ModelMeta:
    """Everything needed to rebuild a checkpoint's module and feed it data (`model.json`)."""

    model: str  # zoo name
    input_size: int  # H = W of the model's input
    channels: int  # C of the model's input
    classes: int  # number of logits
    mean: list[float]  # per-channel normalization applied inside the model
    std: list[float]
    class_names: list[str] = field(default_factory=list)
    dataset: str | None = None  # data set it was trained on
    adapt_mode: str = "resize"  # how data-set images are brought to input_size: resize | pad
    metrics: dict[str, float] = field(default_factory=dict)
    train_config: dict = field(default_factory=dict)
    format: str = FORMAT

    @property
    def input_shape(self) -> list[int]:
        return [1, self.channels, self.input_size, self.input_size]

    def to_json(self) -> dict:
        return {**asdict(self), "input_shape": self.input_shape}

    @classmethod
    def from_json(cls, data: dict, where: str = META) -> ModelMeta:
        if data.get("format") != FORMAT:
            raise InputError(f"{where}: format {data.get('format')!r}, expected {FORMAT!r}")
        known = set(cls.__dataclass_fields__)
        missing = [
            k
            for k in ("model", "input_size", "channels", "classes", "mean", "std")
            if k not in data
        ]
        if missing:
            raise InputError(f"{where}: missing field(s) {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})


def build(meta: ModelMeta) -> PixelModel:
    net = zoo.build_model(
        meta.model, input_size=meta.input_size, channels=meta.channels, classes=meta.classes
    )
    return PixelModel(net, meta.mean, meta.std)


def save_checkpoint(model: PixelModel, meta: ModelMeta, out_dir: str | Path) -> str:
    """Write `model.safetensors` and `model.json` atomically; return the weights' sha256."""
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save_tensors(state, metadata={"format": FORMAT, "model": meta.model})
    digest = hashlib.sha256(blob).hexdigest()
    atomic.write_bytes(out_dir / WEIGHTS, blob)
    atomic.write_json(out_dir / META, {**meta.to_json(), "weights_sha256": digest})
    return digest


def read_meta(ckpt_dir: str | Path) -> ModelMeta:
    path = Path(ckpt_dir) / META
    if not path.is_file():
        raise InputError(f"{str(ckpt_dir)!r} is not a checkpoint directory: no {META}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return ModelMeta.from_json(data, where=str(path))


def load_checkpoint(ckpt_dir: str | Path) -> tuple[PixelModel, ModelMeta]:
    """Rebuild the module named by `model.json` and load `model.safetensors` into it (strict)."""
    meta = read_meta(ckpt_dir)
    weights = Path(ckpt_dir) / WEIGHTS
    if not weights.is_file():
        raise InputError(f"{str(ckpt_dir)!r} has {META} but no {WEIGHTS}")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{weights}: unreadable safetensors file ({exc})") from None
    model = build(meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"{weights}: does not match model {meta.model!r}: {first}") from None
    model.eval()
    return model, meta


@torch.no_grad()
def resize_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Reshape the conv/linear/BatchNorm modules of a freshly built model to the shapes in
    `state` (a structurally pruned checkpoint), so that `load_state_dict(state)` fits.
    Returns the names of the modules it resized."""
    resized = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        key = f"{prefix}weight"
        if key not in state or not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        shape = tuple(state[key].shape)
        if shape == tuple(module.weight.shape):
            continue
        for attr in ("weight", "bias", "running_mean", "running_var"):
            current = getattr(module, attr, None)
            if isinstance(current, torch.Tensor) and f"{prefix}{attr}" in state:
                fresh = torch.empty_like(state[f"{prefix}{attr}"], dtype=current.dtype)
                is_param = isinstance(current, nn.Parameter)
                setattr(module, attr, nn.Parameter(fresh) if is_param else fresh)
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = shape
        elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            module.num_features = shape[0]
        elif isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            if module.groups > 1 and module.groups == module.out_channels:
                module.groups = shape[0]
                module.in_channels = shape[0]
            else:
                module.in_channels = shape[1] * module.groups
            module.out_channels = shape[0]
        else:
            raise InputError(f"cannot resize module {name!r} ({type(module).__name__})")
        resized.append(name)
    return resized
