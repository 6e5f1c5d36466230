"""Shared plumbing of the benchmark scripts: run the real CLI, merge results, write tables.

Results go to `benchmarks/results/<name>.json` (merged by key, so a benchmark can be run in
pieces) and `benchmarks/results/<name>.md`. Scratch output goes to `benchmarks/results/.work/`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = RESULTS / ".work"


def sigdl(*args: str, env: dict | None = None) -> dict:
    """Run `sigdl ARGS --json` as a user would and return its JSON result."""
    cmd = [sys.executable, "-m", "sigdl.cli", *args, "--json"]
    full_env = {**os.environ, "SIGDL_PROGRESS": "0", **(env or {})}
    started = time.perf_counter()
    # from the repository root, so that the `services` package is the one imported
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
    result["_wall_s"] = time.perf_counter() - started
    return result


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def merge(name: str, key: str, row: dict) -> dict:
    """Add/replace `row` under `key` in results/<name>.json; return the whole document."""
    path = RESULTS / f"{name}.json"
    doc = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    doc["machine"] = machine()
    doc["rows"][key] = row
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def write_table(
    name: str, title: str, header: list[str], rows: list[list], notes: str = ""
) -> None:
    lines = [
        f"# {title}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    # commands are shown relative to the repository, as a user would type them there
    lines += ["| " + " | ".join(str(c).replace(f"{ROOT}/", "") for c in r) + " |" for r in rows]
    if notes:
        lines += ["", notes]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def pairs_to_run(doc: str, runs: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """Parse `--only model:dataset ...` and `--table`; None means: only rewrite the table."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model:dataset pairs to (re)run")
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    args = parser.parse_args()
    if args.table:
        return None
    return [tuple(p.split(":", 1)) for p in args.only] if args.only else runs


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())
