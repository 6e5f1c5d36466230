"""House rules of ARCHITECTURE.md and DEVELOPERS.md, checked on the source tree."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO.parent / "shared" / "schemas"
PRODUCT = ["sigdl", "services", "pipelines", "kernels", "targets"]
STAGES = ["training", "compression", "retest", "deploy"]


def python_files(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((REPO / f).rglob("*.py")) if "_pb2" not in p.name]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_settings_reads_the_environment():
    offenders = [
        str(p.relative_to(REPO))
        for p in python_files(*PRODUCT)
        if p.name != "settings.py" and re.search(r"os\.environ|os\.getenv|getenv\(", p.read_text())
    ]
    assert offenders == []


def test_no_pickle_and_no_unsafe_torch_load():
    for path in python_files(*PRODUCT):
        text = path.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)


def test_a_stage_never_imports_another_stage():
    for stage in STAGES:
        for path in python_files(f"services/{stage}"):
            others = {
                m
                for m in imported_modules(path)
                for s in STAGES
                if s != stage and m.startswith(f"services.{s}")
            }
            assert others == set(), path


def test_sigdl_core_knows_no_grpc_kfp_or_cli_framework():
    for path in python_files("sigdl"):
        if path.name == "cli.py":
            continue
        bad = {
            m
            for m in imported_modules(path)
            if m.split(".")[0] in {"grpc", "kfp", "typer", "click"}
        }
        assert bad == set(), path


def test_importing_the_package_does_not_initialize_cuda():
    code = (
        "import sigdl, sigdl.cli, sigdl.zoo, sigdl.training, kernels, torch;"
        "print(torch.cuda.is_initialized())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_skaffold_yaml_matches_its_schema():
    schema_path = SCHEMAS / "skaffold-v4beta14.json"
    if not schema_path.exists():
        pytest.skip("../shared/schemas is not present")
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    image = config["build"]["artifacts"][0]
    assert (REPO / image["docker"]["dockerfile"]).is_file()


def test_dockerfile_installs_every_package_and_pins_torch():
    text = (REPO / "Dockerfile").read_text()
    for folder in PRODUCT:
        assert f"COPY {folder} ./{folder}" in text
    assert "torch==2.13.0" in text and 'ENTRYPOINT ["sigdl"]' in text
