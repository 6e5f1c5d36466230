"""Host calibration that travels: `sigdl targets calibrate host` on this machine, then the
host retest's predicted medians of the six zoo models against ONNX Runtime measured here in
the same minutes.

Steps, each through what a user runs:
1. `sigdl targets calibrate host` (the CLI, its default rounds) into a temporary SIGDL_HOME,
   timed: issue 17 asks for under 5 minutes on 2 cores.
2. The six zoo models (LeNet-300-100, LeNet-5, AlexNet, VGG-16, MobileNet v1 (the zoo's
   `mobilenet`), SqueezeNet 1.0; untrained, exported as benchmarks/emulation.py does), timed in
   ONNX Runtime at the retest's thread count in interleaved rounds (shuffled order per round,
   every model >= MODEL_SECONDS and MODEL_QUERIES per round): the measured median.
3. `sigdl retest MODEL.onnx --target host --json` with that SIGDL_HOME (so the calibrated
   profile is the one loaded): the predicted median (`latency_ms`), right after the rounds.
Target: at least 5 of 6 predicted medians within +-10% of the measured ones, on a machine
other than the one the shipped targets/host.yaml was measured on (its `measured_on`, against
this machine's /proc/cpuinfo vendor, family, model and model name).

    flock /tmp/sigdl-cpu.lock .venv/bin/python benchmarks/host_transfer.py
    .venv/bin/python benchmarks/host_transfer.py --table      # rewrite the table only

Writes benchmarks/results/host_transfer.{json,md}; a run is kept under its `--label`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, WORK, merge, sigdl, write_table
from benchmarks.emulation import MODELS, model_path
from services.retest.calibrate import SHIPPED_HOST, machine_provenance
from services.retest.measure import open_session, query_times
from sigdl.core.yamlio import load_yaml_file

NAME = "host_transfer"
TOLERANCE = 0.10
# Interleaved rounds of the six models: many short bursts, so that every model samples this
# shared VM's slow and fast spells alike (run-1's 8 rounds of >= 1 s saw SqueezeNet's median
# differ by 37% between its even and odd rounds)
ROUNDS = 24
MODEL_SECONDS, MODEL_QUERIES = 0.3, 2  # per model and round (VGG-16: ~0.17 s a query)
CALIBRATE_LIMIT_S = 300  # issue 17: under 5 minutes on 2 cores


def cpu_identity() -> dict:
    """This machine's CPU as /proc/cpuinfo names it: vendor, family, model, model name."""
    keys = {"vendor_id": "vendor", "cpu family": "family", "model": "model",
            "model name": "model_name"}  # fmt: skip
    found: dict = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys and keys[key.strip()] not in found:
            found[keys[key.strip()]] = value.strip()
        if not line.strip() and found:  # the first processor's block is enough
            break
    return {**found, "usable_cores": len(os.sched_getaffinity(0))}


def measure_rounds(threads: int, rounds: int, seed: int = 0) -> dict[str, dict]:
    """ONNX Runtime medians of the six models at `threads`, their queries pooled over
    `rounds` interleaved rounds in a shuffled order (the same drift of this shared machine
    falls on every model)."""
    sessions = {name: open_session(model_path(name).read_bytes(), threads) for name in MODELS}
    times: dict[str, list[np.ndarray]] = {name: [] for name in MODELS}
    order = list(MODELS)
    rng = random.Random(seed)
    for r in range(rounds):
        rng.shuffle(order)
        for name in order:
            sess, feed = sessions[name]
            times[name].append(query_times(sess, feed, warmup=1, min_queries=MODEL_QUERIES,
                                           min_seconds=MODEL_SECONDS))  # fmt: skip
        print(f"round {r + 1}/{rounds}", flush=True)
    out = {}
    for name, per_round in times.items():
        pooled = np.concatenate(per_round)
        halves = [float(np.median(np.concatenate(per_round[i::2]))) for i in (0, 1)]
        out[name] = {"p50_ms": float(np.median(pooled)), "queries": len(pooled),
                     "halves_p50_ms": halves}  # fmt: skip
    return out


def run(label: str, rounds: int, threads: int) -> dict:
    shipped = load_yaml_file(SHIPPED_HOST)["measured_on"]
    here = {**machine_provenance(), **cpu_identity()}
    with tempfile.TemporaryDirectory(prefix="sigdl-home-") as home:
        env = {"SIGDL_HOME": home}
        started = time.perf_counter()
        cal = sigdl("targets", "calibrate", "host", env=env)
        calibrate_s = time.perf_counter() - started
        print(f"calibrate host: {calibrate_s:.0f} s, wrote {cal['profile']}", flush=True)
        window = [time.time()]
        measured = measure_rounds(threads, rounds)
        predicted = {}
        for name in MODELS:
            report = sigdl("retest", str(model_path(name)), "--target", "host",
                           "--threads", str(threads), env=env)  # fmt: skip
            predicted[name] = {"latency_ms": report["latency_ms"],
                               "retest_measured_p50_ms": report["measured"]["p50_ms"]}  # fmt: skip
        window.append(time.time())
        kept = WORK / NAME / f"{label}-host.yaml"  # the calibrated profile, for a later look
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cal["profile"], kept)
    rows = []
    for name in MODELS:
        ratio = predicted[name]["latency_ms"] / measured[name]["p50_ms"]
        rows.append({"model": name, "threads": threads, **predicted[name],
                     "measured": measured[name], "ratio": ratio,
                     "within": abs(ratio - 1) <= TOLERANCE})  # fmt: skip
        print(f"{name:15} predicted {predicted[name]['latency_ms']:9.3f} ms, measured "
              f"{measured[name]['p50_ms']:9.3f} ms (x{ratio:.3f})", flush=True)  # fmt: skip
    within = sum(r["within"] for r in rows)
    result = {
        "label": label, "threads": threads, "rounds": rounds,
        "burst": {"seconds": MODEL_SECONDS, "queries": MODEL_QUERIES},
        "calibrate_seconds": calibrate_s, "calibrate_under_5_min": calibrate_s < CALIBRATE_LIMIT_S,
        "calibrated": {"rounds": cal["rounds"], "threads": cal["threads"],
                       "measured_on": cal["measured_on"], "kept_at": str(kept)},
        "shipped_measured_on": shipped, "this_machine": here,
        "other_machine": shipped["cpu"] != here["model_name"],
        "measure_window_unix": window, "load_before": os.getloadavg(),
        "rows": rows, "within_10pct": within, "models": len(rows),
        "target_met": within >= 5,
    }  # fmt: skip
    print(f"{within}/{len(rows)} medians within 10%; calibrate {calibrate_s:.0f} s")
    return result


def table(doc: dict) -> None:
    lines, notes = [], []
    for label, r in doc["rows"].items():
        for row in r["rows"]:
            m = row["measured"]
            halves = m["halves_p50_ms"]
            lines.append([label, row["model"], row["threads"], f"{row['latency_ms']:.3f}",
                          f"{m['p50_ms']:.3f}", f"{row['retest_measured_p50_ms']:.3f}",
                          f"{halves[0]:.3g} / {halves[1]:.3g}", m["queries"],
                          f"{row['ratio']:.3f}", "yes" if row["within"] else "**no**"])  # fmt: skip
        here = r["this_machine"]
        notes.append(
            f"- `{label}`: {r['within_10pct']} of {r['models']} medians within +-10% (target: "
            f"5 of 6). `sigdl targets calibrate host` took {r['calibrate_seconds']:.0f} s "
            f"(limit 300 s; {r['calibrated']['rounds']} rounds, threads "
            f"{r['calibrated']['threads']}). Measured in {r['rounds']} rounds, each model's "
            f"burst >= {r['burst']['seconds']:g} s and {r['burst']['queries']} queries. "
            "Shipped profile measured on: "
            f"{r['shipped_measured_on']['cpu']} ({r['shipped_measured_on']['date']}); this "
            f"machine: {here['model_name']} ({here['vendor']}, family {here['family']} model "
            f"{here['model']}, {here['usable_cores']} cores): "
            f"{'a different machine' if r['other_machine'] else '**the same machine**'}."
            + (f" Note: {r['notes']}." if "notes" in r else "")
        )
    notes.append(
        "\nPredicted: `latency_ms` (the median) of `sigdl retest MODEL.onnx --target host "
        "--threads N --json` with SIGDL_HOME pointing at the profile the calibration just "
        "wrote. Measured: ONNX Runtime CPU at the same intra-op threads, the median of all "
        "queries of the interleaved rounds (shuffled order; rounds and bursts per run above) "
        "run between the calibration and the retests; the retest's own "
        "single-stream p50 beside it. Models untrained (timing only), exported as "
        "benchmarks/emulation.py does. The six zoo models play no part in the calibration "
        "(single-operator micro-benchmarks and synthetic references only)."
    )
    write_table(NAME, "Host calibration on another machine: predicted vs measured medians",
                ["run", "model", "threads", "predicted ms", "measured p50 ms",
                 "retest's measured p50 ms", "p50 even / odd rounds", "queries",
                 "predicted / measured", "within 10%"], lines, "\n".join(notes))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="run-1", help="key this run is kept under")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (host: 2)")
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    args = parser.parse_args()
    if not args.table:
        merge(NAME, args.label, run(args.label, args.rounds, args.threads))
    table(json.loads((RESULTS / f"{NAME}.json").read_text()))


if __name__ == "__main__":
    main()
