"""Property-based tests (hypothesis) over recipe YAML, loop configs and `model.json`.

Whatever the input, reading it either gives a valid object or raises an InputError with one
short line; never another exception, never a message that quotes the whole input.
"""

from __future__ import annotations

import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.compression.recipe import Recipe
from sigdl.core import checkpoint
from sigdl.core.errors import InputError
from sigdl.core.yamlio import dump_yaml, load_yaml
from tests.badinput.test_yaml import LINE_CHARS

PROFILE = settings(max_examples=150, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=6),
    max_leaves=30,
)  # fmt: skip
STEP_KINDS = ["prune", "share", "quantize", "huffman", "structured", "fft-conv", "nope"]
STEP_KEYS = ["sparsity", "quality", "rounds", "bits", "layers", "index_bits", "retrain",
             "weight_bits", "fraction", "init", "epochs", "x"]  # fmt: skip
steps = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(STEP_KINDS)},
        optional={k: values for k in STEP_KEYS},
    ),
    max_size=4,
)
recipes = st.fixed_dictionaries(
    {"steps": steps | values},
    optional={"name": values, "description": values, "seed": values, "extra": values},
)


def _short_line(exc: BaseException) -> None:
    text = str(exc)
    assert "\n" not in text and len(text) < LINE_CHARS, text


@PROFILE
@given(recipes)
def test_any_recipe_mapping_is_a_recipe_or_one_short_input_error(data):
    try:
        text = dump_yaml(data)
    except yaml.YAMLError:
        return  # not representable as YAML: nothing a user could write
    try:
        recipe = Recipe.from_dict(load_yaml(text, "r.yaml"), where="r.yaml")
    except InputError as exc:
        _short_line(exc)
        return
    # what loads round-trips through JSON with the same digest (it travels over gRPC/KFP)
    again = Recipe.from_dict(json.loads(json.dumps(recipe.to_dict())), where="again")
    assert again.digest() == recipe.digest()
    assert isinstance(recipe.description, str) and 0 <= recipe.seed < 2**63


@PROFILE
@given(st.text(max_size=400))
def test_any_text_is_yaml_data_or_one_short_yaml_error(text):
    try:
        load_yaml(text, "t.yaml")
    except InputError as exc:
        _short_line(exc)


@PROFILE
@given(st.dictionaries(st.sampled_from(["&a", "*a", "<<", "a"]), st.sampled_from(["&a x", "*a"]),
                       min_size=1))  # fmt: skip
def test_anchors_and_aliases_never_load(pairs):
    text = "\n".join(f"k{i}: {v}" for i, v in enumerate(pairs.values()))
    try:
        load_yaml(text, "t.yaml")
    except InputError as exc:
        assert "anchors and aliases" in str(exc) or "not valid YAML" in str(exc)
    else:
        raise AssertionError(f"{text!r} loaded")


META = {**checkpoint.ModelMeta(model="lenet-300-100", input_size=8, channels=1, classes=10,
                               mean=[0.5], std=[0.5]).to_json(),
        "format": checkpoint.FORMAT}  # fmt: skip
META_FIELDS = ["model", "input_size", "channels", "classes", "mean", "std", "class_names",
               "dataset", "adapt_mode", "metrics", "train_config", "format"]  # fmt: skip


@PROFILE
@given(st.dictionaries(st.sampled_from(META_FIELDS), values, max_size=4))
def test_any_model_json_is_bounded_or_one_short_input_error(changes):
    try:
        meta = checkpoint.ModelMeta.from_json({**META, **changes}, where="model.json")
    except InputError as exc:
        _short_line(exc)
        return
    assert 1 <= meta.input_size <= checkpoint.MAX_INPUT_SIZE
    assert 1 <= meta.channels <= checkpoint.MAX_CHANNELS
    assert meta.channels * meta.input_size**2 <= checkpoint.MAX_PIXELS
    assert len(meta.mean) in (1, meta.channels) and all(s > 0 for s in meta.std)
