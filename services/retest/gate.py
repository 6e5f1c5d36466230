"""Requirements such as `fps>=30` or `accuracy_drop<=0.5`, and the verdict against them.

A requirement is `METRIC OP NUMBER` with OP one of <=, >=, <, >, ==. `latency_ms_hi` and
`fps_lo` are the pessimistic ends of the predicted interval (`latency_ms_range`, `fps_range`):
`latency_ms_hi<=50` requires the slow end to meet the budget, not only the estimate.
The verdict lists each requirement with its measured or predicted value and pass/fail, after
two checks every retest makes: all operators supported, and the model fits the target's RAM.
accuracy_drop is the report's `accuracy.drop_pp`: against the dense trained model
(ARCHITECTURE.md), and verdict.md says which baseline it was.

    verdict = gate(report, [parse_requirement("fps>=30")])
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from sigdl.core.errors import InputError

# metric -> (where the value is in the report, unit, what it is)
METRICS = {
    "accuracy": (("accuracy", "accuracy"), "fraction", "test accuracy at the target's numerics"),
    "accuracy_drop": (("accuracy", "drop_pp"), "percentage points",
                      "baseline accuracy (the dense trained model's; this model's fp32 only "
                      "when no dense accuracy is known) minus accuracy at the target's "
                      "numerics"),
    "latency_ms": (("latency_ms",), "ms", "predicted latency"),
    # the pessimistic ends of the prediction's interval (predict.latency_interval: an 80%
    # interval from the target fit's held-out residuals on published figures): `latency_ms_hi<=50`
    # holds only if the slow end of the interval does, `fps_lo>=30` likewise
    "latency_ms_hi": (("latency_ms_range", 1), "ms",
                      "slow end of the predicted latency's interval"),
    "fps_lo": (("fps_range", 0), "1/s", "low end of the predicted fps's interval"),
    "p90_latency_ms": (("p90_latency_ms",), "ms", "predicted p90 latency"),
    "fps": (("fps",), "1/s", "predicted frames per second (batch 1)"),
    "power_w": (("power_w",), "W", "estimated average power"),
    "energy_mj": (("energy_mj",), "mJ", "estimated energy per inference"),
    "size_kb": (("size_kb",), "KiB", "deployable model size (.sdc when there is one)"),
    "memory_mb": (("memory", "memory_mb"), "MiB", "weights + peak activations"),
}  # fmt: skip
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
        "==": operator.eq}  # fmt: skip
_NUMBER = r"[-+]?[0-9]*\.?[0-9]+(?:e[-+]?\d+)?"
_PATTERN = re.compile(rf"^\s*([a-z_0-9]+)\s*(<=|>=|==|<|>)\s*({_NUMBER})\s*$")


@dataclass(frozen=True)
class Requirement:
    metric: str  # a key of METRICS
    op: str  # <=, >=, <, >, ==
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    @property
    def needs_dataset(self) -> bool:
        return self.metric in ("accuracy", "accuracy_drop")


def parse_requirement(text: str) -> Requirement:
    """`"fps>=30"` -> Requirement; InputError naming the expression and the known metrics."""
    match = _PATTERN.match(str(text).lower())
    if not match:
        raise InputError(f"requirement {text!r}: expected METRIC OP NUMBER, e.g. 'fps>=30'")
    metric, op, number = match.groups()
    if metric not in METRICS:
        raise InputError(f"requirement {text!r}: unknown metric {metric!r}; known: "
                         f"{', '.join(METRICS)}")  # fmt: skip
    return Requirement(metric, op, float(number))


def _lookup(report: dict, path: tuple[str | int, ...]) -> float | None:
    value: object = report
    for key in path:
        if isinstance(key, int):  # an index into a [low, high] range
            value = value[key] if isinstance(value, list) and len(value) > key else None
        else:
            value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int | float) else None


def gate(report: dict, requirements: list[Requirement]) -> dict:
    """{"passed": bool, "checks": [{"requirement", "value", "unit", "passed"}, ...]}."""
    unsupported = len(report["operators"]["failures"])
    checks = [
        {"requirement": "operators supported", "value": f"{unsupported} unsupported",
         "unit": "", "passed": report["operators"]["passed"]},
        {"requirement": "fits RAM", "value": round(report["memory"]["memory_mb"], 3),
         "unit": f"MiB of {report['memory']['ram_mb']}", "passed": report["memory"]["fits_ram"]},
    ]  # fmt: skip
    for req in requirements:
        path, unit, _ = METRICS[req.metric]
        value = _lookup(report, path)
        passed = value is not None and _OPS[req.op](value, req.threshold)
        checks.append({"requirement": str(req), "value": value, "unit": unit, "passed": passed})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def verdict_markdown(report: dict) -> str:
    """verdict.md: the checks as a table, then the headline figures."""
    v = report["verdict"]
    lines = [
        f"# Retest of {report['model']} on {report['target']} ({report['precision']}): "
        f"{'PASS' if v['passed'] else 'FAIL'}",
        "",
        "| requirement | value | unit | result |",
        "|---|---|---|---|",
    ]
    for c in v["checks"]:
        value = f"{c['value']:.4g}" if isinstance(c["value"], float) else c["value"]
        lines.append(f"| {c['requirement']} | {value} | {c['unit']} | "
                     f"{'pass' if c['passed'] else 'FAIL'} |")  # fmt: skip
    low, high = report.get("latency_ms_range") or (report["latency_ms"], report["latency_ms"])
    lines += ["", f"Predicted latency {report['latency_ms']:.3f} ms (interval {low:.3f}-"
              f"{high:.3f} ms; p90 "
              f"{report['p90_latency_ms']:.3f} ms, {report['fps']:.1f} fps); estimated power "
              f"{report['power_w']:.2f} W, {report['energy_mj']:.3f} mJ per inference "
              "(an estimate from the profile's power model)."]  # fmt: skip
    scaled = report.get("measured_and_scaled")
    if scaled:  # an x86 target: the headline latency is the pinned host measurement, scaled
        lines += ["", f"Latency method: measured-and-scaled ({scaled['pinned_threads']} pinned "
                  f"host cores, x{scaled['factor']:.2f}, {scaled['factor_basis']}; core scaling "
                  f"x{scaled['core_scaling']:.2f}); modelled: "
                  f"{report['modelled']['latency_ms']:.3f} ms."]  # fmt: skip
    lines += ["", f"Deployable model: {report['deployable']}."]
    if "accuracy" in report:
        lines += ["", _accuracy_line(report["accuracy"], report["precision"])]
    for f in report["operators"]["failures"]:
        lines.append(f"- unsupported: `{f['node']}` ({f['op']}): {f['rule']}")
    return "\n".join(lines) + "\n"


def _accuracy_line(acc: dict, precision: str) -> str:
    return (f"Accuracy on {acc['dataset']}: {acc['accuracy']:.4f} at {precision}, "
            f"{acc['fp32_accuracy']:.4f} for this model at fp32. accuracy_drop "
            f"{acc['drop_pp']:.2f} pp = baseline {acc['baseline_accuracy']:.4f} "
            f"({acc['baseline']}) minus the {precision} accuracy.")  # fmt: skip
