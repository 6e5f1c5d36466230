"""Atomic writes: all or nothing, and readable like any other file."""

import stat

import pytest

from sigdl.core import atomic


def test_written_files_are_readable_by_others(tmp_path):
    # regression: mkstemp creates 0600 files, which hid artifacts from other users and services
    path = atomic.write_bytes(tmp_path / "model.onnx", b"x") or tmp_path / "model.onnx"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failed_staged_dir_leaves_the_previous_artifacts(tmp_path):
    atomic.write_bytes(tmp_path / "report.json", b"old")
    with pytest.raises(RuntimeError), atomic.staged_dir(tmp_path) as stage:
        atomic.write_bytes(stage / "report.json", b"new")
        raise RuntimeError("the job failed")
    assert (tmp_path / "report.json").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
