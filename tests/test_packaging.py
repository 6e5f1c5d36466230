"""Packaging: product code imports only what `pip install .` brings, and that install runs the CLI.

.venv/bin/python -m pytest -q tests/test_packaging.py -p no:cacheprovider
.venv/bin/python -m pytest -q tests/test_packaging.py -m "not fresh_venv"  # the quick ones
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ["sigdl", "services", "pipelines", "targets", "kernels"]
OWN_PACKAGES = {*PRODUCT, "benchmarks"}
# asked for by name: the pipelines compile with kfp, and targets validate with jsonschema
REQUIRED_BY_NAME = ["kfp", "kfp-kubernetes", "jsonschema"]
TORCH_PIN = "torch==2.13.0"  # the CPU wheel these machines carry; a range pulls a CUDA build
PIP_QUIET = ["--disable-pip-version-check", "-q"]


def normalize(name: str) -> str:
    """A distribution name in PEP 503 form: lowercase, each run of -_. becomes one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot read a distribution name from requirement {requirement!r}")
    return normalize(match.group(1))


def declared_distributions(pyproject: Path) -> tuple[set[str], dict[str, set[str]]]:
    """The normalized names in [project].dependencies, and in each optional extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    runtime = {_requirement_name(r) for r in project.get("dependencies", [])}
    extras = {
        extra: {_requirement_name(r) for r in requirements}
        for extra, requirements in project.get("optional-dependencies", {}).items()
    }
    return runtime, extras


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(body: Sequence[ast.stmt], at_import_time: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Each import statement with whether it runs when its module is imported.

    Module and class bodies run at import time, and so do the `if`/`try`/`with`/loop blocks inside
    them; a function body runs only when called, and an `if TYPE_CHECKING:` block never does.
    """
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, at_import_time
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _imports(node.body, False)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.body, False)
            yield from _imports(node.orelse, at_import_time)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                for child in getattr(node, field, []):
                    # an `except` or `case` clause is not a statement: its body holds them
                    clause = isinstance(child, ast.excepthandler | ast.match_case)
                    yield from _imports(child.body if clause else [child], at_import_time)


def _top_level_modules(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split(".")[0]]
    return []  # a relative import: our own code


def undeclared_imports(roots: Sequence[Path], pyproject: Path) -> list[str]:
    """Third-party imports under `roots` that a plain `pip install .` would not bring.

    An import that runs at module import time must come from [project].dependencies; one inside a
    function may also come from an optional extra (a lazy import behind that extra). A module no
    installed distribution provides is reported too. Each line reads `file:line module -> dist`.
    """
    runtime, extras = declared_distributions(pyproject)
    in_extras = {dist: extra for extra, dists in extras.items() for dist in dists}
    providers = importlib.metadata.packages_distributions()
    own = OWN_PACKAGES | {root.name for root in roots}
    problems = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            where_file = path.relative_to(root.parent)
            for node, eager in _imports(tree.body, at_import_time=True):
                for module in _top_level_modules(node):
                    if module in sys.stdlib_module_names or module in own:
                        continue
                    where = f"{where_file}:{node.lineno} {module}"
                    dists = sorted({normalize(d) for d in providers.get(module, [])})
                    if not dists and not eager and _named_in_an_extra(module, in_extras):
                        continue  # a lazy import behind an extra not installed here (cupy)
                    if not dists:
                        problems.append(
                            f"{where} -> (not installed in this venv: no distribution provides "
                            f"it; declare the one that does in [project].dependencies)"
                        )
                        continue
                    allowed = runtime if eager else runtime | set(in_extras)
                    if allowed.intersection(dists):
                        continue
                    shown = " | ".join(dists)
                    extra = next((in_extras[d] for d in dists if d in in_extras), None)
                    if extra is not None:
                        fix = (
                            f"it is only in the {extra!r} extra: add it to [project].dependencies "
                            f"or import it inside the function that needs it"
                        )
                    else:
                        fix = f"add {dists[0]!r} to [project].dependencies"
                    problems.append(f"{where} -> {shown} ({fix})")
    return problems


def _named_in_an_extra(module: str, in_extras: dict[str, str]) -> bool:
    """An extra declares the distribution of `module` by its name: `cupy` is provided by
    `cupy-cuda12x` (the `gpu` extra), which cannot be installed where there is no CUDA."""
    name = normalize(module)
    return any(dist == name or dist.startswith(f"{name}-") for dist in in_extras)


def test_every_third_party_import_in_product_code_is_a_declared_dependency():
    problems = undeclared_imports([REPO / p for p in PRODUCT], REPO / "pyproject.toml")
    assert problems == [], "imports that `pip install .` does not bring:\n" + "\n".join(problems)


def test_kfp_kfp_kubernetes_and_jsonschema_are_runtime_dependencies():
    runtime, _ = declared_distributions(REPO / "pyproject.toml")
    missing = [name for name in REQUIRED_BY_NAME if normalize(name) not in runtime]
    assert missing == [], f"add {missing} to [project].dependencies in pyproject.toml"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_project(tmp_path: Path) -> Path:
    """A pyproject declaring numpy at runtime and pytest in the dev extra."""
    _write(
        tmp_path / "pyproject.toml",
        '[project]\nname = "fake"\ndependencies = ["NumPy>=1.26"]\n'
        '[project.optional-dependencies]\ndev = ["pytest>=8"]\n',
    )
    return tmp_path


def test_scanner_reports_an_undeclared_top_level_import_and_accepts_a_lazy_extra(fake_project):
    # yaml is installed (PyYAML, a module named unlike its distribution) but not declared here
    _write(
        fake_project / "fakepkg" / "core.py",
        "import os\nimport numpy as np\nfrom . import sibling\nfrom fakepkg import other\n"
        "try:\n    import yaml\nexcept ImportError:\n    pass\n\n\n"
        "def check():\n    import pytest\n\n    return pytest\n\n\n"
        "class Checker:\n    def check(self):\n        import pytest\n",
    )
    problems = undeclared_imports([fake_project / "fakepkg"], fake_project / "pyproject.toml")
    assert problems == ["fakepkg/core.py:6 yaml -> pyyaml (add 'pyyaml' to [project].dependencies)"]


def test_scanner_reports_an_eager_extra_import_and_a_module_not_installed(fake_project):
    _write(
        fake_project / "fakepkg" / "tool.py",
        "import pytest\n\n\ndef run():\n    import surely_not_installed_anywhere\n",
    )
    problems = undeclared_imports([fake_project / "fakepkg"], fake_project / "pyproject.toml")
    assert len(problems) == 2, problems
    assert problems[0].startswith("fakepkg/tool.py:1 pytest -> pytest (it is only in the 'dev'")
    assert problems[1].startswith("fakepkg/tool.py:5 surely_not_installed_anywhere -> (not inst")


def test_scanner_accepts_a_lazy_import_of_an_extra_that_is_not_installed(fake_project):
    """`cupy` comes from the gpu extra's cupy-cuda12x, which cannot be installed without CUDA:
    a lazy import of it is fine, an eager one is not."""
    pyproject = fake_project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + 'gpu = ["cupy-cuda12x>=13"]\n')
    _write(fake_project / "fakepkg" / "gpu.py", "def run():\n    import cupy\n")
    assert undeclared_imports([fake_project / "fakepkg"], pyproject) == []
    _write(fake_project / "fakepkg" / "gpu.py", "import cupy\n")
    (problem,) = undeclared_imports([fake_project / "fakepkg"], pyproject)
    assert problem.startswith("fakepkg/gpu.py:1 cupy -> (not installed")


def _run(args: Sequence[str | Path], cwd: Path, timeout_s: float) -> str:
    # a clean environment: nothing may reach the repository or the test's own venv
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))} exited {done.returncode}\n"
        f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    )
    return done.stdout


def _project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.fresh_venv
@pytest.mark.timeout(1500)
def test_a_fresh_venv_from_pip_install_dot_runs_the_cli(tmp_path: Path):
    # build from a copy: an in-tree build leaves build/ behind, and other builds may share the tree
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs"
        ),
    )
    base_python = getattr(sys, "_base_executable", None) or shutil.which("python3")
    venv = tmp_path / "venv"
    _run([base_python, "-m", "venv", venv], tmp_path, 300)
    python, sigdl = venv / "bin" / "python", venv / "bin" / "sigdl"
    _run([python, "-m", "pip", "install", *PIP_QUIET, TORCH_PIN], tmp_path, 1200)
    _run([python, "-m", "pip", "install", *PIP_QUIET, source], tmp_path, 1200)

    where = _run([python, "-c", "import sigdl; print(sigdl.__file__)"], tmp_path, 120)
    assert Path(where.strip()).is_relative_to(venv), f"sigdl imported from {where.strip()}"
    assert "--config" in _run([sigdl, "run", "--help"], tmp_path, 300)
    assert "arm-cortex-a53" in _run([sigdl, "targets", "list"], tmp_path, 300)
    assert _run([sigdl, "--version"], tmp_path, 300).strip() == f"sigdl {_project_version()}"
