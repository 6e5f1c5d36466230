from pathlib import Path

import pytest

from sigdl.core import settings


def test_typed_values_and_defaults(monkeypatch):
    monkeypatch.setenv("SIGDL_S3_SECURE", "yes")
    monkeypatch.setenv("SIGDL_NUM_THREADS", "3")
    monkeypatch.setenv("SIGDL_HOME", "~/x")
    assert settings.SIGDL_S3_SECURE.get() is True
    assert settings.SIGDL_NUM_THREADS.get() == 3
    assert settings.SIGDL_HOME.get() == Path("~/x").expanduser()
    monkeypatch.delenv("SIGDL_NUM_THREADS")
    assert settings.SIGDL_NUM_THREADS.get() is None


def test_bad_value_names_the_setting(monkeypatch):
    monkeypatch.setenv("SIGDL_S3_SECURE", "maybe")
    with pytest.raises(ValueError, match="SIGDL_S3_SECURE='maybe'"):
        settings.SIGDL_S3_SECURE.get()


def test_aliases_are_read_when_the_name_is_unset(monkeypatch):
    monkeypatch.delenv("SIGDL_S3_ACCESS_KEY", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "alias-key")
    assert settings.SIGDL_S3_ACCESS_KEY.get() == "alias-key"
    monkeypatch.setenv("SIGDL_S3_ACCESS_KEY", "own-key")
    assert settings.SIGDL_S3_ACCESS_KEY.get() == "own-key"


def test_mlflow_uri_default_and_off(monkeypatch, tmp_path):
    monkeypatch.setenv("SIGDL_HOME", str(tmp_path))
    monkeypatch.delenv("SIGDL_MLFLOW_TRACKING_URI")
    assert settings.mlflow_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
    assert settings.mlflow_tracking_uri() is None


def test_every_setting_declared_once_with_a_doc():
    names = [s.name for s in settings.REGISTRY]
    assert len(names) == len(set(names))
    assert all(s.doc for s in settings.REGISTRY)
    secret = next(r for r in settings.describe() if r["name"] == "SIGDL_TOKEN")
    assert secret["value"] in {"None", "***"}
