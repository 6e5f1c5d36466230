"""Calibrate the shipped `host` target profile from micro-benchmarks of single operators.

The measuring and fitting are product code: services/retest/microbench.py (the one-node ONNX
models per operator class, the interleaved timing rounds with ONNX Runtime's profiler, the
rows), services/retest/fit.py (per-class efficiencies, overheads, bandwidths, the p90 curve,
the weight stall) and services/retest/calibrate.py (the profile writer; what
`sigdl targets calibrate host` runs on a user's machine in a few minutes). This script runs
them with the long default (128 rounds, about half an hour on 2 cores), keeps the
measurements, and rewrites the shipped profile. The zoo models are not used here;
`benchmarks/emulation.py --part host` runs these same probes interleaved with the zoo models
and checks the fit against them.

    flock /tmp/sigdl-cpu.lock .venv/bin/python benchmarks/calibrate_host.py
    .venv/bin/python benchmarks/calibrate_host.py --refit   # refit the saved measurements
    # measure one class's cases alone (with the dispatch probes they need), put them in place
    # of that class's saved rows and refit: the other classes' figures stay as they were
    flock /tmp/sigdl-cpu.lock .venv/bin/python benchmarks/calibrate_host.py --add-class dft

Writes benchmarks/results/calibration_host.json and the `calibrated:` block of
targets/host.yaml (between its BEGIN/END markers; with a new measurement also its
`measured_on` line).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, machine
from services.retest import microbench
from services.retest.calibrate import (
    SHIPPED_HOST,
    machine_provenance,
    template_profile,
    with_calibration,
)
from services.retest.fit import fit

# benchmarks/emulation.py and tests/services/test_retest_stage.py use these from here
from services.retest.microbench import (  # noqa: F401
    REF_QUERIES,
    REF_SECONDS,
    ROUNDS,
    Probe,
    Timings,
    calibration_probes,
    cases,
    eltwise_model,
    p90_model,
    work_of,
)

HOST_YAML = SHIPPED_HOST


def _print_round(done: int, rounds: int) -> None:
    print(f"  round {done}/{rounds} done", flush=True)


def run_rounds(probes: list[Probe], rounds: int, seed: int = 0) -> Timings:
    return microbench.run_rounds(probes, rounds, seed, on_round=_print_round)


def rows_from(timings: Timings) -> tuple[list[dict], dict[int, dict]]:
    """microbench.rows_from against the shipped host profile's latency model."""
    return microbench.rows_from(timings, template_profile()[1]["latency_model"])


def save(
    rows: list[dict], session: dict[int, dict], rounds: int, measured_on: dict | None = None,
    class_runs: dict | None = None,
) -> dict:  # fmt: skip
    """Fit, write results/calibration_host.json and the host profile's calibrated block (and,
    for a new measurement, the machine it was measured on). `class_runs`: per class measured
    alone (--add-class), its rounds and machine."""
    text, profile = template_profile()
    block = fit(rows, session, profile)
    doc = {"machine": machine(), "rounds": rounds, "session": session, "calibrated": block,
           "rows": rows}  # fmt: skip
    if measured_on is not None:
        doc["measured_on"] = measured_on
    if class_runs:
        doc["class_runs"] = class_runs
    (RESULTS / "calibration_host.json").write_text(json.dumps(doc, indent=2) + "\n")
    HOST_YAML.write_text(with_calibration(text, block, measured_on))
    return block


def load_saved() -> tuple[list[dict], dict[int, dict], int, dict]:
    """The measurements of the last run (results/calibration_host.json), with each case's
    work and the p90 model recomputed as this code counts them, and its class runs."""
    doc = json.loads((RESULTS / "calibration_host.json").read_text())
    latency_model = template_profile()[1]["latency_model"]
    threads = sorted(int(t) for t in doc["session"])
    work = {(label, t): work_of(model, klass, latency_model, t) for klass, label, model in cases()
            for t in threads}  # fmt: skip
    rows = [{**row, **work.get((row["case"], row["threads"]), {})} for row in doc["rows"]]
    session = {}
    for t, values in doc["session"].items():
        refs = {label: tuple(v) for label, v in values["references"].items()}
        session[int(t)] = {**values, **p90_model(refs)}
    return rows, session, doc["rounds"], doc.get("class_runs", {})


def add_class(klass: str, rounds: int) -> tuple[list[dict], dict[int, dict], int, dict]:
    """The saved measurements with `klass`'s rows replaced by a new measurement of its cases
    alone (microbench.class_probes: the dispatch cost and the nearly free node measured with
    them, every probe in every round)."""
    rows, session, saved_rounds, class_runs = load_saved()
    timings = run_rounds(microbench.class_probes(klass), rounds)
    latency_model = template_profile()[1]["latency_model"]
    measured = microbench.class_rows(timings, klass, latency_model)
    rows = [r for r in rows if r["class"] != klass] + measured
    class_runs = {**class_runs, klass: {"rounds": rounds, "measured_on": machine_provenance()}}
    return rows, session, saved_rounds, class_runs


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--refit",
        action="store_true",
        help="refit from results/calibration_host.json without measuring",
    )
    parser.add_argument(
        "--add-class",
        metavar="CLASS",
        help="measure this class's cases alone, replace its saved rows and refit (e.g. dft)",
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved rounds")
    args = parser.parse_args()
    measured_on = None
    if args.refit:
        rows, session, rounds, class_runs = load_saved()
    elif args.add_class:
        rows, session, rounds, class_runs = add_class(args.add_class, args.rounds)
    else:
        rows, session = rows_from(run_rounds(calibration_probes(), args.rounds))
        rounds, measured_on, class_runs = args.rounds, machine_provenance(), {}
    print(json.dumps(save(rows, session, rounds, measured_on, class_runs), indent=2))


if __name__ == "__main__":
    main()
