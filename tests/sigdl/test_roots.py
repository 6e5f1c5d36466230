"""Artifact URIs a service request may name: inside the roots, no '..', no symlink escape."""

from __future__ import annotations

from pathlib import Path

import pytest

from sigdl.core import jobs, store
from sigdl.core.roots import ArtifactAccessError, allowed_roots, check_uri


def test_uris_must_stay_inside_the_roots(tmp_path: Path):
    home = tmp_path / "home"
    (home / "runs" / "a").mkdir(parents=True)
    (home / "escape").symlink_to(tmp_path)
    roots = [store.as_uri(home), "s3://artifacts/sigdl"]
    inside = [store.as_uri(home / "runs" / "a"), "s3://artifacts/sigdl/runs/1"]
    for uri in inside:
        assert check_uri(uri, "model.uri", roots) == uri
    refused = [
        "file:///etc/passwd",
        store.as_uri(home) + "/runs/../../x",
        store.as_uri(home) + "/runs/%2E%2E/%2e%2e/x",
        store.as_uri(home / "escape"),
        store.as_uri(tmp_path / "home2"),  # a sibling sharing the prefix "home"
        "s3://artifacts/sigdl-other/x",
        "s3://artifacts/sigdl/../x",
    ]
    for uri in refused:
        with pytest.raises(ArtifactAccessError, match=r"model\.uri"):
            check_uri(uri, "model.uri", roots)
    for uri in ("", "runs/a", "http://example.com/x"):
        with pytest.raises(jobs.FieldError, match=r"model\.uri"):
            check_uri(uri, "model.uri", roots)


def test_default_roots_are_the_home(sigdl_env: Path, monkeypatch: pytest.MonkeyPatch):
    assert allowed_roots() == [store.as_uri(sigdl_env)]
    monkeypatch.setenv("SIGDL_ARTIFACT_ROOTS", "s3://a, /data/x")
    assert allowed_roots() == ["s3://a", "file:///data/x"]
