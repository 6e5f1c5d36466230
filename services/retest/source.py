"""The model a retest runs: a `model.onnx`, a `.sdc`, or a train/compress output directory,
given as a local path or a file:// / s3:// URI.

A `.sdc` is decoded with the core codec (`sigdl.core.sdc.load_model`, the exact stored weights) and
exported to ONNX; a directory holding a `model.sdc` is read the same way. The size a retest
reports is the `.sdc` file's bytes on disk when there is one, else the deployable model's.

A `sigdl compress` output carries two more things a retest needs, read from beside the model
(a directory, or its `model.sdc` / `model.onnx`): the `model.int8.onnx` the compression wrote
(what deploy ships to an int8 target), and its `report.json`, whose dense accuracy is the
baseline the gate measures accuracy_drop against.

    source = load_source("runs/lenet5-dc")       # or "s3://bucket/runs/lenet5-dc/model.sdc"
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from sigdl.core import checkpoint, onnx_io, store
from sigdl.core.checkpoint import ModelMeta
from sigdl.core.errors import InputError
from sigdl.core.sdc import load_model

META_KEY = "sigdl.model_json"  # the ONNX metadata entry `sigdl train` / `compress` write
INT8_ONNX = "model.int8.onnx"  # the QDQ model `sigdl compress` writes (and deploy ships)
REPORT = "report.json"
# the files of a compress (or train) output: only beside these does a model.int8.onnx or a
# report.json describe the model itself, not some other file in the same folder
OUTPUT_MODELS = ("model.sdc", "model.onnx")


@dataclass(frozen=True)
class CompressReport:
    """What a retest takes from the `sigdl compress` report beside a model."""

    dataset: str  # the data set the compression was scored on
    dense_accuracy: float  # the dense trained model's test accuracy on it (0..1)

    @classmethod
    def read(cls, path: Path) -> CompressReport | None:
        """The report at `path` if it is a readable compress report, else None (a train
        report, a retest's, or none at all: the model simply has no compression baseline)."""
        try:
            data = json.loads(path.read_text())
            if data["command"] != "compress":
                return None
            return cls(str(data["dataset"]), float(data["metrics"]["dense_accuracy"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass
class ModelSource:
    """A model ready to retest: fp32 ONNX bytes plus what is known about it."""

    onnx_bytes: bytes  # fp32 deployable model (pixels in [0, 1] in, logits out)
    kind: str  # onnx | sdc | checkpoint
    where: str  # the path or URI it came from
    sdc_bytes: int | None  # size of the .sdc on disk, when the model came as one
    meta: ModelMeta | None  # model.json, when the model carries it
    int8_bytes: bytes | None = None  # the compression's model.int8.onnx, when beside the model
    compressed: CompressReport | None = None  # the compress report beside the model

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
    """Fetch a remote file (or a directory prefix) into a temporary folder and read it there;
    a compress output's model.sdc / model.onnx comes with the files beside it that matter."""
    with tempfile.TemporaryDirectory(prefix="sigdl-retest-") as tmp:
        if uri.endswith((".onnx", ".sdc")):
            folder, name = uri.rsplit("/", 1)
            local = Path(tmp) / name
            store.get_file(uri, local)
            for sibling in (INT8_ONNX, REPORT) if name in OUTPUT_MODELS else ():
                if store.exists(f"{folder}/{sibling}"):
                    store.get_file(f"{folder}/{sibling}", Path(tmp) / sibling)
        else:
            local = Path(tmp) / "model"
            if not store.get_dir(uri.rstrip("/") + "/", local):
                raise store.ArtifactNotFoundError(uri)
        source = _from_local(local, uri)
    return source


def _from_local(path: Path, where: str) -> ModelSource:
    source = _read_local(path, where)
    folder = path if path.is_dir() else path.parent if path.name in OUTPUT_MODELS else None
    if folder is not None:
        int8 = folder / INT8_ONNX
        source.int8_bytes = int8.read_bytes() if int8.is_file() else None
        source.compressed = CompressReport.read(folder / REPORT)
    return source


def _read_local(path: Path, where: str) -> ModelSource:
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
