"""Trained checkpoints: `model.safetensors` (tensors only) + `model.json` (how to rebuild them).

Loading a checkpoint never runs code from the artifact: the JSON names a zoo model and its
constructor arguments, the safetensors file holds the tensors.

    model, meta = load_checkpoint("runs/lenet5")
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors
from torch import nn

from sigdl.core import atomic, chain, zoo
from sigdl.core.errors import InputError, short

FORMAT = "sigdl.core.checkpoint/v1"
WEIGHTS = "model.safetensors"
META = "model.json"
# bounds on what a model.json may ask for, checked before anything is allocated
MAX_INPUT_SIZE = 4096  # H = W
MAX_CHANNELS = 64
MAX_CLASSES = 100_000
MAX_PIXELS = 1 << 26  # C x H x W of one input
MAX_MODEL_PARAMS = 1 << 30  # 4 GiB of float32 weights (VGG-16 has 1.4e8)
MAX_TEXT = 1000  # characters of a name, data set or class name
ADAPT_MODES = ("resize", "pad")


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
        """A validated ModelMeta from `model.json`'s object; InputError naming the field."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise InputError(f"{where}: format {short(data.get('format'))}, expected {FORMAT!r}")
        known = set(cls.__dataclass_fields__)
        missing = [
            k
            for k in ("model", "input_size", "channels", "classes", "mean", "std")
            if k not in data
        ]
        if missing:
            raise InputError(f"{where}: missing field(s) {', '.join(missing)}")
        meta = cls(**{k: v for k, v in data.items() if k in known})
        try:
            meta.validate()
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        return meta

    def validate(self) -> None:
        """Every field's type and bounds, and the size of the model it builds (counted on
        PyTorch's meta device, so a forged shape allocates nothing); InputError naming it."""
        text = [("model", self.model, False), ("dataset", self.dataset, True),
                ("adapt_mode", self.adapt_mode, False)]  # fmt: skip
        for name, value, optional in text:
            if not (value is None and optional) and not (
                isinstance(value, str) and 0 < len(value) <= MAX_TEXT
            ):
                raise InputError(f"{name}={short(value)}: expected a string of 1..{MAX_TEXT} chars")
        if self.adapt_mode not in ADAPT_MODES:
            raise InputError(f"adapt_mode={short(self.adapt_mode)}: expected one of {ADAPT_MODES}")
        for name, top in (("input_size", MAX_INPUT_SIZE), ("channels", MAX_CHANNELS),
                          ("classes", MAX_CLASSES)):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise InputError(f"{name}={short(value)}: expected an integer in 1..{top}")
        if self.channels * self.input_size**2 > MAX_PIXELS:
            raise InputError(f"input_shape={self.input_shape}: over {MAX_PIXELS} values")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if (
                not isinstance(value, list)
                or len(value) not in (1, self.channels)
                or not all(_finite(v) for v in value)
                or (name == "std" and not all(v > 0 for v in value))
            ):
                want = "positive " if name == "std" else ""
                raise InputError(
                    f"{name}={short(value)}: expected 1 or {self.channels} finite {want}numbers"
                )
        names = self.class_names
        if (
            not isinstance(names, list)
            or len(names) > MAX_CLASSES
            or not all(isinstance(n, str) and len(n) <= MAX_TEXT for n in names)
        ):
            raise InputError(f"class_names={short(names)}: expected a list of short strings")
        if not isinstance(self.metrics, dict) or not all(
            isinstance(k, str) and (v is None or _finite(v)) for k, v in self.metrics.items()
        ):
            raise InputError(f"metrics={short(self.metrics)}: expected names to numbers")
        if not isinstance(self.train_config, dict):
            raise InputError(f"train_config={short(self.train_config)}: expected an object")
        with torch.device("meta"):  # shapes only: nothing is allocated
            params = zoo.count_parameters(build(self))
        if params > MAX_MODEL_PARAMS:
            raise InputError(
                f"{self.model} at input_shape={self.input_shape}, classes={self.classes} has "
                f"{params} parameters, over the {MAX_MODEL_PARAMS} limit"
            )


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
    """Rebuild the module named by `model.json` and load `model.safetensors` into it (strict),
    after checking the files against the `sigdl train` report beside them (when there is one)
    and the weights against the `weights_sha256` that model.json records: ChainError when a
    file changed after training."""
    chain.verify_folder(ckpt_dir, (WEIGHTS, META))  # first: a changed model.json is named so
    meta = read_meta(ckpt_dir)
    weights = Path(ckpt_dir) / WEIGHTS
    if not weights.is_file():
        raise InputError(f"{str(ckpt_dir)!r} has {META} but no {WEIGHTS}")
    recorded = recorded_weights_digest(ckpt_dir)
    if recorded is not None:
        chain.check_digest(weights, recorded, f"{str(Path(ckpt_dir) / META)!r} weights_sha256")
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


def recorded_weights_digest(ckpt_dir: str | Path) -> object:
    """The `weights_sha256` model.json records (None: a checkpoint not written by SigDL)."""
    data = json.loads((Path(ckpt_dir) / META).read_bytes())  # read_meta has parsed it already
    return data.get("weights_sha256") if isinstance(data, dict) else None


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
