"""Host calibration a user runs: measure this machine's operators, fit the host latency model,
write a host profile that `targets.load_profile("host")` then prefers over the shipped one.

    sigdl targets calibrate host                   # -> $SIGDL_HOME/targets/host.yaml
    sigdl targets calibrate host --rounds 2 --out /tmp/host.yaml

The profile written is the shipped `targets/host.yaml` (its data sheet, comments and sources)
with the `calibrated:` block between its BEGIN/END markers replaced by this machine's fit
(services/retest/fit.py over services/retest/microbench.py's rows) and `measured_on` saying
which machine it was measured on. `benchmarks/calibrate_host.py` runs the same code with the
long default of 128 rounds and rewrites the shipped profile.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import targets
from services.retest.fit import fit
from services.retest.microbench import (
    THREADS,
    calibration_probes,
    rows_from,
    run_rounds,
)
from sigdl.core import atomic
from sigdl.core.errors import InputError
from sigdl.core.yamlio import load_yaml

SHIPPED_HOST = targets.HERE / "host.yaml"
# A user's default, under 5 minutes on 2 cores: on the 2-core build VM (AMD EPYC) 24 rounds
# with the micro-benchmarks in every 3rd took 352 s: ~40 s opening sessions, 22 s per round
# with micro-benchmarks, 4.8 s per round without, ~70 s reading the profiles and fitting;
# 12 rounds (4 with micro-benchmarks) come to about 4 minutes. The shipped profile's 128
# rounds (benchmarks/calibrate_host.py) take over half an hour.
CLI_ROUNDS = 12
CLI_MICRO_EVERY = 3
_CALIBRATED = re.compile(r"(  # BEGIN calibrated[^\n]*\n).*?(  # END calibrated)", re.S)
_MEASURED_ON = re.compile(r"^measured_on:[^\n]*$", re.M)
_SOURCE = re.compile(r"^(  calibration_source:)[^\n]*$", re.M)


@dataclass
class Calibration:
    """What one calibration measured and fitted."""

    rows: list[dict]  # per micro-benchmark and thread count (microbench.rows_from)
    session: dict[int, dict]  # per thread count: fixed and dispatch cost, references
    block: dict  # latency_model.calibrated: per thread count (as a string) its parameters
    measured_on: dict  # machine_provenance()


def machine_provenance(today: datetime.date | None = None) -> dict:
    """The machine a calibration runs on: CPU model (/proc/cpuinfo), usable cores, date."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip() or cpu
                break
    except OSError:  # not Linux: the model stays unknown
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    date = (today or datetime.date.today()).isoformat()
    return {"cpu": cpu, "cores": int(cores or 1), "date": date}


def template_profile() -> tuple[str, dict]:
    """The shipped host profile's text and its parsed content (what the fit is made against)."""
    text = SHIPPED_HOST.read_text()
    return text, load_yaml(text, str(SHIPPED_HOST))


def check_threads(threads: tuple[int, ...]) -> tuple[int, ...]:
    """Sorted unique thread counts; InputError for none or one below 1."""
    if not threads or min(threads) < 1:
        raise InputError(f"--threads {','.join(map(str, threads))!r}: expected counts >= 1")
    return tuple(sorted(set(threads)))


def measure_and_fit(
    rounds: int = CLI_ROUNDS,
    threads: tuple[int, ...] = THREADS,
    micro_every: int = CLI_MICRO_EVERY,
    on_round: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Time the micro-benchmarks and references in `rounds` interleaved rounds at each of
    `threads`, and fit the host latency model to them."""
    if rounds < 1:
        raise InputError(f"--rounds {rounds}: expected at least 1")
    threads = check_threads(threads)
    _, profile = template_profile()
    probes = calibration_probes(threads, micro_every)
    timings = run_rounds(probes, rounds, on_round=on_round)
    rows, session = rows_from(timings, profile["latency_model"], threads)
    return Calibration(rows, session, fit(rows, session, profile), machine_provenance())


def calibrated_yaml(block: dict) -> str:
    """The `calibrated:` block as the profile writes it: one flow-style line per field."""
    lines = ["  calibrated:"]
    for threads, values in block.items():
        lines.append(f'    "{threads}":')
        for key, value in values.items():
            lines.append(f"      {key}: {json.dumps(value)}")
    return "\n".join(lines)


def with_calibration(
    text: str, block: dict, measured_on: dict | None = None, source: str | None = None
) -> str:
    """`text` (a host profile) with its calibrated block replaced, keeping every comment;
    with `measured_on` its provenance line and with `source` its calibration_source too."""
    new = _CALIBRATED.sub(lambda m: m.group(1) + calibrated_yaml(block) + "\n" + m.group(2), text)
    if measured_on is not None:
        line = f"measured_on: {json.dumps(measured_on)}"
        if _MEASURED_ON.search(new):
            new = _MEASURED_ON.sub(lambda _: line, new)
        else:
            new = new.rstrip("\n") + "\n" + line + "\n"
    if source is not None:
        new = _SOURCE.sub(lambda m: f"{m.group(1)} {source}", new)
    return new


def write_profile(path: str | Path, text: str) -> dict:
    """Validate `text` as a profile (the loader's schema) and write it atomically to `path`."""
    path = Path(path)
    data = load_yaml(text, str(path))
    targets.validate(data, str(path))
    atomic.write_bytes(path, text.encode())
    return data


def calibrate_host(
    out: str | Path | None = None,
    rounds: int = CLI_ROUNDS,
    threads: tuple[int, ...] = THREADS,
    on_round: Callable[[int, int], None] | None = None,
) -> dict:
    """Measure, fit and write this machine's host profile (default: the user's one, which the
    loader prefers over the shipped one). Returns a summary of what was written."""
    path = Path(out) if out is not None else targets.user_profile_path("host")
    if path.is_dir():
        raise InputError(f"--out {str(path)!r} is a directory: expected a .yaml file path")
    cal = measure_and_fit(rounds, threads, on_round=on_round)
    text, _ = template_profile()
    source = f"sigdl targets calibrate host ({rounds} rounds)"
    write_profile(path, with_calibration(text, cal.block, cal.measured_on, source))
    return {
        "profile": str(path),
        "rounds": rounds,
        "threads": sorted(cal.session),
        "measured_on": cal.measured_on,
        "calibrated": cal.block,
    }
