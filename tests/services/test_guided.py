"""The sensitivity-guided planner (greedy, deterministic, within its budget), distillation from
the dense model in retraining, shared biases, the recipe options' bad input, and a planned
recipe end to end on digits (LeNet-300-100, 3 epochs) with its choices in the report."""

import json

import pytest
import torch
from torch import nn

from services.compression.engine import compress, plan_recipe
from services.compression.planner import Option, greedy_plan
from services.compression.prune import Splicer, find_layers
from services.compression.recipe import Recipe, list_recipes, load_recipe
from services.compression.stage import run_compression
from services.training.stage import run_training
from sigdl.core import zoo
from sigdl.core.checkpoint import load_checkpoint
from sigdl.core.datasets import adapt, load_dataset
from sigdl.core.errors import InputError
from sigdl.core.sdc import SharedTensor, read_sdc
from sigdl.core.training import DistillConfig, TrainConfig, distillation_loss, fit

SPARSITIES = [0.5, 0.8, 0.9, 0.95]
BITS = [5, 4, 3]  # descending: index 0 is the least compressed


def grid(n: int, loss_per_sparsity: list[float], loss_per_bit: list[float]) -> dict:
    """A layer of n weights: ~ (1 - s) * n nonzeros at b + 4 bits each; losses add up."""
    return {
        (i, j): Option(s, b, (1 - s) * n * (b + 4) / 8, loss_per_sparsity[i] + loss_per_bit[j], 0)
        for i, s in enumerate(SPARSITIES)
        for j, b in enumerate(BITS)
    }


def options() -> dict:
    return {
        "big": grid(100_000, [0.0, 0.01, 0.02, 0.2], [0.0, 0.001, 0.05]),  # tolerant, large
        "small": grid(2_000, [0.0, 0.1, 0.3, 0.9], [0.0, 0.02, 0.2]),  # sensitive, small
    }


def total(choices: dict, opts: dict) -> float:
    return sum(opts[n][(SPARSITIES.index(c.sparsity), BITS.index(c.bits))].bytes
               for n, c in choices.items())  # fmt: skip


# --- the planner -----------------------------------------------------------------------------


def test_planner_spends_the_budget_on_the_tolerant_large_layer():
    opts = options()
    choices = greedy_plan(opts, SPARSITIES, BITS, budget=0.05)
    assert sum(c.loss for c in choices.values()) <= 0.05 + 1e-12
    # the cheap notches of `big` save far more bytes per nat than any of `small`
    assert (choices["big"].sparsity, choices["big"].bits) == (0.9, 4)  # 0.95 costs 0.18
    assert (choices["small"].sparsity, choices["small"].bits) == (0.5, 5)
    assert "budget spent" in choices["big"].why and "sweep loss" in choices["big"].why


def test_planner_is_deterministic_and_stops_at_the_size_target():
    opts = options()
    start = total(greedy_plan(opts, SPARSITIES, BITS, target_bytes=1e12), opts)
    target = start / 8
    a = greedy_plan(opts, SPARSITIES, BITS, target_bytes=target)
    b = greedy_plan(dict(reversed(opts.items())), SPARSITIES, BITS, target_bytes=target)
    assert a == b
    assert total(a, opts) <= target
    # a target the least compressed options already meet moves nothing
    untouched = greedy_plan(opts, SPARSITIES, BITS, target_bytes=start)
    assert {(c.sparsity, c.bits) for c in untouched.values()} == {(0.5, 5)}
    assert all("size target reached" in c.why for c in untouched.values())


def test_planner_with_both_limits_stops_at_the_first_and_needs_one():
    opts = options()
    tight = greedy_plan(opts, SPARSITIES, BITS, target_bytes=1.0, budget=0.011)
    assert sum(c.loss for c in tight.values()) <= 0.011
    with pytest.raises(InputError, match="target_bytes or budget"):
        greedy_plan(opts, SPARSITIES, BITS)


# --- distillation ----------------------------------------------------------------------------


def test_distillation_loss_is_hintons_blend():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    cfg = DistillConfig(weight=0.7, temperature=3.0)
    p_t = torch.softmax(t / 3, 1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / 3, 1))).sum(1).mean()
    expected = 0.3 * nn.functional.cross_entropy(s, y) + 0.7 * 9 * kl
    assert distillation_loss(s, t, y, cfg).item() == pytest.approx(expected.item(), rel=1e-5)
    # a student that already matches its teacher pays only the hard-label term
    same = distillation_loss(s, s.clone(), y, cfg)
    assert same.item() == pytest.approx(0.3 * nn.functional.cross_entropy(s, y).item(), rel=1e-5)


def test_fit_with_a_teacher_learns_the_teachers_answers_not_the_labels():
    torch.manual_seed(0)
    data = load_dataset("digits")
    student = zoo.build_model("lenet-300-100", input_size=28, channels=1, classes=10)
    shifted = (data.train.labels + 1) % 10  # a teacher that is consistently "wrong"
    teacher = 8.0 * nn.functional.one_hot(shifted, 10).float()
    cfg = TrainConfig(model="lenet-300-100", dataset="digits", epochs=5, lr=0.05,
                      distill=DistillConfig(weight=1.0, temperature=2.0))  # fmt: skip
    fit(student, data.train, cfg, 1, 28, teacher=teacher)
    with torch.no_grad():
        predicted = student.eval()(adapt(data.train.images, 1, 28)).argmax(1)
    assert (predicted == shifted).float().mean() > 0.8  # weight 1: the labels play no part
    with pytest.raises(InputError, match="teacher's logits"):
        fit(student, data.train, cfg, 1, 28)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


# --- recipes: parsing, digests, bad input ----------------------------------------------------


def test_existing_recipes_keep_their_digest_when_new_options_are_unset(tmp_path):
    recipe = load_recipe("sparse-lenet-5")
    data = recipe.to_dict()
    assert "distill" not in json.dumps(data) and "bias_bits" not in json.dumps(data)
    data["steps"][1]["retrain"]["distill"] = None
    data["steps"][1]["bias_bits"] = None
    assert Recipe.from_dict(data).digest() == recipe.digest()
    data["steps"][1]["retrain"]["distill"] = {"weight": 0.5, "temperature": 4}
    again = Recipe.from_dict(data)
    assert again.digest() != recipe.digest()
    assert Recipe.from_dict(json.loads(json.dumps(again.to_dict()))) == again


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            "{type: prune, sparsity: 0.5, retrain: {distill: {weight: 2}}}",
            "retrain.distill.weight=2: expected a number in (0, 1]",
        ),
        (
            "{type: prune, sparsity: 0.5, retrain: {distill: 4}}",
            "retrain.distill=4: expected a mapping",
        ),
        (
            "{type: prune, sparsity: 0.5, retrain: {distill: {heat: 4}}}",
            "retrain.distill: unknown field(s) 'heat'",
        ),
        ("{type: share, bias_bits: 0}", "bias_bits=0: expected an integer in 1..16"),
        ("{type: sensitivity-guided}", "expected a target_ratio"),
        ("{type: sensitivity-guided, target_ratio: 0.5}", "target_ratio=0.5"),
        (
            "{type: sensitivity-guided, budget: 1, sparsities: [0.5, 1.5]}",
            "sparsities: 1.5 is not one of the fractions in [0, 1)",
        ),
        ("{type: sensitivity-guided, budget: 1, bits: []}", "bits=[]"),
        ("{type: sensitivity-guided, budget: 1, samples: 0}", "samples=0"),
    ],
)
def test_bad_options_fail_in_one_line_naming_the_field(tmp_path, step, message):
    path = tmp_path / "r.yaml"
    path.write_text(f"steps:\n  - {step}\n")
    with pytest.raises(InputError) as info:
        load_recipe(path)
    text = str(info.value)
    assert "\n" not in text and message in text and "steps[0]" in text


def test_planned_values_need_a_planner_before_them(tmp_path):
    layers = find_layers(zoo.build_model("lenet-300-100"))
    path = tmp_path / "r.yaml"
    path.write_text("steps:\n  - {type: prune, sparsity: planned}\n  - {type: huffman}\n")
    with pytest.raises(InputError, match=r"sparsity 'planned' for layer 'fc1'.*no sensitivity"):
        plan_recipe(load_recipe(path), layers, "lenet-300-100")
    path.write_text(
        "steps:\n  - {type: sensitivity-guided, layers: [fc1], budget: 0.1}\n"
        "  - {type: prune, sparsity: planned}\n"
    )
    with pytest.raises(InputError, match="layer 'fc2'"):  # fc1 is planned, fc2 is not
        plan_recipe(load_recipe(path), layers, "lenet-300-100")


def test_aim_recipes_load_and_plan_against_their_models():
    aims = [n for n in list_recipes() if n.startswith("aim-")]
    assert aims
    for name in aims:
        model = "lenet-5" if "lenet-5" in name else "lenet-300-100"
        layers = find_layers(zoo.build_model(model))
        plan = plan_recipe(load_recipe(name), layers, model)
        assert any(set(targets) == set(layers) for targets in plan)


# --- end to end ------------------------------------------------------------------------------

PLANNED_RECIPE = """
name: planned-small
seed: 0
steps:
  - type: sensitivity-guided
    target_ratio: 12
    sparsities: [0.5, 0.8, 0.9, 0.95]
    bits: [5, 4, 3]
    samples: 300
  - type: prune
    sparsity: planned
    rounds: 2
    schedule: agp
    retrain: {epochs: 1, lr: 0.01, distill: {weight: 0.5, temperature: 4}}
  - type: share
    bits: planned
    bias_bits: 4
    codebook: float16
    retrain: {epochs: 1, lr: 0.001, distill: {weight: 0.5, temperature: 4}}
  - type: huffman
    index_bits: 8
"""


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lenet-300-100")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        mp.setenv("SIGDL_PROGRESS", "0")
        run_training(TrainConfig(model="lenet-300-100", dataset="digits", epochs=3), out)
    return out


def test_planned_recipe_end_to_end_writes_its_choices(checkpoint_dir, tmp_path):
    recipe = tmp_path / "planned-small.yaml"
    recipe.write_text(PLANNED_RECIPE)
    report = run_compression(checkpoint_dir, recipe, "digits", tmp_path / "out")
    plan = report["plan"]
    assert set(plan) == {"fc1", "fc2", "fc3"}
    for name, choice in plan.items():
        assert choice["sparsity"] in (0.5, 0.8, 0.9, 0.95) and choice["bits"] in (3, 4, 5)
        assert "sweep loss" in choice["why"]
        assert report["bits"][f"net.{name}.weight"] == choice["bits"]
    # the prune step reached the planned sparsity of every layer
    rounds = report["ladder"][2]["rounds"]
    for name, choice in plan.items():
        assert rounds[-1]["sparsity"][name] == pytest.approx(choice["sparsity"], abs=1e-3)
    planned = report["ladder"][1]
    assert planned["step"] == "sensitivity-guided" and planned["planned_ratio"] >= 12
    assert planned["accuracy"] == report["ladder"][0]["accuracy"]  # it only plans
    # biases on 4-bit codebooks, in the file and in the decoded model
    sdc = read_sdc(tmp_path / "out" / "model.sdc")
    entries = {e["name"]: e for e in sdc.header["tensors"]}
    assert entries["net.fc1.bias"]["encoding"] == "shared"
    assert entries["net.fc1.bias"]["params"]["k"] == 16
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "The planner's choices" in markdown and "| fc1 |" in markdown


def test_shared_biases_stay_on_their_codebook_through_retraining(checkpoint_dir):
    model, meta = load_checkpoint(checkpoint_dir)
    recipe = Recipe.from_dict({"name": "b", "steps": [
        {"type": "prune", "sparsity": 0.8, "retrain": {"epochs": 0}},
        {"type": "share", "bits": 4, "bias_bits": {"fc3": 3, "fc": 5},
         "retrain": {"epochs": 1, "lr": 0.01, "max_train_samples": 640}},
    ]})  # fmt: skip
    result = compress(model, recipe, load_dataset("digits"), meta)
    for key, k in (("net.fc1.bias", 32), ("net.fc3.bias", 8)):
        tensor = result.tensors[key]
        assert isinstance(tensor, SharedTensor) and tensor.codebook.size == k
        assert torch.equal(torch.from_numpy(tensor.values()), model.state_dict()[key])
    assert result.ladder[-1]["bias_bits"] == {"fc1": 5, "fc2": 5, "fc3": 3}


# --- splicing (Dynamic Network Surgery) ------------------------------------------------------


def test_splicer_keeps_the_pruned_weights_updates_in_its_shadow():
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    masks = {"w": torch.tensor([True, True, False, False])}
    splicer = Splicer({"w": w}, masks)
    splicer.shadow["w"].copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    w.mul_(masks["w"])  # the model holds shadow * mask: [1, -2, 0, 0]
    w.add_(torch.tensor([0.1, 0.1, 0.2, -0.5]))  # an optimizer step moves every entry
    splicer()
    assert torch.allclose(splicer.shadow["w"], torch.tensor([1.1, -1.9, 0.7, 2.5]))


def test_a_splicing_prune_step_reaches_its_sparsity_and_holds_its_mask(checkpoint_dir):
    model, meta = load_checkpoint(checkpoint_dir)
    recipe = Recipe.from_dict({"name": "s", "steps": [{
        "type": "prune", "sparsity": {"fc1": 0.9}, "layers": ["fc1"], "rounds": 3,
        "schedule": "agp", "splice": True,
        "retrain": {"epochs": 1, "lr": 0.05, "max_train_samples": 640},
    }]})  # fmt: skip
    result = compress(model, recipe, load_dataset("digits"), meta)
    sparsities = [r["sparsity"]["fc1"] for r in result.ladder[-1]["rounds"]]
    final = result.masks["net.fc1.weight"]
    assert 1 - final.float().mean().item() == pytest.approx(0.9, abs=1e-3)
    assert sparsities == sorted(sparsities) and len(sparsities) == 3  # AGP rounds, rising
    assert torch.equal(model.net.fc1.weight.detach() != 0, final)  # the model holds the mask
    with pytest.raises(InputError, match="splice='yes': expected true, false or null"):
        Recipe.from_dict({"name": "s", "steps": [{"type": "prune", "sparsity": 0.5,
                                                   "splice": "yes"}]})  # fmt: skip
