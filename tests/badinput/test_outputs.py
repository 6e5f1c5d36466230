"""Whole-folder outputs: `--out` is replaced in whole on success, left exactly as it was on
failure (absent stays absent), and refused when it is, holds or lies inside an input."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from sigdl.cli import main
from sigdl.core import atomic, store

TARGET = "jetson-tx2"
SMALL_RECIPE = """
name: outputs-smoke
seed: 0
steps:
  - type: prune
    sparsity: {fc1: 0.9, fc2: 0.8, fc3: 0.5}
    rounds: 1
  - type: huffman
"""


def refused(capsys, argv: list[str], needle: str) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert needle in lines[0], lines[0]
    return lines[0]


# --- --out that is, holds or lies inside an input ----------------------------------------------
def _argv(case: str, train: Path, comp: Path, root: Path) -> tuple[list[str], str]:
    """(command line, expected words) of each refused --out / --onnx."""
    compress = ["compress", str(train), "--recipe", "int8", "--out"]
    return {
        "compress-out-is-input": ([*compress, str(train)], "is the input"),
        "compress-out-inside-input": ([*compress, str(train / "c")], "is inside the input"),
        "compress-out-holds-input": ([*compress, str(root)], "holds the input"),
        "compress-out-is-a-file": ([*compress, str(train / "model.json")], "not a directory"),
        "compress-out-under-a-file": ([*compress, str(comp / "model.sdc" / "c")],
                                      "cannot be created"),
        "train-out-is-a-file": (["train", "--model", "lenet-300-100", "--dataset", "digits",
                                 "--epochs", "1", "--out", str(comp / "model.sdc")],
                                "not a directory"),
        "retest-out-is-input": (["retest", str(comp), "--target", TARGET, "--out", str(comp)],
                                "is the input"),
        "retest-out-holds-input": (["retest", str(comp), "--target", TARGET, "--out",
                                    str(root)], "holds the input"),
        "retest-out-is-the-models-run": (["retest", str(comp / "model.sdc"), "--target", TARGET,
                                          "--out", str(comp)], "holds the input"),
        "sensitivity-out-is-input": (["sensitivity", str(train), "--dataset", "digits",
                                      "--out", str(train)], "is the input"),
        "decompress-onnx-over-recorded": (["decompress", str(comp / "model.sdc"), "--onnx",
                                           str(comp / "model.onnx")], "would overwrite"),
        "decompress-onnx-is-the-sdc": (["decompress", str(comp / "model.sdc"), "--onnx",
                                        str(comp / "model.sdc")], "would overwrite"),
        "export-onnx-over-recorded": (["models", "export", str(train), "--onnx",
                                       str(train / "model.onnx")], "would overwrite"),
    }[case]  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [
        "compress-out-is-input",
        "compress-out-inside-input",
        "compress-out-holds-input",
        "compress-out-is-a-file",
        "compress-out-under-a-file",
        "train-out-is-a-file",
        "retest-out-is-input",
        "retest-out-holds-input",
        "retest-out-is-the-models-run",
        "sensitivity-out-is-input",
        "decompress-onnx-over-recorded",
        "decompress-onnx-is-the-sdc",
        "export-onnx-over-recorded",
    ],
)
def test_out_overlapping_an_input_is_refused(run_copy, tmp_path, capsys, tree_digest, case):
    train, comp = run_copy("train"), run_copy("compress")
    before = tree_digest(tmp_path)
    argv, needle = _argv(case, train, comp, tmp_path)
    refused(capsys, argv, needle)
    assert tree_digest(tmp_path) == before  # nothing written, nothing lost


def test_retest_out_inside_the_run_is_allowed(run_copy, tree_digest):
    # deploy reads <run>/retest/report.json: the one --out inside an input that is kept
    comp = run_copy("compress")
    before = tree_digest(comp)
    assert main(["retest", str(comp), "--target", TARGET, "--out", str(comp / "retest")]) == 0
    after = tree_digest(comp)
    assert {k: v for k, v in after.items() if not k.startswith("retest/")} == before
    assert sorted(p.name for p in (comp / "retest").iterdir()) == ["report.json", "verdict.md"]


# --- a failing run leaves --out as it was ------------------------------------------------------
def _prefill(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "report.json").write_text('{"command": "compress"}')
    (out / "model.sdc").write_bytes(b"previous run")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["compress", "{train}", "--recipe", "int8", "--dataset", "nope"], "nope"),
        (["compress", "{train}", "--recipe", "no-such-recipe"], "no-such-recipe"),
        (["compress", "{train}/missing", "--recipe", "int8"], "missing"),
        (["retest", "{comp}", "--target", "no-such-target"], "no-such-target"),
        (["sensitivity", "{train}", "--dataset", "digits", "--sparsities", "2"], "2"),
        (["train", "--model", "nope", "--dataset", "digits", "--epochs", "1"], "nope"),
    ],
)
@pytest.mark.parametrize("previous", ["absent", "existing"])
def test_a_failing_run_leaves_out_as_it_was(
    run_copy, tmp_path, capsys, tree_digest, argv, needle, previous
):
    train, comp = run_copy("train"), run_copy("compress")
    out = tmp_path / "parent" / "out"
    if previous == "existing":
        _prefill(out)
    before = tree_digest(tmp_path / "parent")
    args = [a.format(train=train, comp=comp) for a in argv]
    refused(capsys, [*args, "--out", str(out)], needle)
    assert tree_digest(tmp_path / "parent") == before  # absent: not even the parent appears


@pytest.mark.parametrize("previous", ["absent", "existing"])
def test_a_failure_while_staging_leaves_out_as_it_was(tmp_path, tree_digest, previous):
    out = tmp_path / "a" / "b" / "out"
    if previous == "existing":
        _prefill(out)
    before = tree_digest(tmp_path)
    with pytest.raises(RuntimeError), atomic.staged_dir(out) as stage:
        (stage / "model.sdc").write_bytes(b"half-written")
        raise RuntimeError("the job failed halfway")
    assert tree_digest(tmp_path) == before
    assert [p.name for p in tmp_path.rglob(".*")] == []  # no staging folder left behind


# --- success replaces --out in whole -----------------------------------------------------------
def test_compress_into_a_used_out_leaves_only_the_new_files(chain_runs, run_copy, tmp_path):
    out = run_copy("compress")  # a previous run with model.int8.onnx
    (out / "notes.txt").write_text("left over")
    (tmp_path / "small.yaml").write_text(SMALL_RECIPE)
    assert main(["compress", str(chain_runs["train"]), "--recipe", str(tmp_path / "small.yaml"),
                 "--out", str(out)]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [
        "model.onnx", "model.sdc", "report.json", "report.md"]  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["name"] == "outputs-smoke"
    assert set(report["files"]) == {"model.onnx", "model.sdc", "report.md"}
    assert main(["decompress", str(out / "model.sdc"), "--onnx", str(tmp_path / "d.onnx")]) == 0


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "rename-aside"])
def test_swap_replaces_the_whole_folder(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_renameat2", None)  # what another OS gets
    out = tmp_path / "out"
    _prefill(out)
    out.chmod(0o750)
    with atomic.staged_dir(out) as stage:
        (stage / "report.json").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    assert (out / "report.json").read_text() == "new"
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # the previous folder's permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left aside
    fresh = tmp_path / "fresh"
    with atomic.staged_dir(fresh) as stage:
        (stage / "x").write_text("x")
    assert stat.S_IMODE(fresh.stat().st_mode) == atomic.DIR_MODE


def test_a_job_prefix_is_replaced_by_the_new_runs_objects(tmp_path):
    prefix = store.as_uri(tmp_path / "prefix")
    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.int8.onnx", "report.json", "model.sdc"):
        (old / name).write_text(f"old {name}")
    store.put_dir(prefix, old)
    new = tmp_path / "new"
    new.mkdir()
    for name in ("report.json", "model.sdc"):
        (new / name).write_text(f"new {name}")
    digests = store.replace_dir(prefix, new)
    assert list(digests) == ["model.sdc", "report.json"]  # the report last
    names = sorted(uri.rsplit("/", 1)[1] for uri in store.list_uris(prefix))
    assert names == ["model.sdc", "report.json"]
    assert store.get_bytes(f"{prefix}/model.sdc") == b"new model.sdc"
