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


def test_sigdl_core_knows_no_grpc_kfp_cli_services_or_pipelines():
    """ARCHITECTURE.md's layers: sigdl/core imports kernels and targets at most."""
    core = python_files("sigdl/core")
    assert {p.name for p in core} >= {
        "zoo.py",
        "datasets.py",
        "store.py",
        "lineage.py",
        "settings.py",
        "onnx_io.py",
        "reports.py",
        "events.py",
    }
    for path in core:
        bad = {
            m
            for m in imported_modules(path)
            if m.split(".")[0] in {"grpc", "kfp", "typer", "click", "services", "pipelines"}
            or m in {"sigdl.cli", "sigdl.api"}
            or (m.startswith("sigdl") and not m.startswith("sigdl.core") and m != "sigdl")
        }
        assert bad == set(), path


def test_services_and_pipelines_stay_below_the_composition_root():
    """Only sigdl/cli.py and sigdl/api.py compose the layers: a service never imports the
    pipelines, and the pipelines reach a stage only through its gRPC client (plus the recipe
    language, which is the compression stage's public contract)."""
    for path in python_files("services", "pipelines"):
        for m in imported_modules(path):
            assert m not in {"sigdl.cli", "sigdl.api"}, (path, m)
            if path.is_relative_to(REPO / "services"):
                assert not m.startswith("pipelines"), (path, m)
    allowed = ("services.grpc_common", "services.protos", "services.compression.recipe")
    for path in python_files("pipelines"):
        for m in imported_modules(path):
            if m.startswith("services."):
                assert m.endswith(".client") or m.startswith(allowed), (path, m)


def test_importing_the_package_does_not_initialize_cuda():
    code = (
        "import sigdl, sigdl.cli, sigdl.core.zoo, sigdl.core.training, kernels, torch;"
        "print(torch.cuda.is_initialized())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_kernels_import_without_cupy_and_never_touch_cuda():
    """`import kernels` (every module) works where CuPy cannot be imported, imports no CuPy
    where it can, and runs its CPU paths without initializing CUDA."""
    block = (
        "import sys\n"
        "class NoCupy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'cupy':\n"
        "            raise ImportError('cupy blocked by the test')\n"
        "sys.meta_path.insert(0, NoCupy())\n"
    )
    probe = (
        "import sys, numpy, torch, kernels, services.retest.compressed\n"
        "from kernels import sparse_linear\n"
        "x, csr, b = sparse_linear.example(2, (8, 9), 0.5, 5)\n"
        "sparse_linear.sparse_linear(x, csr, b)\n"
        "print('cupy' in sys.modules, torch.cuda.is_initialized())\n"
    )
    for prefix in (block, ""):
        out = subprocess.run(
            [sys.executable, "-c", prefix + probe], capture_output=True, text=True, check=True
        ).stdout
        assert out.split() == ["False", "False"]


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
