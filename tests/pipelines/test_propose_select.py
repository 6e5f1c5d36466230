"""Proposals follow the failure, and select gates each target against the dense model.

Plain functions on hand-built results and real files under a temporary artifact root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines import propose, steps
from pipelines.controller import LoopConfig, first_candidates
from pipelines.results import Candidate, CandidateResult, RunVerdict
from services.compression.recipe import Recipe, load_recipe
from sigdl.core.errors import InputError
from sigdl.core.lineage import RunContext


def _result(target="movidius-ma2450", failures=(), ops=(), **numbers) -> CandidateResult:
    cand = Candidate(id="i1-c0", iteration=1, target=target, recipe="deep-compression-lenet-5")
    base = {"accuracy": 0.95, "baseline_accuracy": 0.96, "accuracy_drop_pp": 1.0,
            "latency_ms": 2.0, "fps": 500.0, "size_kb": 20.0}  # fmt: skip
    return CandidateResult(candidate=cand.to_json(), failures=list(failures),
                           unsupported_ops=list(ops), passed=not failures,
                           **{**base, **numbers})  # fmt: skip


def _recipe() -> dict:
    return load_recipe("deep-compression-lenet-5").to_dict()


def _valid(recipe: dict) -> Recipe:
    return Recipe.from_dict(propose.clean_recipe(recipe, "proposed", "test"))


def test_a_size_that_is_not_a_multiple_of_8_gets_structured_pruning_to_multiples_of_8():
    result = _result(failures=["operators supported"],
                     ops=["/fc2/Gemm (Gemm): input size 500 is not a multiple of 8"])  # fmt: skip
    recipe, why = propose.revise(result, _recipe())
    first = recipe["steps"][0]
    assert first["type"] == "structured" and first["multiple"] == 8
    assert "multiple of 8" in why[0] and "movidius-ma2450" in why[0]
    assert _valid(recipe).steps[0].multiple == 8


def test_accuracy_short_is_gentler_and_retrains_longer():
    before = _recipe()
    recipe, why = propose.revise(_result(failures=["accuracy_drop<=1"], accuracy_drop_pp=4.4),
                                 before)  # fmt: skip
    old, new = before["steps"][0], recipe["steps"][0]
    assert new["sparsity"]["fc1"] < old["sparsity"]["fc1"]
    assert new["retrain"]["epochs"] == old["retrain"]["epochs"] + 2
    assert recipe["steps"][1]["bits"]["fc"] == before["steps"][1]["bits"]["fc"] + 1
    assert "4.40 points" in why[0]
    _valid(recipe)


def test_speed_short_adds_structured_pruning_and_size_short_prunes_harder():
    recipe, why = propose.revise(_result(failures=["fps>=1000"], fps=500.0), _recipe())
    assert recipe["steps"][0]["type"] == "structured" and "structured" in why[0]
    before = _recipe()
    recipe, why = propose.revise(_result(failures=["size_kb<=5"]), before)
    assert recipe["steps"][0]["sparsity"]["fc1"] > before["steps"][0]["sparsity"]["fc1"]
    _valid(recipe)


def test_an_operator_without_a_known_fix_proposes_nothing():
    result = _result(failures=["operators supported"], ops=["/c/Conv (Conv): kernel 7x7s2 no"])
    assert propose.revise(result, _recipe())[1] == []


def _write_candidate(root: Path, cid: str, target: str) -> str:
    folder = root / "candidates" / cid / "compress"
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps({"recipe": _recipe()}))
    return folder.as_uri()


def test_select_fails_a_target_whose_compression_lost_accuracy_and_proposes(tmp_path: Path):
    """The gate reads the drop against the dense model: 4.4 points lost fails accuracy_drop<=1
    even though the candidate's own fp32 and target accuracies agree."""
    run_uri = tmp_path.as_uri()
    lost = _result(target="arm-cortex-a53", failures=["accuracy_drop<=1"], accuracy=0.916,
                   baseline_accuracy=0.96, accuracy_drop_pp=4.4)  # fmt: skip
    lost = CandidateResult.from_json(
        {**lost.to_json(), "compressed_uri": _write_candidate(tmp_path, "i1-c0", "arm-cortex-a53")}
    )
    verdict = steps.select(run_uri, [lost], ["arm-cortex-a53"], RunContext(iteration=1))
    assert verdict.passed is False
    assert "accuracy_drop<=1" in verdict.targets["arm-cortex-a53"]["why"]
    (proposal,) = verdict.proposals
    assert proposal["id"] == "i2-c0" and proposal["iteration"] == 2
    body = yaml.safe_load(Path(proposal["recipe"].removeprefix("file://")).read_text())
    assert body["steps"][0]["sparsity"]["fc1"] < _recipe()["steps"][0]["sparsity"]["fc1"]
    written = RunVerdict.from_json(json.loads((tmp_path / "verdict.json").read_text()))
    assert written == verdict


def test_select_picks_the_smallest_passing_candidate(tmp_path: Path):
    a = _result(target="arm-cortex-a53", size_kb=30.0)
    b = CandidateResult.from_json(
        {
            **_result(target="arm-cortex-a53", size_kb=12.0).to_json(),
            "candidate": {**a.candidate, "id": "i1-c1"},
        }
    )
    verdict = steps.select(tmp_path.as_uri(), [a, b], ["arm-cortex-a53"], RunContext())
    assert verdict.passed and verdict.targets["arm-cortex-a53"]["best"] == "i1-c1"


def test_default_config_gives_every_recipe_for_every_target():
    cfg = LoopConfig()
    pairs = [(c.target, c.recipe) for c in first_candidates(cfg)]
    assert pairs == [(t, r) for t in ("arm-cortex-a53", "movidius-ma2450")
                     for r in ("deep-compression-lenet-5", "sparse-lenet-5")]  # fmt: skip


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs: [1\n", "not valid YAML"),
        ("epoch: 3\n", "unknown key(s) epoch"),
        ("- 1\n", "mapping"),
        ("targets: arm-cortex-a53\n", "targets='arm-cortex-a53': expected a list"),
        ("max_iterations: 0\n", "max_iterations=0"),
    ],
)
def test_bad_config_is_an_input_error(tmp_path, text, message):
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        LoopConfig.from_file(path)
    assert message in str(caught.value)


def test_results_round_trip_and_refuse_unknown_keys():
    result = _result()
    assert CandidateResult.from_json(result.dumps()) == result
    with pytest.raises(InputError, match="unknown key"):
        Candidate.from_json({"id": "x", "iteration": 1, "target": "t", "recipe": "r", "x": 1})
