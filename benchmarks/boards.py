"""Retest against the real boards: predicted vs published batch-1 latencies per board.

For each board with published figures (targets/measurements/<target>.yaml) this fits the
target's latency model on its calibration set (models outside the zoo only: `sigdl targets
fit`, services/retest/targetfit.py), writes the fit into the shipped profile
targets/<target>.yaml, and compares the fitted profile's predictions with every published
figure: the validation set (the zoo models' own figures, never read by the fit) and the fit
set beside it. A board with no fit figures (the Myriad 2) is predicted from its data sheet.

    python benchmarks/boards.py            # fit, write the profiles, write the tables
    python benchmarks/boards.py --no-fit   # compare with the profiles as they are

Writes benchmarks/results/boards.{json,md}; graphs are exported once into
benchmarks/results/.work/graphs/ (git-ignored, weights stripped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import targets
from benchmarks.common import RESULTS, WORK, machine, write_table
from services.retest import targetfit
from services.retest.predict import predict_latency
from targets.measurements import Measurement, fit_set, validation_set

BOARDS = ("jetson-tx2", "arm-cortex-a53", "arm-cortex-a72", "movidius-ma2450")
TOLERANCE = 0.25  # within ±25%: 0.75 <= predicted / published <= 1.25
CACHE = WORK / "graphs"


def held_out(profile: dict, m: Measurement) -> float | None:
    """The fit's held-out ratio (predicted / published by the fit of the other figures) of
    fit figure `m`, from the profile's residual table; None for a figure the fit did not read."""
    table = profile["latency_model"].get("fitted", {}).get("residuals", [])
    shape = "x".join(map(str, m.input_shape[1:]))
    for r in table:
        if (r["model"], r["runtime"], r["precision"], r["threads"], r["input"]) == (
            m.model, m.runtime, m.precision, m.threads, shape
        ) and r["published_ms"] == m.latency_ms:  # fmt: skip
            return r.get("held_out_ratio")
    return None


def row(target: str, role: str, m: Measurement, profile: dict) -> dict:
    graph = targetfit.graph_of(m.model, m.input_shape, CACHE)
    threads = m.threads if profile["kind"] == "cpu" else None
    pred = predict_latency(graph, profile, m.precision, threads, m.runtime)
    ratio = pred["latency_ms"] / m.latency_ms
    low, high = pred["latency_ms_range"]
    return {
        "board": target, "set": role, "model": m.model, "runtime": m.runtime,
        "precision": m.precision, "threads": m.threads,
        "input": "x".join(map(str, m.input_shape[1:])), "published_ms": m.latency_ms,
        "predicted_ms": round(pred["latency_ms"], 3),
        "range_ms": [round(v, 3) for v in pred["latency_ms_range"]],
        "ratio": round(ratio, 4), "within": bool(abs(ratio - 1) <= TOLERANCE),
        "factor": round(max(ratio, 1 / ratio), 4),
        "in_interval": bool(low <= m.latency_ms <= high),
        "held_out_ratio": held_out(profile, m) if role == "fit" else None,
        "source": m.source.url or m.source.citation, "quote": m.source.quote,
    }  # fmt: skip


def share(rows: list[dict]) -> dict:
    if not rows:
        return {"figures": 0, "within_25pct": None, "worst_factor": None, "in_interval": 0,
                "held_out_within": 0}  # fmt: skip
    return {"figures": len(rows), "within": sum(r["within"] for r in rows),
            "within_25pct": round(float(np.mean([r["within"] for r in rows])), 4),
            "worst_factor": max(r["factor"] for r in rows),
            "in_interval": sum(r["in_interval"] for r in rows),
            "held_out_within": sum(abs(r["held_out_ratio"] - 1) <= TOLERANCE for r in rows
                                   if r["held_out_ratio"] is not None)}  # fmt: skip


def board(target: str, fit: bool) -> tuple[list[dict], dict]:
    """All rows of one board and how its profile was made."""
    fitted = bool(fit_set(target)) and any(targetfit.can_build(m.model) for m in fit_set(target))
    if fit and fitted:
        targetfit.fit_target(target, out=targets.HERE / f"{target}.yaml", cache_dir=CACHE)
    _, profile = targetfit.shipped_profile(target)
    block = profile["latency_model"].get("fitted")
    how = {"fitted": block is not None,
           "summary": block["summary"] if block else None,
           "interval": block["interval"] if block else None,
           "parameters": {k: v for k, v in (block or {}).items()
                          if k not in ("residuals", "summary", "source", "interval")}}  # fmt: skip
    rows = [row(target, "validation", m, profile) for m in validation_set(target)]
    rows += [row(target, "fit", m, profile) for m in fit_set(target)
             if targetfit.can_build(m.model)]  # fmt: skip
    return rows, how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-fit", action="store_true", help="use the profiles as they are")
    args = parser.parse_args()
    rows, how = [], {}
    for target in BOARDS:
        board_rows, how[target] = board(target, not args.no_fit)
        rows += board_rows
    validation = [r for r in rows if r["set"] == "validation"]
    summary = {
        "validation": share(validation),
        "fit": share([r for r in rows if r["set"] == "fit"]),
        "per_board": {t: {s: share([r for r in rows if r["board"] == t and r["set"] == s])
                          for s in ("validation", "fit")} for t in BOARDS},
    }  # fmt: skip
    doc = {"machine": machine(), "tolerance": TOLERANCE, "summary": summary, "profiles": how,
           "rows": rows}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "boards.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_markdown(rows, summary, how)
    v = summary["validation"]
    print(f"validation: {v['within']}/{v['figures']} within ±25%, worst {v['worst_factor']}x")


def write_markdown(rows: list[dict], summary: dict, how: dict) -> None:
    header = ["board", "set", "model", "runtime", "precision", "threads", "input",
              "published ms", "predicted ms", "interval ms", "predicted / published",
              "within ±25%", "held out", "source"]  # fmt: skip
    table = [[r["board"], r["set"], r["model"], r["runtime"], r["precision"], r["threads"],
              r["input"], f"{r['published_ms']:g}", f"{r['predicted_ms']:.2f}",
              f"{r['range_ms'][0]:.1f}-{r['range_ms'][1]:.1f}", f"{r['ratio']:.2f}",
              "yes" if r["within"] else "**no**",
              "" if r["held_out_ratio"] is None else f"{r['held_out_ratio']:.2f}",
              f"[source]({r['source']})"]
             for r in rows]  # fmt: skip
    lines = ["## Summary", "",
             "| board | set | figures | within ±25% | worst factor | published in interval "
             "| held out within ±25% | profile |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for target, sets in summary["per_board"].items():
        made = "fitted on its fit set" if how[target]["fitted"] else "data sheet (no fit set)"
        for name, s in sets.items():
            if s["figures"]:
                share_text = f"{s['within']} ({s['within_25pct']:.0%})"
                worst = f"{s['worst_factor']:.2f}x"
                held = s["held_out_within"] if name == "fit" else ""
                lines.append(f"| {target} | {name} | {s['figures']} | {share_text} "
                             f"| {worst} | {s['in_interval']} | {held} | {made} |")  # fmt: skip
    for name in ("validation", "fit"):
        s = summary[name]
        lines.append(f"| **all boards** | {name} | {s['figures']} | {s['within']} "
                     f"({s['within_25pct']:.0%}) | {s['worst_factor']:.2f}x "
                     f"| {s['in_interval']} "
                     f"| {s['held_out_within'] if name == 'fit' else ''} | |")  # fmt: skip
    skipped = sorted({(s["model"], s["reason"]) for t in how.values() if t["summary"]
                      for s in t["summary"]["skipped"]})  # fmt: skip
    lines += ["", "Fit-set figures without a graph here (not fitted, not listed above):", ""]
    lines += [f"- {model}: {reason}" for model, reason in skipped]
    notes = "\n".join([
        "Validation: the zoo models' published figures, never read by a fit "
        "(tests/targets/test_targetfit.py checks it). Fit: the figures each profile was "
        "fitted on (`sigdl targets fit TARGET`), shown beside them. Predicted: the retest's "
        "latency model with the fitted profile (services/retest/predict.py); interval: the "
        "80% interval (nominal: 8 of 10 published figures inside) from the fit's held-out "
        "(leave-one-out) residuals on that board, at split-conformal ranks; x0.5-x2 without a "
        "fit or where a board has fewer than 9 fit figures. "
        "Held out: a fit figure's predicted / published by the fit of the board's other fit "
        "figures (leave one out), the error on a model the fit has not seen. "
        "Within ±25%: 0.75 <= predicted / published <= 1.25. Every figure's source (URL and "
        "quoted row) is in targets/measurements/<board>.yaml and boards.json.",
        "The Raspberry Pi 3 figures are of the Model B+ (1.4 GHz); its profile's peak is the "
        "Model B's (1.2 GHz): the fitted efficiencies absorb the clock, predictions are for "
        "the B+.", "", *lines,
    ])  # fmt: skip
    write_table("boards", "Predicted vs published latency on the real boards", header, table, notes)


if __name__ == "__main__":
    main()
