"""Compression recipes: an ordered list of steps, each a validated dataclass config.

A recipe is YAML (a built-in under `recipes/` or a user file) that round-trips through JSON, so
the same object travels through gRPC, KFP and MLflow; its `digest()` names what it does.

    recipe = load_recipe("deep-compression-lenet-5")    # or load_recipe("my-recipe.yaml")
    recipe.steps[0]                                      # PruneConfig(quality=..., rounds=3, ...)
    recipe.digest()                                      # sha256 of the canonical JSON

Per-layer values (`quality`, `sparsity`, `fraction`, `bits`, `index_bits`) are a number for
every selected layer, or a mapping whose keys are layer names (`fc1`), glob patterns (`conv*`,
`features.*`), the layer kinds `conv` and `fc`, or `*`. The most specific key wins, whatever the
order: exact name, then the longest matching glob, then the kind, then `*`. Layers a mapping
does not cover are left alone. The engine rejects names and globs that match no layer.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib
import json
import pkgutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, ClassVar

from sigdl.core.errors import InputError, short
from sigdl.core.numerics import ACTIVATION_SCHEMES, CALIBRATION_METHODS
from sigdl.core.training import OPTIMIZERS, SCHEDULES, DistillConfig, TrainConfig
from sigdl.core.yamlio import load_yaml_file

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
LAYER_KINDS = ("conv", "fc")  # conv: Conv1d/2d/3d weights; fc: Linear weights
PRUNE_SCHEDULES = ("linear", "agp")
SHARE_INITS = ("linear", "density")
CENTROID_UPDATES = ("sum", "mean")
STRUCTURED_NORMS = ("l1", "l2")
CODEBOOK_DTYPES = ("float32", "float16")
MAX_NAME_CHARS = 200  # a recipe's name
MAX_DESCRIPTION = 4000  # characters of a recipe's description
MAX_STEPS = 64  # steps in one recipe

LayerValue = float | int | dict[str, float | int]
PLANNED = "planned"  # a prune `sparsity` or share `bits` that a planner step chooses


# ---------------------------------------------------------------------------------------------
# Per-layer values and layer patterns
# ---------------------------------------------------------------------------------------------


def pattern_matches(pattern: str, name: str, kind: str) -> bool:
    """Whether a layer pattern (name, glob, kind or `*`) selects layer `name` of `kind`."""
    return pattern in (name, kind) or fnmatch.fnmatchcase(name, pattern)


def value_for(value: LayerValue, name: str, kind: str) -> float | int | None:
    """The per-layer value for one layer, or None when a mapping does not cover it."""
    if not isinstance(value, Mapping):
        return value
    if name in value:
        return value[name]
    globs = [k for k in value if k != "*" and k not in LAYER_KINDS and k != name]
    hits = sorted((k for k in globs if fnmatch.fnmatchcase(name, k)), key=lambda k: (-len(k), k))
    if hits:
        return value[hits[0]]
    if kind in value:
        return value[kind]
    return value.get("*")


def check_layer_value(
    value: Any, name: str, number: type, ok: Any, expected: str
) -> float | int | dict:
    """Validate a number-or-mapping per-layer value; return it normalized (floats as float)."""

    def one(v: Any, where: str) -> float | int:
        is_number = isinstance(v, int | float) and not isinstance(v, bool)
        if number is int and is_number and float(v).is_integer():
            v = int(v)
        if not is_number or (number is int and not isinstance(v, int)) or not ok(v):
            raise InputError(f"{where}={short(v)}: expected {expected}")
        return float(v) if number is float else v

    if isinstance(value, Mapping):
        if not value:
            raise InputError(f"{name}={{}}: expected {expected}, or a non-empty mapping")
        out = {}
        for key, v in value.items():
            if not isinstance(key, str) or not key:
                raise InputError(f"{name}: key {short(key)} is not a layer name, pattern or kind")
            out[key] = one(v, f"{name}[{short(key)}]")
        return out
    return one(value, name)


def check_patterns(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise InputError(
            f"{name}={short(value)}: expected a non-empty list of layer names/patterns"
        )
    return list(value)


def check_all(checks: list[tuple[bool, str, Any, str]]) -> None:
    for ok, name, value, expected in checks:
        if not ok:
            raise InputError(f"{name}={short(value)}: expected {expected}")


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """Build a config dataclass from a mapping; unknown keys name the valid ones."""
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: expected a mapping of options, got {type(data).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = sorted((k for k in data if k not in known), key=str)
    if unknown:
        raise InputError(
            f"{where}: unknown field(s) {', '.join(map(short, unknown[:5]))}; "
            f"expected some of {', '.join(known)}"
        )
    return cls(**data)


# ---------------------------------------------------------------------------------------------
# Step configs
# ---------------------------------------------------------------------------------------------


# The trainer's options a recipe may set for retraining, with retraining's own defaults: a short
# fine-tune at a lower rate. Every other trainer field (seed, adapt_mode, ...) comes from the
# recipe and the checkpoint when `train_config` builds the TrainConfig.
RETRAIN_FIELDS = {
    "epochs": 1,  # 0: no retraining
    "lr": 0.01,  # peak learning rate
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "batch_size": 64,
    "schedule": "cosine",
    "target_accuracy": None,  # stop once test accuracy reaches this (0..1]
    "max_train_samples": None,  # retrain on the first N samples only (smoke runs)
    "distill": None,  # {weight, temperature}: learn from the dense model's logits too
}
# Options added after recipes were published: left out of a step's dict (and so of the recipe's
# digest) while unset, so every recipe that does not use them keeps the digest it had.
LATER_OPTIONS = ("distill", "bias_bits", "splice")


class _Retrain:
    """Validation and conversion of `RetrainConfig`, whose fields are the trainer's own."""

    def __post_init__(self) -> None:
        check_all([
            (isinstance(self.epochs, int) and self.epochs >= 0, "epochs", self.epochs,
             "an integer >= 0"),
            (_number(self.lr) and self.lr > 0, "lr", self.lr, "a number > 0"),
            (self.optimizer in OPTIMIZERS, "optimizer", self.optimizer,
             f"one of {', '.join(OPTIMIZERS)}"),
            (_number(self.momentum) and 0 <= self.momentum < 1, "momentum", self.momentum,
             "a number in [0, 1)"),
            (_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
             self.weight_decay, "a number >= 0"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size",
             self.batch_size, "an integer >= 1"),
            (self.schedule in SCHEDULES, "schedule", self.schedule,
             f"one of {', '.join(SCHEDULES)}"),
            (self.target_accuracy is None or (_number(self.target_accuracy)
             and 0 < self.target_accuracy <= 1), "target_accuracy", self.target_accuracy,
             "a fraction in (0, 1]"),
            (self.target_drop is None or (_number(self.target_drop)
             and 0 <= self.target_drop < 1), "target_drop", self.target_drop,
             "a fraction in [0, 1)"),
            (self.target_accuracy is None or self.target_drop is None, "target_drop",
             self.target_drop, "not both target_accuracy and target_drop"),
            (self.max_train_samples is None or (isinstance(self.max_train_samples, int)
             and self.max_train_samples >= 1), "max_train_samples", self.max_train_samples,
             "an integer >= 1"),
        ])  # fmt: skip
        self.lr, self.momentum = float(self.lr), float(self.momentum)
        self.weight_decay = float(self.weight_decay)
        self.distill = DistillConfig.of(self.distill)

    def train_config(self, **rest: Any) -> TrainConfig:
        """The trainer's config: these fields, the rest (model, dataset, seed, ...) from `rest`
        (which may override `target_accuracy`, once `target_drop` is resolved)."""
        own = {name: getattr(self, name) for name in RETRAIN_FIELDS}
        return TrainConfig(**{**own, **rest})


def _retrain_fields() -> list[tuple[str, Any, Any]]:
    trainer = {f.name: f for f in fields(TrainConfig)}
    out = [(n, trainer[n].type, field(default=d)) for n, d in RETRAIN_FIELDS.items()]
    # retraining's own option: stop once within this of the dense accuracy (0..1)
    return [*out, ("target_drop", "float | None", field(default=None))]


RetrainConfig = make_dataclass("RetrainConfig", _retrain_fields(), bases=(_Retrain,))
RetrainConfig.__doc__ = (
    "Retraining after a prune round or a share step, with `sigdl.core.training.fit`: the "
    "trainer's own fields (RETRAIN_FIELDS, TrainConfig's meaning and checks) with retraining's "
    "defaults, plus `target_drop` (stop once within this of the dense accuracy)."
)
RetrainConfig.__module__ = __name__


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def retrain_config(value: Any) -> RetrainConfig:
    if isinstance(value, RetrainConfig):
        return value
    try:
        return _from_dict(RetrainConfig, value if value is not None else {}, "retrain")
    except InputError as exc:
        text = str(exc)
        raise InputError(text if text.startswith("retrain") else f"retrain.{text}") from None


@dataclass
class StepConfig:
    """Base of every step config: `type` names it in YAML and in the registry."""

    type: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return _without_unset({"type": self.type, **asdict(self)})


def _without_unset(data: dict) -> dict:
    """`data` without the LATER_OPTIONS that are None, at any depth (`retrain.distill`)."""
    return {
        k: _without_unset(v) if isinstance(v, dict) else v
        for k, v in data.items()
        if not (k in LATER_OPTIONS and v is None)
    }


STEP_TYPES: dict[str, type[StepConfig]] = {}
STEPS_PACKAGE = "services.compression.steps"  # one module per step: its handler (and config)


def register_step(cls: type[StepConfig]) -> type[StepConfig]:
    """Register a step config class under its `type` (its handler is registered beside it,
    in `steps/`, with `engine.register_handler`)."""
    STEP_TYPES[cls.type] = cls
    return cls


@functools.cache
def discover_steps() -> dict[str, type[StepConfig]]:
    """Every step type: import each module of `steps/` once, so that a new step is one new
    file there (its config registers with `register_step`, its handler with the engine)."""
    package = importlib.import_module(STEPS_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{STEPS_PACKAGE}.{module.name}")
    return STEP_TYPES


@register_step
@dataclass
class PruneConfig(StepConfig):
    """Magnitude pruning in `rounds` prune→retrain rounds, masks kept through retraining.

    `quality` q prunes |w| <= q * std(layer's unpruned weights at the step's start), as Han et al.
    (NeurIPS 2015); `sparsity` s prunes the round(s * n) smallest |w|. Round r of n reaches
    r/n of the way (`linear`: of the threshold, or of the sparsity from the current one), or
    follows Zhu & Gupta's cubic schedule (`agp`: s_r = s + (s0 - s)(1 - r/n)^3, the quality
    then read as the sparsity it gives on the step's starting weights).
    """

    type: ClassVar[str] = "prune"
    layers: list[str] = field(default_factory=lambda: ["*"])  # names/globs/kinds to prune
    quality: LayerValue | None = None  # threshold = quality * std, per layer
    sparsity: LayerValue | None = None  # or: fraction of each layer's weights set to zero
    # (`planned`: as a sensitivity-guided step before it chose per layer)
    rounds: int = 1  # iterative prune→retrain rounds
    schedule: str = "linear"  # linear | agp: the per-round targets
    retrain: RetrainConfig = field(default_factory=RetrainConfig)  # after every round
    # Dynamic Network Surgery's splicing (Guo, Yao, Chen, NeurIPS 2016): pruned weights keep
    # learning in a shadow copy, and each round's mask is taken from the shadow, so a weight
    # pruned too early comes back (true); null/false: a pruned weight stays pruned
    splice: bool | None = None

    def __post_init__(self) -> None:
        self.layers = check_patterns(self.layers, "layers")
        if self.splice is not None and not isinstance(self.splice, bool):
            raise InputError(f"splice={short(self.splice)}: expected true, false or null")
        if (self.quality is None) == (self.sparsity is None):
            raise InputError(
                f"quality={self.quality!r}, sparsity={self.sparsity!r}: expected exactly one "
                "of quality (threshold = q * std) and sparsity (fraction pruned)"
            )
        if self.quality is not None:
            self.quality = check_layer_value(
                self.quality, "quality", float, lambda v: v > 0, "a number > 0"
            )
        if self.sparsity is not None and self.sparsity != PLANNED:
            self.sparsity = check_layer_value(
                self.sparsity, "sparsity", float, lambda v: 0 <= v < 1, "a fraction in [0, 1)"
            )
        check_all([
            (isinstance(self.rounds, int) and not isinstance(self.rounds, bool)
             and self.rounds >= 1, "rounds", self.rounds, "an integer >= 1"),
            (self.schedule in PRUNE_SCHEDULES, "schedule", self.schedule,
             f"one of {', '.join(PRUNE_SCHEDULES)}"),
        ])  # fmt: skip
        self.retrain = retrain_config(self.retrain)


@register_step
@dataclass
class StructuredConfig(StepConfig):
    """Structured pruning: remove whole output channels (conv filters, fc neurons) with the
    smallest L1/L2 norm (Li et al., ICLR 2017) and shrink the layers that read them, so the
    network is smaller and faster, not only sparser. Channels are removed by group, found on
    the traced graph: the producers a residual add ties lose the same channels (group norm), a
    concatenation maps each side to its channel range, depthwise convs and BatchNorm follow.
    The logits cannot shrink and are skipped. Run it before prune and share.
    """

    type: ClassVar[str] = "structured"
    layers: list[str] = field(default_factory=lambda: ["*"])  # names/globs/kinds to shrink
    fraction: LayerValue | None = None  # fraction of each layer's output channels removed
    norm: str = "l1"  # l1 | l2: the channel importance
    multiple: int = 1  # keep channel counts a multiple of this (vector widths)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def __post_init__(self) -> None:
        self.layers = check_patterns(self.layers, "layers")
        if self.fraction is None:
            raise InputError("fraction=None: expected the fraction of channels to remove")
        self.fraction = check_layer_value(
            self.fraction, "fraction", float, lambda v: 0 <= v < 1, "a fraction in [0, 1)"
        )
        check_all([
            (self.norm in STRUCTURED_NORMS, "norm", self.norm,
             f"one of {', '.join(STRUCTURED_NORMS)}"),
            (isinstance(self.multiple, int) and self.multiple >= 1, "multiple", self.multiple,
             "an integer >= 1"),
        ])  # fmt: skip
        self.retrain = retrain_config(self.retrain)


@register_step
@dataclass
class ShareConfig(StepConfig):
    """Trained weight sharing: a per-layer 1-D k-means codebook of 2**bits entries.

    Entry 0 is fixed at 0.0 for pruned weights; the other 2**bits - 1 centroids cluster the
    nonzero weights (linear initialization between min and max, as Han et al., ICLR 2016), then
    retraining moves each centroid by the summed updates of its weights (`centroid_update: sum`,
    the paper's grouped gradient) or their mean.
    """

    type: ClassVar[str] = "share"
    layers: list[str] = field(default_factory=lambda: ["*"])  # names/globs/kinds to share
    bits: LayerValue = field(default_factory=lambda: {"conv": 8, "fc": 5})  # or `planned`
    init: str = "linear"  # linear | density (CDF quantiles)
    iterations: int = 30  # at most this many Lloyd iterations
    centroid_update: str = "sum"  # sum | mean of the member weights' updates
    codebook: str = "float32"  # float32 | float16: centroids kept representable in this dtype
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    # the biases of these layers get codebooks too (their own, of 2**bits entries), trained
    # like the weights' centroids: at 160x, LeNet-5's float16 biases were 11% of its file
    bias_bits: LayerValue | None = None

    def __post_init__(self) -> None:
        self.layers = check_patterns(self.layers, "layers")
        if self.bits != PLANNED:  # a planner step earlier in the recipe chooses them
            self.bits = check_layer_value(
                self.bits, "bits", int, lambda v: 1 <= v <= 16, "an integer in 1..16"
            )
        if self.bias_bits is not None:
            self.bias_bits = check_layer_value(
                self.bias_bits, "bias_bits", int, lambda v: 1 <= v <= 16, "an integer in 1..16"
            )
        check_all([
            (self.init in SHARE_INITS, "init", self.init, f"one of {', '.join(SHARE_INITS)}"),
            (isinstance(self.iterations, int) and self.iterations >= 0, "iterations",
             self.iterations, "an integer >= 0"),
            (self.centroid_update in CENTROID_UPDATES, "centroid_update", self.centroid_update,
             f"one of {', '.join(CENTROID_UPDATES)}"),
            (self.codebook in CODEBOOK_DTYPES, "codebook", self.codebook,
             f"one of {', '.join(CODEBOOK_DTYPES)}"),
        ])  # fmt: skip
        self.retrain = retrain_config(self.retrain)


@register_step
@dataclass
class HuffmanConfig(StepConfig):
    """A flag for the .sdc writer: Huffman-code the shared-weight indices and the sparse
    relative indices, the latter stored in `index_bits` (a gap that overflows them gets a
    filler zero, as Deep Compression)."""

    type: ClassVar[str] = "huffman"
    index_bits: LayerValue = field(default_factory=lambda: {"conv": 8, "fc": 5})
    # float16: the tensors left unshared (biases, normalization) are rounded to float16 in the
    # model and stored so; the model is evaluated with the rounded values.
    raw_dtype: str = "float32"

    def __post_init__(self) -> None:
        self.index_bits = check_layer_value(
            self.index_bits, "index_bits", int, lambda v: 1 <= v <= 16, "an integer in 1..16"
        )
        check_all([(self.raw_dtype in ("float32", "float16"), "raw_dtype", self.raw_dtype,
                "float32 or float16")])  # fmt: skip


@register_step
@dataclass
class QuantizeConfig(StepConfig):
    """Fixed-point quantization for integer targets: weights symmetric per output channel on
    a `weight_bits` grid (zero point 0, so pruned weights stay 0), activations 8-bit (affine
    uint8 with a zero point, or symmetric int8) with ranges calibrated on training images,
    32-bit accumulation in the integer kernels. `retrain.epochs` 0 is post-training
    quantization; more is quantization-aware training (fake quantization with a
    straight-through gradient). The stage also writes `model.int8.onnx` (ONNX QDQ)."""

    type: ClassVar[str] = "quantize"
    layers: list[str] = field(default_factory=lambda: ["*"])  # names/globs/kinds to quantize
    weight_bits: LayerValue = 8  # 2..8 bits per weight (levels -(2**(b-1)-1)..2**(b-1)-1)
    activations: str = "affine"  # affine (uint8) | symmetric (int8)
    method: str = "minmax"  # minmax | percentile | entropy: how activation ranges are read
    calibration_samples: int = 512  # training images that calibrate the activation ranges
    retrain: RetrainConfig = field(default_factory=lambda: RetrainConfig(epochs=0))

    def __post_init__(self) -> None:
        self.layers = check_patterns(self.layers, "layers")
        self.weight_bits = check_layer_value(
            self.weight_bits, "weight_bits", int, lambda v: 2 <= v <= 8, "an integer in 2..8"
        )
        check_all([
            (self.activations in ACTIVATION_SCHEMES, "activations", self.activations,
             f"one of {', '.join(ACTIVATION_SCHEMES)}"),
            (self.method in CALIBRATION_METHODS, "method", self.method,
             f"one of {', '.join(CALIBRATION_METHODS)}"),
            (isinstance(self.calibration_samples, int) and self.calibration_samples >= 1,
             "calibration_samples", self.calibration_samples, "an integer >= 1"),
        ])  # fmt: skip
        self.retrain = retrain_config(self.retrain)


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------


def step_from_dict(data: Any, where: str = "step") -> StepConfig:
    """One step from `{type: NAME, ...options}` (or the YAML shorthand `{NAME: {options}}`)."""
    if isinstance(data, Mapping) and "type" not in data and len(data) == 1:
        ((kind, options),) = data.items()
        data = {"type": kind, **(options or {})} if isinstance(options, Mapping | None) else data
    if not isinstance(data, Mapping) or "type" not in data:
        types = ", ".join(discover_steps())
        raise InputError(f"{where}: expected a mapping with a 'type' ({types})")
    kind, types = data["type"], discover_steps()
    if not isinstance(kind, str) or kind not in types:
        raise InputError(
            f"{where}: unknown step type {short(kind)}; registered: {', '.join(sorted(types))}"
        )
    options = {k: v for k, v in data.items() if k != "type"}
    try:
        return _from_dict(types[kind], options, f"{where} ({kind})")
    except InputError as exc:
        text = str(exc)
        raise InputError(text if text.startswith(where) else f"{where} ({kind}): {text}") from None


@dataclass
class Recipe:
    """An ordered list of compression steps."""

    name: str  # built-in name or the file's stem
    steps: list[StepConfig]
    description: str = ""
    seed: int = 0  # model-independent randomness: batch order of every retraining
    source: str | None = field(default=None, compare=False)  # the file it came from

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"name={short(self.name)}: expected a non-empty string")
        if len(self.name) > MAX_NAME_CHARS:
            raise InputError(f"name={short(self.name)}: expected at most {MAX_NAME_CHARS} chars")
        if not isinstance(self.description, str) or len(self.description) > MAX_DESCRIPTION:
            raise InputError(
                f"description={short(self.description)}: expected a string of at most "
                f"{MAX_DESCRIPTION} characters"
            )
        if not isinstance(self.steps, list) or not self.steps:
            raise InputError(f"steps={short(self.steps)}: expected a non-empty list of steps")
        if len(self.steps) > MAX_STEPS:
            raise InputError(f"steps: {len(self.steps)} steps, expected at most {MAX_STEPS}")
        if (
            not isinstance(self.seed, int)
            or isinstance(self.seed, bool)
            or not 0 <= self.seed < 2**63
        ):
            raise InputError(f"seed={short(self.seed)}: expected an integer in 0..2**63-1")
        self.steps = [
            s if isinstance(s, StepConfig) else step_from_dict(s, f"steps[{i}]")
            for i, s in enumerate(self.steps)
        ]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "steps": [s.to_dict() for s in self.steps],
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "recipe") -> Recipe:
        if not isinstance(data, Mapping):
            raise InputError(f"{where}: expected a mapping with 'name' and 'steps'")
        known = ("name", "description", "seed", "steps")
        unknown = sorted((k for k in data if k not in known), key=str)
        if unknown:
            raise InputError(
                f"{where}: unknown field(s) {', '.join(map(short, unknown[:5]))}; "
                f"expected some of {', '.join(known)}"
            )
        if "steps" not in data:
            raise InputError(f"{where}: missing 'steps'")
        try:
            return cls(
                name=data.get("name", Path(where).stem),
                steps=data["steps"],
                description="" if data.get("description") is None else data["description"],
                seed=data.get("seed", 0),
                source=where,
            )
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None

    def canonical_json(self) -> str:
        """What the digest covers: the steps with every default filled in, and the seed."""
        body = {"seed": self.seed, "steps": [s.to_dict() for s in self.steps]}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)

    def digest(self) -> str:
        """sha256 of the canonical JSON: equal for recipes that do the same thing, whatever
        their name, description, key order or spelled-out defaults."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def list_recipes() -> list[str]:
    """Names of the built-in recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name, or a user's YAML file; errors name the file, step and field."""
    path = Path(name_or_path)
    if not _is_file(path):
        builtin = RECIPES_DIR / f"{name_or_path}.yaml"
        if not _is_file(builtin):
            raise InputError(
                f"recipe {short(str(name_or_path))} is neither a file nor a built-in recipe "
                f"(built-ins: {', '.join(list_recipes())})"
            )
        path = builtin
    data = load_yaml_file(path)
    if isinstance(data, Mapping) and "name" not in data:
        data = {**data, "name": path.stem}
    return Recipe.from_dict(data, where=str(path))
