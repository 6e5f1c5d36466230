"""Bounded parsing of every YAML SigDL reads: recipes, loop configs, target profiles.

Each case writes a real file, reads it the way the product does, and checks the refusal: an
InputError (exit 2 on the CLI) in well under a second, one line under 300 characters that
names the file and what was wrong; where a command had an `--out`, its previous outputs are
byte for byte what they were.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import yaml

import targets
from pipelines.controller import LoopConfig
from services.compression.recipe import load_recipe
from sigdl.cli import main
from sigdl.core import checkpoint
from sigdl.core.errors import InputError
from sigdl.core.yamlio import MAX_YAML_BYTES, YamlError, load_yaml

LIMIT_CHARS = 300  # "a message under 300 characters" (the alias bomb; most are far shorter)
LINE_CHARS = 500  # any refusal: a few names listed, the bad value quoted by a short prefix
LIMIT_S = 1.0  # "refused in under a second"

BOMB = "\n".join(
    ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    + ["steps: *a9"]
)  # 9**10 strings once expanded: yaml.safe_load would build billions of list slots

RECIPE_OK = {
    "name": "ok",
    "description": "fine",
    "seed": 0,
    "steps": [{"type": "prune", "sparsity": {"fc": 0.5}, "rounds": 1}],
}


def _with(**changes: object) -> str:
    body = {**RECIPE_OK, **changes}
    return yaml.safe_dump({k: v for k, v in body.items() if v is not _DROP}, sort_keys=False)


_DROP = object()


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(call, *args, kind: type[BaseException] = InputError) -> str:
    """Run `call`, which must raise `kind` fast with one short line; return the message."""
    started = time.monotonic()
    with pytest.raises(kind) as caught:
        call(*args)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert elapsed < LIMIT_S, f"took {elapsed:.2f} s"
    assert "\n" not in message and len(message) < LIMIT_CHARS, message
    return message


# --- recipes -----------------------------------------------------------------------------------
RECIPE_CASES = [
    ("alias-bomb", BOMB, "anchors and aliases"),
    ("anchor-only", "name: &n x\nsteps: [{type: huffman}]\n", "anchors and aliases"),
    ("merge-key", "base: &b {type: huffman}\nsteps: [{<<: *b}]\n", "anchors and aliases"),
    ("oversize", "# " + "x" * MAX_YAML_BYTES + "\nsteps: []\n", "larger than"),
    ("deep-nesting", "steps: " + "[" * 200 + "]" * 200 + "\n", "nested deeper"),
    ("not-utf8", b"name: \xff\xfe\nsteps: []\n", "not UTF-8"),
    ("syntax", "steps: [type: prune\n", "not valid YAML"),
    ("top-level-list", "- {type: huffman}\n", "expected a mapping"),
    ("top-level-scalar", "just text\n", "expected a mapping"),
    ("description-list", _with(description=["a", "b"]), "description="),
    ("description-number", _with(description=5), "description=5"),
    ("description-huge", _with(description="d" * 100_000), "description='ddd"),
    ("name-list", _with(name=[1]), "name=[1]"),
    ("name-huge", _with(name="n" * 100_000), "at most 200"),
    ("seed-string", _with(seed="x"), "seed='x'"),
    ("seed-negative", _with(seed=-1), "seed=-1"),
    ("seed-huge", _with(seed=2**70), "0..2**63-1"),
    ("seed-bool", _with(seed=True), "seed=True"),
    ("steps-missing", _with(steps=_DROP), "missing 'steps'"),
    ("steps-mapping", _with(steps={"a": 1}), "non-empty list of steps"),
    ("steps-empty", _with(steps=[]), "non-empty list of steps"),
    ("steps-too-many", _with(steps=[{"type": "huffman"} for _ in range(65)]), "at most 64"),
    ("step-type-huge", _with(steps=[{"type": "p" * 10_000}]), "unknown step type 'ppp"),
    ("step-not-mapping", _with(steps=["prune"]), "steps[0]"),
    ("sparsity-huge-string", _with(steps=[{"type": "prune", "sparsity": "s" * 10_000}]), "sss"),
    ("sparsity-list", _with(steps=[{"type": "prune", "sparsity": [0.1, 0.2]}]), "sparsity"),
    ("sparsity-above-one", _with(steps=[{"type": "prune", "sparsity": 1.5}]), "sparsity"),
    ("layer-key-int", _with(steps=[{"type": "prune", "sparsity": {1: 0.5}}]), "key 1"),
    ("unknown-int-key", "1: x\nsteps: [{type: huffman}]\n", "unknown field(s) 1"),
    ("unknown-field", _with(colour="red"), "unknown field(s) 'colour'"),
    (
        "retrain-epochs-string",
        _with(steps=[{"type": "share", "retrain": {"epochs": "x"}}]),
        "epochs",
    ),
    ("share-bits-99", _with(steps=[{"type": "share", "bits": 99}]), "bits=99"),
    ("quantize-layers-int", _with(steps=[{"type": "quantize", "layers": 5}]), "layers=5"),
    (
        "huffman-index-bits-bool",
        _with(steps=[{"type": "huffman", "index_bits": True}]),
        "index_bits",
    ),
]


@pytest.mark.parametrize(("text", "complaint"), [c[1:] for c in RECIPE_CASES],
                         ids=[c[0] for c in RECIPE_CASES])  # fmt: skip
def test_bad_recipe_is_refused_fast_in_one_short_line(tmp_path, text, complaint):
    path = tmp_path / "r.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    message = refused(load_recipe, path)
    assert message.startswith(str(path)), message
    assert complaint in message


def test_alias_bomb_recipe_through_the_cli_leaves_out_intact(tmp_path, capsys):
    """`sigdl compress` with a bomb recipe: exit 2, one short line, `--out` untouched."""
    ckpt = tmp_path / "ckpt"
    meta = checkpoint.ModelMeta(model="lenet-300-100", input_size=8, channels=1, classes=10,
                                mean=[0.5], std=[0.5], dataset="digits")  # fmt: skip
    checkpoint.save_checkpoint(checkpoint.build(meta), meta, ckpt)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"previous": true}')
    before = tree_digest(out)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    started = time.monotonic()
    code = main(["compress", str(ckpt), "--recipe", str(bomb), "--dataset", "digits",
                 "--out", str(out)])  # fmt: skip
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert code == 2 and "anchors and aliases" in err, err
    assert len(err.splitlines()) == 1 and len(err) < LIMIT_CHARS
    assert elapsed < 10  # the command imports torch; the refusal itself is instant
    assert tree_digest(out) == before


# --- loop configs (`sigdl run --config`) --------------------------------------------------------
CONFIG_CASES = [
    ("alias-bomb", BOMB.replace("steps:", "targets:"), "anchors and aliases"),
    ("model-int", "model: 5\n", "model=5: expected a str"),
    ("dataset-list", "dataset: [x]\n", "dataset=['x']"),
    ("fleet-mapping", "fleet: {a: 1}\n", "fleet="),
    ("out-int", "out: 5\n", "out=5"),
    ("targets-ints", "targets: [1, 2]\n", "targets=[1, 2]"),
    ("targets-huge", "targets: [" + ", ".join(["t"] * 300) + "]\n", "at most 256"),
    ("recipes-string", "recipes: deep\n", "recipes='deep'"),
    ("requirements-empty-string", "requirements: ['']\n", "requirements=['']"),
    ("train-list", "train: [1]\n", "train=[1]"),
    ("epochs-negative", "epochs: -1\n", "epochs=-1"),
    ("epochs-float", "epochs: 1.5\n", "epochs=1.5"),
    ("nproc-zero", "nproc: 0\n", "nproc=0"),
    ("max-iterations-huge", "max_iterations: 100000\n", "max_iterations=100000"),
]


@pytest.mark.parametrize(("text", "complaint"), [c[1:] for c in CONFIG_CASES],
                         ids=[c[0] for c in CONFIG_CASES])  # fmt: skip
def test_bad_loop_config_is_refused_fast_in_one_short_line(tmp_path, text, complaint):
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    message = refused(LoopConfig.from_file, path)
    assert message.startswith("--config"), message
    assert complaint in message


def test_alias_bomb_config_through_sigdl_run_is_exit_2(tmp_path, capsys):
    path = tmp_path / "loop.yaml"
    path.write_text(BOMB)
    started = time.monotonic()
    code = main(["run", "--config", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "anchors and aliases" in err, err
    assert len(err.splitlines()) == 1 and len(err) < LIMIT_CHARS
    assert time.monotonic() - started < 10
    assert not (tmp_path / "sigdl-home" / "runs").exists()


# --- target profiles ---------------------------------------------------------------------------
def _profile(**changes: object) -> str:
    data = yaml.safe_load((Path(targets.__file__).parent / "arm-cortex-a53.yaml").read_text())
    data.update(changes)
    return yaml.safe_dump(data, sort_keys=False)


PROFILE_CASES = [
    ("alias-bomb", BOMB, "anchors and aliases"),
    ("not-a-mapping", "- 1\n", "<top level>"),
    ("description-number", lambda: _profile(description=5), "field 'description'"),
    ("description-huge-list", lambda: _profile(description=list(range(10_000))), "description"),
    ("compute-string", lambda: _profile(compute="x" * 10_000), "field 'compute'"),
    ("precisions-empty", lambda: _profile(precisions=[]), "precisions"),
]


@pytest.mark.parametrize(("text", "complaint"), [c[1:] for c in PROFILE_CASES],
                         ids=[c[0] for c in PROFILE_CASES])  # fmt: skip
def test_bad_target_profile_is_a_profile_error(tmp_path, text, complaint):
    path = tmp_path / "board.yaml"
    path.write_text(text() if callable(text) else text)
    message = refused(targets.load_file, path, kind=targets.ProfileError)
    assert complaint in message


@pytest.mark.parametrize("name", ["../../etc/passwd", "nope" * 5_000, "arm-cortex-a53/../x", ""])
def test_unknown_target_name_is_never_a_path(name):
    message = refused(targets.load_profile, name, kind=targets.ProfileError)
    assert "unknown target" in message and "available:" in message


def test_yaml_loader_is_plain_data():
    assert load_yaml("a: [1, {b: c}]\n") == {"a": [1, {"b": "c"}]}
    assert load_yaml("") is None
    with pytest.raises(YamlError, match="anchors"):
        load_yaml("a: &x 1\nb: *x\n")
