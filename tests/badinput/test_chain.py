"""The artifact chain under tampering: a file changed, removed or added after `sigdl train` or
`sigdl compress` is refused by deploy, retest, decompress, export and compress, with exit 2,
one line naming the file (and the digest expected), and nothing written or lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sigdl.cli import main
from sigdl.core import chain

TARGET = "jetson-tx2"


def tamper(path: Path, how: str, other: Path | None = None) -> None:
    if how == "append":
        path.write_bytes(path.read_bytes() + b"\0")
    elif how == "flip":  # one byte in the middle: same size, different content
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "swap":  # a valid file of the same kind from another run
        shutil.copyfile(other, path)
    else:
        raise AssertionError(how)


def command(consumer: str, folder: Path, tmp_path: Path) -> list[str]:
    """The consumer's command line over `folder` (writing only under tmp_path/out*)."""
    return {
        "deploy": ["deploy", str(folder), "--target", TARGET, "--fleet", "lab",
                   "--store", str(tmp_path / "store")],
        "retest": ["retest", str(folder), "--target", TARGET, "--out", str(tmp_path / "out")],
        "decompress": ["decompress", str(folder / "model.sdc"), "--onnx",
                       str(tmp_path / "out.onnx")],
        "export": ["models", "export", str(folder), "--onnx", str(tmp_path / "out.onnx")],
        "compress": ["compress", str(folder), "--recipe", "int8", "--out", str(tmp_path / "out")],
        "sensitivity": ["sensitivity", str(folder), "--dataset", "digits", "--out",
                        str(tmp_path / "out")],
    }[consumer]  # fmt: skip


def refused(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def outputs_absent(tmp_path: Path) -> None:
    for name in ("store", "out", "out.onnx"):
        assert not (tmp_path / name).exists(), name


# --- a file changed after the run -------------------------------------------------------------
CHANGED = [
    ("deploy", "compress", "model.onnx", "append"),
    ("deploy", "compress", "model.int8.onnx", "flip"),
    ("deploy", "compress", "model.sdc", "flip"),
    ("deploy", "compress", "model.onnx", "swap"),
    ("deploy", "train", "model.onnx", "flip"),
    ("retest", "compress", "model.onnx", "flip"),
    ("retest", "compress", "model.int8.onnx", "append"),
    ("retest", "compress", "model.sdc", "append"),
    ("retest", "train", "model.safetensors", "flip"),
    ("retest", "train", "model.json", "append"),
    ("retest", "train", "model.onnx", "swap"),
    ("decompress", "compress", "model.sdc", "flip"),
    ("decompress", "compress", "model.sdc", "append"),
    ("export", "train", "model.safetensors", "flip"),
    ("export", "train", "model.json", "append"),
    ("compress", "train", "model.safetensors", "append"),
    ("compress", "train", "model.json", "append"),
]


@pytest.mark.parametrize(("consumer", "run", "name", "how"), CHANGED)
def test_a_changed_file_is_refused_naming_it_and_its_digest(
    run_copy, chain_runs, tmp_path, capsys, tree_digest, consumer, run, name, how
):
    folder = run_copy(run)
    expected = json.loads((folder / "report.json").read_text())["files"][name]
    other = chain_runs["train" if run == "compress" else "compress"] / name
    tamper(folder / name, how, other)
    before = tree_digest(folder)
    refused(capsys, command(consumer, folder, tmp_path), name, expected)
    assert tree_digest(folder) == before
    outputs_absent(tmp_path)


# --- a file missing, or one the report does not record ------------------------------------------
@pytest.mark.parametrize("consumer", ["deploy", "retest"])
def test_a_recorded_file_that_is_gone_is_refused(run_copy, tmp_path, capsys, consumer):
    folder = run_copy("compress")
    (folder / "model.int8.onnx").unlink()
    refused(capsys, command(consumer, folder, tmp_path), "model.int8.onnx", "is missing")
    outputs_absent(tmp_path)


@pytest.mark.parametrize(("consumer", "name"), [("deploy", "model.int8.onnx"),
                                                ("deploy", "model.sdc"),
                                                ("retest", "model.sdc")])  # fmt: skip
def test_a_file_copied_in_from_another_run_is_refused(
    run_copy, chain_runs, tmp_path, capsys, tree_digest, consumer, name
):
    folder = run_copy("train")
    shutil.copyfile(chain_runs["compress"] / name, folder / name)
    before = tree_digest(folder)
    refused(capsys, command(consumer, folder, tmp_path), name, "not one of the files")
    assert tree_digest(folder) == before
    outputs_absent(tmp_path)


# --- the checkpoint's own weights_sha256, without a report beside it ----------------------------
# (a retest of a train folder measures its model.onnx, which a report binds, not the weights)
@pytest.mark.parametrize("consumer", ["export", "sensitivity", "compress"])
def test_weights_changed_are_refused_by_model_json_digest(run_copy, tmp_path, capsys, consumer):
    folder = run_copy("train")
    (folder / "report.json").unlink()  # only model.json's weights_sha256 is left to check
    expected = json.loads((folder / "model.json").read_text())["weights_sha256"]
    tamper(folder / "model.safetensors", "flip")
    refused(capsys, command(consumer, folder, tmp_path), "model.safetensors", expected)
    outputs_absent(tmp_path)


def test_a_malformed_weights_digest_is_refused(run_copy, tmp_path, capsys):
    folder = run_copy("train")
    (folder / "report.json").unlink()
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "weights_sha256": "x" * 5000}))
    line = refused(capsys, command("export", folder, tmp_path), "64 lowercase hex digits")
    assert len(line) < 300  # the forged value is quoted short
    outputs_absent(tmp_path)


# --- the report itself ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("consumer", "content", "needle"),
    [
        ("deploy", b"{not json", "not valid JSON"),
        ("retest", b"{not json", "not valid JSON"),
        ("deploy", b"[1, 2]", "expected a JSON object"),
        ("decompress", json.dumps({"command": "compress", "files": "all"}).encode(), "files="),
        ("retest", json.dumps({"command": "compress",
                               "files": {"model.sdc": "ab" * 40}}).encode(), "model.sdc"),
    ],
)  # fmt: skip
def test_a_broken_report_is_refused(run_copy, tmp_path, capsys, consumer, content, needle):
    folder = run_copy("compress")
    (folder / "report.json").write_bytes(content)
    refused(capsys, command(consumer, folder, tmp_path), needle)
    outputs_absent(tmp_path)


# --- what a retest measured against what deploy ships -------------------------------------------
def test_a_retest_of_other_bytes_is_refused_by_deploy(run_copy, tmp_path, capsys):
    from services.retest.stage import run_retest

    folder = run_copy("compress")
    report = run_retest(str(folder), TARGET)
    measured = report["inputs"]["model"]["files"]
    assert measured["model.sdc"] == chain.sha256_file(folder / "model.sdc")
    report["inputs"]["model"]["files"]["model.sdc"] = "0" * 64  # a retest of another model
    (tmp_path / "retest.json").write_text(json.dumps(report))
    argv = [*command("deploy", folder, tmp_path), "--retest", str(tmp_path / "retest.json")]
    refused(capsys, argv, "retest report measured model.sdc", "0" * 16)
    outputs_absent(tmp_path)


def test_a_retest_of_the_shipped_files_is_taken(run_copy, tmp_path):
    from services.deploy.stage import run_deploy
    from services.retest.stage import run_retest

    folder = run_copy("compress")
    run_retest(str(folder), TARGET, folder / "retest")  # deploy reads <run>/retest/report.json
    result = run_deploy(str(folder), TARGET, "lab", store_root=str(tmp_path / "store"))
    assert result["metrics"]["retest_passed"] in (True, False)
    report = json.loads((folder / "report.json").read_text())
    for name, entry in result["files"].items():
        assert entry["sha256"] == report["files"][name] == report["chain"][name]["sha256"]


def test_the_reports_bind_files_to_accuracies(chain_runs):
    train = json.loads((chain_runs["train"] / "report.json").read_text())
    comp = json.loads((chain_runs["compress"] / "report.json").read_text())
    assert set(train["files"]) == {"model.safetensors", "model.json", "model.onnx"}
    assert set(comp["files"]) == {"model.sdc", "model.onnx", "model.int8.onnx", "report.md"}
    assert comp["chain"]["model.onnx"]["from"] == "model.sdc"
    assert comp["chain"]["model.int8.onnx"]["from"] == "model.onnx"
    m = comp["metrics"]
    assert comp["chain"]["model.onnx"]["onnx_test_accuracy"] == m["onnx_test_accuracy"]
    assert (
        comp["chain"]["model.int8.onnx"]["int8_onnx_test_accuracy"]
        == (m["int8_onnx_test_accuracy"])
    )
    assert comp["inputs"]["checkpoint"]["files"] == {
        n: train["files"][n] for n in ("model.safetensors", "model.json")
    }
    assert comp["inputs"]["dataset"]["sha256"] == train["inputs"]["dataset"]["sha256"]
    for folder, report in ((chain_runs["train"], train), (chain_runs["compress"], comp)):
        for name, digest in report["files"].items():
            assert chain.sha256_file(folder / name) == digest
