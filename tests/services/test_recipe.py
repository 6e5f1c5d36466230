"""Compression recipes: built-ins load, configs round-trip through JSON, the digest is stable,
and bad files fail with the file, the step index and the field named."""

import json

import pytest

from services.compression.engine import plan_recipe
from services.compression.prune import find_layers
from services.compression.recipe import (
    STEP_TYPES,
    PruneConfig,
    Recipe,
    RetrainConfig,
    ShareConfig,
    list_recipes,
    load_recipe,
    value_for,
)
from sigdl.core import zoo
from sigdl.core.errors import InputError

BUILT_INS = ["deep-compression", "deep-compression-lenet-300-100", "deep-compression-lenet-5"]


def write(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_built_ins_are_listed_and_load():
    assert set(BUILT_INS) <= set(list_recipes())
    for name in BUILT_INS:
        recipe = load_recipe(name)
        assert recipe.name == name and [s.type for s in recipe.steps][-1] == "huffman"
        assert isinstance(recipe.steps[0], PruneConfig) and recipe.steps[0].rounds >= 1


def test_built_ins_plan_against_their_models():
    for name, model in [
        ("deep-compression-lenet-300-100", "lenet-300-100"),
        ("deep-compression-lenet-5", "lenet-5"),
        ("deep-compression", "lenet-5"),
        ("deep-compression", "lenet-300-100"),
    ]:
        layers = find_layers(zoo.build_model(model))
        plan = plan_recipe(load_recipe(name), layers, model)
        assert set(plan[0]) == set(layers)  # every conv/fc weight is pruned and shared
        assert set(plan[1]) == set(layers)


@pytest.mark.parametrize("name", BUILT_INS)
def test_json_round_trip(name):
    recipe = load_recipe(name)
    again = Recipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert again == recipe
    assert again.digest() == recipe.digest()


def test_digest_ignores_names_key_order_and_spelled_out_defaults(tmp_path):
    short = write(
        tmp_path,
        "name: a\nsteps:\n  - prune: {sparsity: {fc1: 0.9}}\n  - share: {bits: {fc: 5}}\n",
        "a.yaml",
    )
    long = write(
        tmp_path,
        "name: b\ndescription: the same thing\nseed: 0\nsteps:\n"
        "  - {type: prune, rounds: 1, schedule: linear, sparsity: {fc1: 0.9}, layers: ['*']}\n"
        "  - {bits: {fc: 5}, type: share, init: linear, retrain: {epochs: 1, lr: 0.01}}\n",
        "b.yaml",
    )
    a, b = load_recipe(short), load_recipe(long)
    assert a.digest() == b.digest() and len(a.digest()) == 64
    changed = Recipe.from_dict({**a.to_dict(), "seed": 1})
    assert changed.digest() != a.digest()
    # the digest is a pure function of the content: stable across processes and runs
    assert load_recipe(short).digest() == a.digest()


def test_unknown_step_type_lists_registered(tmp_path):
    path = write(tmp_path, "steps:\n  - prune: {quality: 1.0}\n  - quantise: {bits: 8}\n")
    with pytest.raises(InputError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message and "steps[1]" in message and "'quantise'" in message
    for registered in STEP_TYPES:
        assert registered in message


@pytest.mark.parametrize(
    ("step", "needles"),
    [
        ("share: {bits: {fc: 20}}", ["steps[0]", "(share)", "bits['fc']=20", "1..16"]),
        ("share: {bits: 5, init: kmeans++}", ["init='kmeans++'", "linear, density"]),
        ("prune: {quality: 1.0, rouns: 3}", ["unknown field(s) 'rouns'", "rounds"]),
        ("prune: {quality: -1}", ["quality=-1:", "> 0"]),
        ("prune: {sparsity: {fc1: 1.5}}", ["sparsity['fc1']=1.5", "[0, 1)"]),
        ("prune: {}", ["exactly one of quality", "sparsity"]),
        ("prune: {quality: 1, sparsity: 0.5}", ["exactly one of quality"]),
        ("prune: {quality: 1, retrain: {lr: -0.1}}", ["retrain.lr=-0.1", "> 0"]),
        ("prune: {quality: 1, retrain: {epochs: 1, lrr: 1}}", ["retrain", "'lrr'"]),
        ("prune: {quality: 1, schedule: cubic}", ["schedule='cubic'", "linear, agp"]),
        ("huffman: {index_bits: {conv: 0}}", ["index_bits['conv']=0"]),
    ],
)
def test_bad_fields_are_named_with_file_and_step(tmp_path, step, needles):
    path = write(tmp_path, f"steps:\n  - {step}\n")
    with pytest.raises(InputError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message and "steps[0]" in message
    for needle in needles:
        assert needle in message, message
    assert "\n" not in message


def test_file_level_errors(tmp_path):
    with pytest.raises(InputError, match="not valid YAML at line 2 "):
        load_recipe(write(tmp_path, "steps:\n  - prune: {quality: 1}}\n"))
    with pytest.raises(InputError, match=r"unknown field.*'stpes'"):
        load_recipe(write(tmp_path, "stpes: []\n"))
    with pytest.raises(InputError, match=r"steps=\[\]"):
        load_recipe(write(tmp_path, "steps: []\n"))
    with pytest.raises(InputError) as err:
        load_recipe("no-such-recipe")
    assert "deep-compression-lenet-5" in str(err.value)  # the built-ins are listed


def test_configs_validate_on_construction():
    with pytest.raises(InputError, match="bits=0"):
        ShareConfig(bits=0)
    with pytest.raises(InputError, match="target_drop"):
        RetrainConfig(target_accuracy=0.9, target_drop=0.01)
    assert ShareConfig(bits={"fc": 5.0}).bits == {"fc": 5}  # integral floats are accepted
    quality = PruneConfig(quality=1).quality
    assert quality == 1.0 and isinstance(quality, float)


def test_most_specific_key_wins_whatever_the_order():
    value = {"*": 1, "fc": 2, "fc*": 3, "fc1": 4, "f*": 5}
    assert value_for(value, "fc1", "fc") == 4
    assert value_for(value, "fc2", "fc") == 3  # longest glob before the shorter one
    assert value_for(value, "conv1", "conv") == 1
    assert value_for({"fc": 2, "*": 1}, "head", "fc") == 2
    assert value_for({"fc1": 1}, "fc2", "fc") is None  # not covered: left alone
    assert value_for(0.5, "anything", "conv") == 0.5


def test_plan_names_unknown_layers_and_prune_after_share():
    layers = find_layers(zoo.build_model("lenet-300-100"))
    typo = Recipe("t", [{"type": "prune", "sparsity": {"fc9": 0.5}}])
    with pytest.raises(InputError) as err:
        plan_recipe(typo, layers, "lenet-300-100")
    assert "'fc9'" in str(err.value) and "fc1, fc2, fc3" in str(err.value)
    # kinds the model lacks are fine: the generic recipe names conv on an MLP
    plan = plan_recipe(Recipe("t", [{"type": "share", "bits": {"conv": 8, "fc": 5}}]), layers)
    assert plan == [{"fc1.weight": 5, "fc2.weight": 5, "fc3.weight": 5}]  # a bare net's keys
    late = Recipe("t", [{"type": "share", "bits": 5}, {"type": "prune", "quality": 1.0}])
    with pytest.raises(InputError, match=r"already fixed on a codebook or grid by steps\[0\]"):
        plan_recipe(late, layers)
