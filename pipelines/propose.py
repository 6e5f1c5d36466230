"""The next candidates after a failed gate: each a recipe a person can read, built from the
candidate that came closest, changed where its gate failed.

The rules follow the failure (ARCHITECTURE.md, the loop):
- an operator the target refuses because a size is not a multiple of N (Myriad 2's
  fully-connected inputs): structured pruning that keeps every width a multiple of N;
- accuracy short: gentler sparsity, one more bit per codebook, more retraining;
- fps, latency, power or energy short: structured pruning (a dense kernel only gets faster
  with fewer channels), or more of it;
- size or memory short: more sparsity and one bit less per codebook.

Recipes are handled as the plain dicts of a compress report's `recipe` (the compression
service validates them when it loads the YAML), so this module needs no stage code.

    recipe, why = revise(result, report["recipe"])
"""

from __future__ import annotations

import copy
import re

from pipelines.results import Candidate, CandidateResult

MULTIPLE_RULE = re.compile(r"not a multiple of (\d+)")
ACCURACY_METRICS = ("accuracy", "accuracy_drop")
SPEED_METRICS = ("fps", "latency_ms", "p90_latency_ms", "power_w", "energy_mj")
SIZE_METRICS = ("size_kb", "memory_mb", "fits RAM")
STRUCTURED_RETRAIN = {"epochs": 2, "lr": 0.01, "weight_decay": 0.0001}
FIRST_STRUCTURED_FRACTION = 0.3  # of each layer's channels, when speed is short
MAX_STRUCTURED_FRACTION = 0.8
MIN_BITS, MAX_BITS = 2, 8


def _metric(check: str) -> str:
    return re.split(r"<=|>=|==|<|>", check, maxsplit=1)[0].strip()


def _scale(value, fn):
    """Apply `fn` to a per-layer value: one number, or a mapping of layer -> number."""
    if isinstance(value, dict):
        return {k: fn(v) for k, v in value.items()}
    return fn(value) if isinstance(value, int | float) else value


def _steps_of(recipe: dict, kind: str) -> list[dict]:
    return [s for s in recipe["steps"] if s.get("type") == kind]


def _more_retraining(step: dict, epochs: int) -> None:
    retrain = step.get("retrain")
    if isinstance(retrain, dict) and retrain.get("epochs") is not None:
        retrain["epochs"] = int(retrain["epochs"]) + epochs


def _ensure_structured(recipe: dict, fraction: float, multiple: int = 1) -> dict:
    """The recipe's structured step (made first if there is none), widened to `fraction`."""
    found = _steps_of(recipe, "structured")
    if found:
        step = found[0]
        step["fraction"] = _scale(step.get("fraction") or 0.0, lambda v: max(v, fraction))
    else:
        step = {"type": "structured", "fraction": {"fc": fraction} if multiple > 1 else fraction,
                "retrain": dict(STRUCTURED_RETRAIN)}  # fmt: skip
        recipe["steps"].insert(0, step)
    step["multiple"] = max(int(step.get("multiple") or 1), multiple)
    return step


def fix_operators(recipe: dict, result: CandidateResult) -> str | None:
    """Structured pruning to a multiple of N when the target refuses a size for that."""
    multiples = sorted({int(m) for op in result.unsupported_ops
                        for m in MULTIPLE_RULE.findall(op)})  # fmt: skip
    if not multiples:
        return None
    multiple = max(multiples)
    # a small fraction with rounding up to `multiple`: 500 neurons keep 490 -> 496
    _ensure_structured(recipe, 0.02, multiple)
    refused = "; ".join(result.unsupported_ops[:2])
    return (f"{result.target} refuses {refused}: structured pruning keeps every "
            f"fully-connected width a multiple of {multiple}")  # fmt: skip


def gentler(recipe: dict, result: CandidateResult) -> str:
    for step in _steps_of(recipe, "prune"):
        if step.get("sparsity") is not None:
            step["sparsity"] = _scale(step["sparsity"], lambda s: round(0.75 * s, 4))
        if step.get("quality") is not None:
            step["quality"] = _scale(step["quality"], lambda q: round(0.75 * q, 4))
    for step in _steps_of(recipe, "share"):
        step["bits"] = _scale(step.get("bits"), lambda b: min(MAX_BITS, int(b) + 1))
    for step in recipe["steps"]:
        _more_retraining(step, 2)
    drop = result.accuracy_drop_pp
    short = f"accuracy drop {drop:.2f} points" if drop is not None else "accuracy short"
    return f"{short}: sparsity x0.75, one more bit per codebook, 2 more retraining epochs"


def faster(recipe: dict, result: CandidateResult) -> str:
    found = _steps_of(recipe, "structured")
    if found:
        grow = lambda v: min(MAX_STRUCTURED_FRACTION, round(v + 0.2, 4))  # noqa: E731
        found[0]["fraction"] = _scale(found[0].get("fraction") or 0.0, grow)
    else:
        _ensure_structured(recipe, FIRST_STRUCTURED_FRACTION)
    return (f"{result.fps:.1f} fps / {result.latency_ms:.2f} ms predicted: structured pruning "
            "(fewer channels make the dense kernels faster)")  # fmt: skip


def smaller(recipe: dict, result: CandidateResult) -> str:
    for step in _steps_of(recipe, "prune"):
        if step.get("sparsity") is not None:
            step["sparsity"] = _scale(step["sparsity"], lambda s: round(1 - 0.7 * (1 - s), 4))
    for step in _steps_of(recipe, "share"):
        step["bits"] = _scale(step.get("bits"), lambda b: max(MIN_BITS, int(b) - 1))
    return f"{result.size_kb:.1f} KiB: more sparsity, one bit less per codebook"


def revise(result: CandidateResult, recipe: dict) -> tuple[dict, list[str]]:
    """A new recipe dict for `result`'s failures, and why (one line per change); the list is
    empty when no rule applies (nothing new to try)."""
    recipe = copy.deepcopy(recipe)
    failed = {_metric(f) for f in result.failures}
    why: list[str] = []
    if "operators supported" in failed:
        line = fix_operators(recipe, result)
        if line:
            why.append(line)
    if failed & set(ACCURACY_METRICS):
        why.append(gentler(recipe, result))
    if failed & set(SPEED_METRICS):
        why.append(faster(recipe, result))
    if failed & set(SIZE_METRICS):
        why.append(smaller(recipe, result))
    return recipe, why


def clean_recipe(recipe: dict, name: str, description: str) -> dict:
    """The recipe as a user would write it: no None values, a new name and description."""

    def drop_none(value):
        if isinstance(value, dict):
            return {k: drop_none(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [drop_none(v) for v in value]
        return value

    body = drop_none(recipe)
    body["name"], body["description"] = name, description
    return body


def closest(results: list[CandidateResult], limit: int = 2) -> list[CandidateResult]:
    """The failed candidates worth revising: those that ran, fewest failed checks first, then
    the most accurate."""
    ran = [r for r in results if not r.error and not r.passed]
    ran.sort(key=lambda r: (len(r.failures), -(r.accuracy or 0.0)))
    return ran[:limit]


def next_candidate(result: CandidateResult, iteration: int, index: int, recipe_uri: str,
                   recipe_name: str, why: list[str]) -> Candidate:  # fmt: skip
    return Candidate(
        id=f"i{iteration}-c{index}", iteration=iteration, target=result.target,
        recipe=recipe_uri, recipe_name=recipe_name,
        why=f"from {result.id}: " + "; ".join(why), precision=result.candidate.get("precision", ""),
    )  # fmt: skip
