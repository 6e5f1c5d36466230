"""The model a retest runs: a `model.onnx`, a `.sdc`, or a train/compress output directory,
given as a local path or a file:// / s3:// URI.

A `.sdc` is decoded with the core codec (`sigdl.sdc.load_model`, the exact stored weights) and
exported to ONNX; a directory holding a `model.sdc` is read the same way. The size a retest
reports is the `.sdc` file's bytes on disk when there is one, else the deployable model's.

    source = load_source("runs/lenet5-dc")       # or "s3://bucket/runs/lenet5-dc/model.sdc"
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from sigdl import checkpoint, onnx_io, store
from sigdl.checkpoint import ModelMeta
from sigdl.errors import InputError
from sigdl.sdc import load_model

META_KEY = "sigdl.model_json"  # the ONNX metadata entry `sigdl train` / `compress` write


@dataclass
class ModelSource:
    """A model ready to retest: fp32 ONNX bytes plus what is known about it."""

    onnx_bytes: bytes  # fp32 deployable model (pixels in [0, 1] in, logits out)
    kind: str  # onnx | sdc | checkpoint
    where: str  # the path or URI it came from
    sdc_bytes: int | None  # size of the .sdc on disk, when the model came as one
    meta: ModelMeta | None  # model.json, when the model carries it

    @property
    def name(self) -> str:
        return self.meta.model if self.meta else Path(self.where.rstrip("/")).name


def load_source(model: str | Path) -> ModelSource:
    """Resolve `model` (path or URI) to a ModelSource; InputError/ArtifactNotFoundError if
    there is nothing usable there."""
    text = str(model)
    if "://" in text and not text.startswith("file://"):
        return _from_uri(text)
    path = store.FileBackend.path_of(text) if text.startswith("file://") else Path(text)
    path = path.expanduser()
    if not path.exists():
        raise InputError(f"model {text!r} does not exist: expected a model.onnx, a .sdc or a "
                         "train/compress output directory")  # fmt: skip
    return _from_local(path, text)


def _from_uri(uri: str) -> ModelSource:
    """Fetch a remote file (or a directory prefix) into a temporary folder and read it there."""
    with tempfile.TemporaryDirectory(prefix="sigdl-retest-") as tmp:
        if uri.endswith((".onnx", ".sdc")):
            local = Path(tmp) / uri.rsplit("/", 1)[-1]
            store.get_file(uri, local)
        else:
            local = Path(tmp) / "model"
            if not store.get_dir(uri.rstrip("/") + "/", local):
                raise store.ArtifactNotFoundError(uri)
        source = _from_local(local, uri)
    return source


def _from_local(path: Path, where: str) -> ModelSource:
    if path.is_dir():
        for name, reader in (("model.sdc", _read_sdc), ("model.onnx", _read_onnx)):
            if (path / name).is_file():
                return reader(path / name, where)
        if (path / checkpoint.META).is_file():
            model, meta = checkpoint.load_checkpoint(path)
            data = onnx_io.to_onnx_bytes(model, meta.input_shape, {META_KEY: meta.to_json()})
            return ModelSource(data, "checkpoint", where, None, meta)
        raise InputError(f"{where!r} holds no model.onnx, model.sdc or {checkpoint.META}")
    if path.suffix == ".sdc":
        return _read_sdc(path, where)
    return _read_onnx(path, where)


def _read_sdc(path: Path, where: str) -> ModelSource:
    model, meta = load_model(path)
    data = onnx_io.to_onnx_bytes(model, meta.input_shape, {META_KEY: meta.to_json()})
    return ModelSource(data, "sdc", where, path.stat().st_size, meta)


def _read_onnx(path: Path, where: str) -> ModelSource:
    data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(f"{where!r} is not an ONNX model: {exc}") from None
    if not proto.graph.node:
        raise InputError(f"{where!r} is not an ONNX model: its graph has no nodes")
    return ModelSource(data, "onnx", where, None, _meta_of(proto, where))


def _meta_of(proto: onnx.ModelProto, where: str) -> ModelMeta | None:
    for entry in proto.metadata_props:
        if entry.key == META_KEY:
            try:
                return ModelMeta.from_json(json.loads(entry.value), where=f"{where}: {META_KEY}")
            except (json.JSONDecodeError, InputError):
                return None  # a model without usable metadata is still a model
    return None
