"""Boundaries: what a file's header or `model.json` may ask for, where a request's paths may
lead, and the settings that must not be empty.

Every forged input is a real file read the way the product reads it; every refusal is an
InputError (exit 2 on the CLI) with one line that names what was wrong, raised before the
size it claims is allocated.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from services.grpc_common.jobservice import dataset_field
from services.grpc_common.server import ServerConfig, StageServer
from sigdl.cli import main
from sigdl.core import checkpoint, datasets, roots, sdc, settings
from sigdl.core.errors import InputError
from sigdl.core.settings import SettingError
from tests.badinput.test_yaml import LINE_CHARS, tree_digest

META = checkpoint.ModelMeta(model="lenet-300-100", input_size=8, channels=1, classes=10,
                            mean=[0.5], std=[0.5], dataset="digits")  # fmt: skip


def one_short_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message and len(message) < LINE_CHARS, message
    return message


# --- model.json ---------------------------------------------------------------------------------
def _meta_json(**changes: object) -> dict:
    body = {**META.to_json(), "format": checkpoint.FORMAT, **changes}
    return {k: v for k, v in body.items() if v is not _DROP}


_DROP = object()
MODEL_JSON_CASES = [
    ("input-size-huge", _meta_json(input_size=10**12), "input_size=1000000000000"),
    ("input-size-negative", _meta_json(input_size=-28), "input_size=-28"),
    ("input-size-string", _meta_json(input_size="28"), "input_size='28'"),
    ("input-size-float", _meta_json(input_size=28.0), "input_size=28.0"),
    ("input-size-bool", _meta_json(input_size=True), "input_size=True"),
    ("channels-zero", _meta_json(channels=0), "channels=0"),
    ("channels-huge", _meta_json(channels=10**6), "channels=1000000"),
    ("classes-negative", _meta_json(classes=-1), "classes=-1"),
    ("classes-list", _meta_json(classes=[10]), "classes=[10]"),
    ("pixels-over-limit", _meta_json(input_size=4096, channels=64), "input_shape"),
    ("params-over-limit", _meta_json(input_size=4096), "parameters, over the"),
    ("mean-wrong-length", _meta_json(mean=[0.1, 0.2]), "mean="),
    ("mean-huge-list", _meta_json(mean=[0.1] * 100_000), "<list of 100000 items>"),
    ("mean-string", _meta_json(mean="0.5"), "mean='0.5'"),
    ("std-zero", _meta_json(std=[0.0]), "std=[0.0]"),
    ("std-nan", _meta_json(std=[float("nan")]), "std=[nan]"),
    ("model-int", _meta_json(model=5), "model=5"),
    ("model-huge", _meta_json(model="z" * 100_000), "model='zzz"),
    ("model-unknown", _meta_json(model="resnet-9000"), "unknown model 'resnet-9000'"),
    ("dataset-dict", _meta_json(dataset={"a": 1}), "dataset="),
    ("adapt-mode", _meta_json(adapt_mode="stretch"), "adapt_mode='stretch'"),
    ("class-names-ints", _meta_json(class_names=[1, 2]), "class_names=[1, 2]"),
    ("metrics-strings", _meta_json(metrics={"acc": "high"}), "metrics="),
    ("train-config-list", _meta_json(train_config=[1]), "train_config=[1]"),
    ("format-huge", _meta_json(format="f" * 100_000), "format 'fff"),
    ("missing-field", _meta_json(channels=_DROP), "missing field(s) channels"),
]


@pytest.mark.parametrize(("body", "complaint"), [c[1:] for c in MODEL_JSON_CASES],
                         ids=[c[0] for c in MODEL_JSON_CASES])  # fmt: skip
def test_forged_model_json_is_refused_before_allocation(tmp_path, body, complaint):
    checkpoint.save_checkpoint(checkpoint.build(META), META, tmp_path)
    (tmp_path / "model.json").write_text(json.dumps(body))
    before = tree_digest(tmp_path)
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        checkpoint.load_checkpoint(tmp_path)
    assert time.monotonic() - started < 2.0
    message = one_short_line(caught.value)
    assert message.startswith(str(tmp_path / "model.json")) and complaint in message, message
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("body", ["[1, 2]", '"text"', "null"], ids=["list", "string", "null"])
def test_model_json_that_is_not_an_object(tmp_path, body):
    (tmp_path / "model.json").write_text(body)
    with pytest.raises(InputError, match="expected a JSON object") as caught:
        checkpoint.read_meta(tmp_path)
    one_short_line(caught.value)


# --- .sdc headers -------------------------------------------------------------------------------
def _real_sdc(path: Path) -> tuple[dict, bytes]:
    torch.manual_seed(0)
    state = checkpoint.build(META).state_dict()
    sdc.write_sdc(path, {k: v.numpy() for k, v in state.items()}, META.to_json())
    blob = path.read_bytes()
    _, _, header_len, data_len = sdc._PREFIX.unpack_from(blob)
    start = sdc._PREFIX.size
    header = json.loads(zlib.decompress(blob[start : start + header_len]))
    return header, blob[start + header_len : start + header_len + data_len]


def _forge(header: dict, data: bytes, deflated: bytes | None = None) -> bytes:
    """A .sdc whose checksum is right (anyone can compute a sha256): only its content lies."""
    text = deflated if deflated is not None else zlib.compress(json.dumps(header).encode())
    body = sdc._PREFIX.pack(sdc.MAGIC, sdc.FORMAT_VERSION, len(text), len(data)) + text + data
    return body + hashlib.sha256(body).digest()


def _tensor(header: dict, **changes: object) -> dict:
    first = {**header["tensors"][0], **changes}
    return {**header, "tensors": [first, *header["tensors"][1:]]}


SDC_CASES = [
    ("shape-huge", lambda h: _tensor(h, shape=[2**40, 2**40]), "exceeds"),
    ("shape-negative", lambda h: _tensor(h, shape=[-1, 64]), "shape must be"),
    ("shape-strings", lambda h: _tensor(h, shape=["300", "64"]), "shape must be"),
    ("shape-floats", lambda h: _tensor(h, shape=[300.0, 64]), "shape must be"),
    ("shape-100-dims", lambda h: _tensor(h, shape=[1] * 100), "at most 8"),
    ("shape-not-a-list", lambda h: _tensor(h, shape=300), "shape must be"),
    ("name-huge", lambda h: _tensor(h, name="n" * 100_000), "name of 1..1000"),
    ("encoding-huge", lambda h: _tensor(h, encoding="e" * 100_000), "unknown encoding 'eee"),
    ("dtype-unknown", lambda h: _tensor(h, dtype="complex128"), "unknown dtype"),
    ("sections-lie", lambda h: _tensor(h, sections={"data": [0, 2**60]}), "out of bounds"),
    ("tensors-not-list", lambda h: {**h, "tensors": {"a": 1}}, "'tensors' missing"),
    ("model-input-size-huge", lambda h: {**h, "model": {**h["model"], "input_size": 10**9}},
     "input_size=1000000000"),
    ("model-not-object", lambda h: {**h, "model": [1]}, "'model' missing"),
]  # fmt: skip


@pytest.mark.parametrize("forge", [c[1] for c in SDC_CASES], ids=[c[0] for c in SDC_CASES])
def test_forged_sdc_header_is_refused_before_allocation(tmp_path, forge):
    header, data = _real_sdc(tmp_path / "real.sdc")
    path = tmp_path / "forged.sdc"
    path.write_bytes(_forge(forge(header), data))
    started = time.monotonic()
    with pytest.raises(sdc.SdcError) as caught:
        sdc.load_model(path)
    assert time.monotonic() - started < 2.0
    message = one_short_line(caught.value)
    expected = next(c[2] for c in SDC_CASES if c[1] is forge)
    assert expected in message, message


def test_sdc_header_zlib_bomb_is_refused_uninflated(tmp_path):
    header, data = _real_sdc(tmp_path / "real.sdc")
    bomb = zlib.compress(b" " * (sdc.MAX_HEADER_BYTES * 4))  # ~64 KiB inflating to 64 MiB
    path = tmp_path / "bomb.sdc"
    path.write_bytes(_forge(header, data, deflated=bomb))
    with pytest.raises(sdc.SdcError, match="inflates to over") as caught:
        sdc.read_sdc(path)
    one_short_line(caught.value)


def test_forged_sdc_through_sigdl_decompress_is_exit_2(tmp_path, capsys):
    header, data = _real_sdc(tmp_path / "real.sdc")
    path = tmp_path / "in" / "forged.sdc"
    path.parent.mkdir()
    path.write_bytes(_forge(_tensor(header, shape=[2**40, 2**40]), data))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous output")
    before = tree_digest(out)
    code = main(["decompress", str(path), "--onnx", str(out / "model.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "exceeds" in err[0], err
    assert tree_digest(out) == before


# --- IDX files with lying headers ---------------------------------------------------------------
def _idx(dims: tuple[int, ...], payload: bytes | None = None) -> bytes:
    head = struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    size = int(np.prod(dims)) if payload is None else 0
    return head + (payload if payload is not None else bytes(size))


def _idx_set(folder: Path, replace: str, blob: bytes) -> Path:
    folder.mkdir(parents=True)
    files = {
        "train-images-idx3-ubyte": _idx((12, 4, 5)),
        "train-labels-idx1-ubyte": _idx((12,)),
        "t10k-images-idx3-ubyte": _idx((6, 4, 5)),
        "t10k-labels-idx1-ubyte": _idx((6,)),
    }
    files[replace] = blob
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


IDX_CASES = [
    ("dims-overflow-int64", "train-images-idx3-ubyte", _idx((2**32 - 1,) * 3, b""), "over"),
    ("dims-huge-small-file", "train-images-idx3-ubyte", _idx((2**31, 28, 28), b"\0" * 64), "over"),
    ("side-too-large", "t10k-images-idx3-ubyte", _idx((1, 5000, 2), b"\0" * 10_000), "side"),
    ("labels-huge", "train-labels-idx1-ubyte", _idx((2**31 + 1,), b"\0" * 12), "over"),
    ("truncated-payload", "train-images-idx3-ubyte", _idx((12, 4, 5), b"\0" * 200), "truncated"),
    ("trailing-bytes", "t10k-labels-idx1-ubyte", _idx((6,), b"\0" * 7), "trailing"),
    ("header-cut", "train-labels-idx1-ubyte", _idx((12,))[:6], "truncated inside"),
    ("zero-dimension", "train-images-idx3-ubyte", _idx((0, 4, 5), b""), "empty dimension"),
    ("gzip-bomb", "train-images-idx3-ubyte.gz",
     gzip.compress(_idx((2**31, 28, 28), b"")[:16] + bytes(8 << 20)), "over"),
    ("gzip-lying-count", "train-labels-idx1-ubyte.gz",
     gzip.compress(_idx((1_000_000,), b"\0" * 12)), "truncated"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "blob", "complaint"), [c[1:] for c in IDX_CASES],
                         ids=[c[0] for c in IDX_CASES])  # fmt: skip
def test_idx_file_with_a_lying_header_is_refused(tmp_path, name, blob, complaint):
    if name.endswith(".gz"):
        base = name[: -len(".gz")]
        folder = _idx_set(tmp_path / "set", base, _idx((12, 4, 5)) if "images" in base else
                          _idx((12,)))  # fmt: skip
        (folder / base).unlink()
        (folder / name).write_bytes(blob)
    else:
        folder = _idx_set(tmp_path / "set", name, blob)
    started = time.monotonic()
    with pytest.raises(datasets.DatasetError) as caught:
        datasets.load_dataset("mnist", data_dir=folder)
    assert time.monotonic() - started < 2.0
    message = one_short_line(caught.value)
    assert complaint in message and name.split(".")[0] in message, message


# --- paths a request names ----------------------------------------------------------------------
def _root(tmp_path: Path) -> Path:
    root = settings.SIGDL_HOME.get()
    root.mkdir(parents=True, exist_ok=True)
    return root


PATH_CASES = [
    ("etc-passwd", lambda root: "file:///etc/passwd", "outside the artifact roots"),
    ("climbs", lambda root: f"{root.as_uri()}/a/../../x", "climbs"),
    ("climbs-percent-encoded", lambda root: f"{root.as_uri()}/%2e%2e/x", "climbs"),
    ("sibling-prefix", lambda root: f"{root.as_uri()}-evil/x", "outside the artifact roots"),
    ("s3-not-a-root", lambda root: "s3://other-bucket/x", "outside the artifact roots"),
    ("symlink-out", lambda root: (root / "link").as_uri(), "outside the artifact roots"),
]


@pytest.mark.parametrize("make", [c[1] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES])
def test_path_outside_the_roots_is_refused(tmp_path, make):
    root = _root(tmp_path)
    (root / "link").symlink_to("/etc")
    complaint = next(c[2] for c in PATH_CASES if c[1] is make)
    with pytest.raises(roots.ArtifactAccessError) as caught:
        roots.check_uri(make(root), "model.uri")
    assert isinstance(caught.value, InputError)
    assert complaint in one_short_line(caught.value)


@pytest.mark.parametrize(
    "spec", ["imagefolder:/etc", "imagefolder:~", "imagefolder:../..", "imagefolder:{root}/link"]
)
def test_image_folder_data_set_outside_the_roots_is_refused(tmp_path, spec):
    root = _root(tmp_path)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(roots.ArtifactAccessError) as caught:
        dataset_field(spec.format(root=root))
    assert "outside the artifact roots" in one_short_line(caught.value)


def test_image_folder_inside_the_roots_is_accepted(tmp_path):
    root = _root(tmp_path)
    assert dataset_field(f"imagefolder:{root}/data") == f"imagefolder:{root}/data"
    assert dataset_field("digits") == "digits" and dataset_field("") is None


# --- settings that must not be empty ------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value", "read"),
    [
        ("SIGDL_HOME", "", lambda: settings.SIGDL_HOME.get()),
        ("SIGDL_HOME", "   ", lambda: settings.SIGDL_HOME.get()),
        ("SIGDL_DATA", "", lambda: settings.SIGDL_DATA.get()),
        ("SIGDL_TOKEN", "", lambda: settings.SIGDL_TOKEN.get()),
        ("SIGDL_TOKEN", " ", lambda: settings.SIGDL_TOKEN.get()),
        ("SIGDL_TOKEN", "", lambda: ServerConfig.from_settings()),
        ("SIGDL_WORKERS", "two", lambda: settings.SIGDL_WORKERS.get()),
        ("SIGDL_MAX_MESSAGE_BYTES", "x" * 10_000, lambda: settings.SIGDL_MAX_MESSAGE_BYTES.get()),
    ],
)
def test_bad_setting_is_a_setting_error(monkeypatch, name, value, read):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError) as caught:
        read()
    assert name in one_short_line(caught.value)


def test_server_with_an_empty_token_refuses_to_start(tmp_path):
    with pytest.raises(InputError, match="SIGDL_TOKEN is empty"):
        StageServer(["training"], ServerConfig(port=0, token="", home=tmp_path))


def test_sigdl_serve_with_an_empty_token_is_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("SIGDL_TOKEN", "")
    code = main(["serve", "training", "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "SIGDL_TOKEN" in err[0], err


def test_empty_sigdl_home_writes_nothing_into_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIGDL_HOME", "")
    code = main(["train", "--model", "lenet-300-100", "--dataset", "digits", "--epochs", "1",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "SIGDL_HOME" in err[-1], err
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["out"])
