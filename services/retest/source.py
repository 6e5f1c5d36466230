"""The model a retest runs: a `model.onnx`, a `.sdc`, or a train/compress output directory,
given as a local path or a file:// / s3:// URI.

A `.sdc` is decoded with the core codec (`sigdl.core.sdc.load_model`, the exact stored weights) and
exported to ONNX; a directory holding a `model.sdc` is read the same way. The size a retest
reports is the `.sdc` file's bytes on disk when there is one, else the deployable model's.

A train or compress output folder is checked against its report.json first (the artifact
chain, sigdl/core/chain.py): a model file changed after the run is refused, naming it. The
sha256 of every file the retest reads is kept (`ModelSource.files`) for its report, so that
deploy can tell whether a retest measured the very files it ships.

A `sigdl compress` output carries two more things a retest needs, read from beside the model
(a directory, or its `model.sdc` / `model.onnx`): the `model.int8.onnx` the compression wrote
(what deploy ships to an int8 target), and its `report.json`, whose dense accuracy is the
baseline the gate measures accuracy_drop against.

    source = load_source("runs/lenet5-dc")       # or "s3://bucket/runs/lenet5-dc/model.sdc"
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_model, uses_external_data

from sigdl.core import chain, checkpoint, onnx_io, store
from sigdl.core.checkpoint import ModelMeta
from sigdl.core.errors import InputError
from sigdl.core.sdc import load_model

META_KEY = "sigdl.model_json"  # the ONNX metadata entry `sigdl train` / `compress` write
INT8_ONNX = "model.int8.onnx"  # the QDQ model `sigdl compress` writes (and deploy ships)
REPORT = "report.json"
# the files of a compress (or train) output: only beside these does a model.int8.onnx or a
# report.json describe the model itself, not some other file in the same folder
OUTPUT_MODELS = ("model.sdc", "model.onnx")
# every model file a train/compress report records, verified when a retest reads the folder
CHAINED = ("model.sdc", "model.onnx", INT8_ONNX, checkpoint.WEIGHTS, checkpoint.META)


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
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256 of each file read

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


def input_folders(model: str | Path) -> list[Path]:
    """The local paths a retest of `model` reads (the model, and the output folder it lies
    in), which its `--out` must keep apart from; none for a remote model."""
    text = str(model)
    if "://" in text and not text.startswith("file://"):
        return []
    path = store.FileBackend.path_of(text) if text.startswith("file://") else Path(text)
    path = path.expanduser()
    return [path, path.parent] if path.name in OUTPUT_MODELS and path.is_file() else [path]


def _from_local(path: Path, where: str) -> ModelSource:
    folder = path if path.is_dir() else path.parent if path.name in OUTPUT_MODELS else None
    if folder is not None:  # the artifact chain first: nothing is read that changed since
        chain.verify_folder(folder, CHAINED if path.is_dir() else (path.name, INT8_ONNX))
    elif path.name in CHAINED:  # model.int8.onnx named directly
        chain.verify_folder(path.parent, (path.name,))
    source = _read_local(path, where)
    if folder is not None:
        int8 = folder / INT8_ONNX
        source.int8_bytes = int8.read_bytes() if int8.is_file() else None
        source.compressed = CompressReport.read(folder / REPORT)
        if source.int8_bytes is not None:
            source.files[INT8_ONNX] = hashlib.sha256(source.int8_bytes).hexdigest()
    return source


def _read_local(path: Path, where: str) -> ModelSource:
    if path.is_dir():
        for name, reader in (("model.sdc", _read_sdc), ("model.onnx", _read_onnx)):
            if (path / name).is_file():
                return reader(path / name, where)
        if (path / checkpoint.META).is_file():
            model, meta = checkpoint.load_checkpoint(path)
            data = onnx_io.to_onnx_bytes(model, meta.input_shape, {META_KEY: meta.to_json()})
            files = chain.bound_inputs(path, (checkpoint.WEIGHTS, checkpoint.META))["files"]
            return ModelSource(data, "checkpoint", where, None, meta, files=files)
        raise InputError(f"{where!r} holds no model.onnx, model.sdc or {checkpoint.META}")
    if path.suffix == ".sdc":
        return _read_sdc(path, where)
    return _read_onnx(path, where)


def _read_sdc(path: Path, where: str) -> ModelSource:
    model, meta = load_model(path)
    data = onnx_io.to_onnx_bytes(model, meta.input_shape, {META_KEY: meta.to_json()})
    files = {path.name: chain.sha256_file(path)}
    return ModelSource(data, "sdc", where, path.stat().st_size, meta, files=files)


def _read_onnx(path: Path, where: str) -> ModelSource:
    data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(f"{where!r} is not an ONNX model: {exc}") from None
    if not proto.graph.node:
        raise InputError(f"{where!r} is not an ONNX model: its graph has no nodes")
    files = {path.name: hashlib.sha256(data).hexdigest()}
    if any(uses_external_data(init) for init in proto.graph.initializer):
        data = _inline_external_data(proto, path, where, files)
    return ModelSource(data, "onnx", where, None, _meta_of(proto, where), files=files)


def _inline_external_data(
    proto: onnx.ModelProto, path: Path, where: str, files: dict[str, str]
) -> bytes:
    """The model with the weights it keeps in files beside it (onnx's external data, as
    `onnx.save_model(..., save_as_external_data=True)` writes them) read in; the digest of
    each such file goes into `files`. onnx refuses a location outside the model's folder."""
    locations = {entry.value for init in proto.graph.initializer
                 for entry in init.external_data if entry.key == "location"}  # fmt: skip
    try:
        load_external_data_for_model(proto, str(path.parent))
        data = proto.SerializeToString()
    except Exception as exc:  # onnx's ValidationError, OSError; ValueError past 2 GiB
        reason = " ".join(str(exc).split())[:200]
        raise InputError(f"{where!r}: its external data {sorted(locations)!r} cannot be read "
                         f"({reason}): expected the files beside the model, inside its "
                         "folder, and under 2 GiB in all") from None  # fmt: skip
    for name in sorted(locations):
        files[name] = chain.sha256_file(path.parent / name)
    return data


def _meta_of(proto: onnx.ModelProto, where: str) -> ModelMeta | None:
    for entry in proto.metadata_props:
        if entry.key == META_KEY:
            try:
                return ModelMeta.from_json(json.loads(entry.value), where=f"{where}: {META_KEY}")
            except (json.JSONDecodeError, InputError):
                return None  # a model without usable metadata is still a model
    return None
