"""The `.sdc` container: a compressed model that SigDL rebuilds exactly, and its accounting.

Layout (integers little-endian):

    offset    size  field
    0         4     magic b"SDC1"
    4         2     format version, u16 (this SigDL writes and reads 1)
    6         4     header length H, u32
    10        8     data length D, u64
    18        H     header, zlib-deflated UTF-8 JSON (it would be ~10% of a LeNet's file
                    uncompressed): format_version, model (model.json), recipe,
                    recipe_digest, metrics, tensors (name, shape, dtype, encoding, params,
                    sections {name: [offset into data, length]})
    18+H      D     data: every tensor's sections back to back, in state_dict order
    18+H+D    32    sha256 of all the bytes before it

Encodings: `raw` (the dtype's little-endian bytes; float tensors as float32), `raw-f16`
(float16 on disk, float32 decoded), `shared` (Deep Compression: codebook + Huffman-coded or
bit-packed assignments, dense or as sparse relative indices), `int8` (per-output-channel
symmetric scales + int8 values) and `dct2` (a conv weight as the orthonormal 2-D DCT-II of each
kernel, most coefficients zero: the kept ones and their relative positions, as float32 values
or on a `shared` codebook; decoded with `sigdl.core.spectral.idct2`). The file's size on disk
is the compressed size reports use.

    summary = write_sdc("model.sdc", tensors, meta.to_json(), recipe, digest)
    model, meta = load_model("model.sdc")
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sigdl.core import atomic, huffman, sparse, spectral
from sigdl.core.checkpoint import ModelMeta, PixelModel, build, resize_to_state_dict
from sigdl.core.errors import InputError, short

MAGIC = b"SDC1"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sHIQ")  # magic, version, header length, data length
_DIGEST = 32  # sha256
MAX_PARAMS = 1 << 31  # per tensor (VGG-16's fc6 has 1e8): a forged shape must not exhaust memory
MAX_HEADER_BYTES = 16 << 20  # the header inflated (a LeNet's is ~10 KiB): no zlib bomb
MAX_TENSORS = 100_000  # entries in one header
MAX_NDIM = 8  # dimensions of one tensor's shape
# raw storage of the dtypes a state_dict holds; other float dtypes are stored as float32
_RAW_DTYPES = {
    "float32": "<f4", "int64": "<i8", "int32": "<i4", "int16": "<i2",
    "int8": "i1", "uint8": "u1", "bool": "?",
}  # fmt: skip
_STREAMS = ("gaps", "values", "q")  # sections holding index streams (the rest: tables, raw)


class SdcError(InputError):
    """A `.sdc` file that cannot be trusted: not one, another version, truncated, corrupted."""


@dataclass
class SharedTensor:
    """A weight whose values are exactly `codebook[assignments]` (trained weight sharing)."""

    codebook: np.ndarray  # (K,) float32; codebook[0] == 0.0 is the pruned weight
    assignments: np.ndarray  # tensor-shaped integers in 0..K-1
    index_bits: int = 8  # bits per sparse relative index (Deep Compression: 8 conv, 5 fc)
    fp16_codebook: bool = False  # store the codebook as float16 (the decoded values follow it)

    def __post_init__(self) -> None:
        self.codebook = np.asarray(self.codebook, dtype=np.float32).reshape(-1)
        self.assignments = np.asarray(self.assignments)
        k = self.codebook.size
        if not 1 <= k <= huffman.MAX_ALPHABET:
            raise InputError(f"codebook has {k} entries, expected 1..{huffman.MAX_ALPHABET}")
        if self.codebook[0] != 0.0:
            raise InputError(f"codebook[0] is {self.codebook[0]}, expected 0.0 (pruned weights)")
        a = self.assignments
        if a.size and (a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= k):
            raise InputError(f"assignments must be integers in 0..{k - 1}")
        sparse.check_index_bits(self.index_bits)

    def stored_codebook(self) -> np.ndarray:
        """The codebook as the file holds it, as float32."""
        if self.fp16_codebook:
            return self.codebook.astype("<f2").astype(np.float32)
        return self.codebook

    def values(self) -> np.ndarray:
        return self.stored_codebook()[self.assignments]


@dataclass
class Int8Tensor:
    """A weight stored as int8 `q` with one float32 scale per output channel (axis 0)."""

    scale: np.ndarray  # (C,) float32
    q: np.ndarray  # (C, ...) int8; the value is scale[c] * q[c, ...], zero point 0
    bits: int = 8  # the grid's bits (levels within +-(2**(bits-1) - 1)); stored as int8 anyway

    def __post_init__(self) -> None:
        self.scale = np.asarray(self.scale, dtype=np.float32).reshape(-1)
        self.q = np.asarray(self.q)
        if self.q.dtype != np.int8 or self.q.ndim < 1 or self.q.shape[0] < 1:
            got = f"{self.q.dtype} {self.q.shape}"
            raise InputError(f"q must be an int8 array with at least one channel, got {got}")
        if self.scale.size != self.q.shape[0] or not np.isfinite(self.scale).all():
            raise InputError(f"scale must hold {self.q.shape[0]} finite values (one per channel)")

    def values(self) -> np.ndarray:
        return _dequantize(self.scale, self.q)


@dataclass
class SpectralTensor:
    """A conv weight stored as the orthonormal 2-D DCT-II of each (kh, kw) kernel (frequency-
    domain pruning): `coefficients` has the weight's shape, zeros where a coefficient was pruned;
    the weight is `spectral.idct2(coefficients)`. With `shared`, the coefficients are exactly
    `shared.values()` (a codebook in the frequency domain) and are stored as it is."""

    coefficients: np.ndarray  # (..., kh, kw) float32 DCT-II coefficients, 0.0 where pruned
    index_bits: int = 8  # bits per sparse relative index of the kept coefficients
    shared: SharedTensor | None = None  # the coefficients on a codebook, stored as such

    def __post_init__(self) -> None:
        self.coefficients = np.asarray(self.coefficients)
        c = self.coefficients
        if c.dtype.kind != "f" or c.ndim < 2 or not np.isfinite(c).all():
            raise InputError("coefficients must be finite floats shaped (..., kh, kw)")
        self.coefficients = c.astype(np.float32)
        if self.shared is not None and (
            self.shared.assignments.shape != c.shape
            or not np.array_equal(self.shared.values(), self.coefficients)
        ):
            raise InputError("shared must hold exactly the coefficients (same shape and values)")
        sparse.check_index_bits(self.index_bits)

    def values(self) -> np.ndarray:
        return spectral.idct2(self.coefficients)


@dataclass
class TensorSummary:
    """Size accounting of one tensor, all derived from the header and the section lengths."""

    name: str
    encoding: str  # raw | raw-f16 | shared | int8 | dct2
    layout: str  # shared, dct2: dense | sparse (of the stored values); other encodings: dense
    shape: list[int]
    params: int
    nonzeros: int
    bits_per_weight: int  # codebook index bits (shared), 8 (int8), storage bits (raw)
    bits_per_index: int  # bits per sparse relative index; 0 without relative indices
    codebook_bytes: int  # codebook (shared) or per-channel scales (int8)
    fixed_bits: int  # index streams at fixed width: the bits before Huffman coding
    coded_bits: int  # index streams as stored: the bits after Huffman (tables included)
    dense_bytes: int  # 4 bytes per parameter
    compressed_bytes: int  # this tensor's bytes in the file

    @property
    def huffman_gain(self) -> float:
        return self.fixed_bits / self.coded_bits if self.coded_bits else 1.0

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.compressed_bytes if self.compressed_bytes else 1.0

    def to_json(self) -> dict:
        return {**asdict(self), "huffman_gain": self.huffman_gain, "ratio": self.ratio}


@dataclass
class SdcSummary:
    """Per-tensor and total accounting of a `.sdc` file; `file_bytes` is its size on disk."""

    tensors: list[TensorSummary]
    file_bytes: int
    overhead_bytes: int  # magic, lengths, JSON header and checksum

    @property
    def params(self) -> int:
        return sum(t.params for t in self.tensors)

    @property
    def nonzeros(self) -> int:
        return sum(t.nonzeros for t in self.tensors)

    @property
    def dense_bytes(self) -> int:
        return 4 * self.params

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.file_bytes

    @property
    def huffman_gain(self) -> float:
        coded = sum(t.coded_bits for t in self.tensors)
        return sum(t.fixed_bits for t in self.tensors) / coded if coded else 1.0

    def to_json(self) -> dict:
        totals = ("params", "nonzeros", "dense_bytes", "ratio", "huffman_gain")
        return {
            "tensors": [t.to_json() for t in self.tensors],
            "file_bytes": self.file_bytes,
            "overhead_bytes": self.overhead_bytes,
            **{key: getattr(self, key) for key in totals},
        }


@dataclass
class SdcModel:
    """A decoded `.sdc` file: float32 tensors (integer buffers keep their dtype) + its header."""

    state_dict: dict[str, torch.Tensor]
    header: dict = field(default_factory=dict)


# --- writing -----------------------------------------------------------------------------------

TensorLike = np.ndarray | torch.Tensor | SharedTensor | Int8Tensor | SpectralTensor


def write_sdc(
    path: str | Path,
    tensors: Mapping[str, TensorLike],
    model: dict,
    recipe: dict | None = None,
    recipe_digest: str | None = None,
    metrics: dict | None = None,
    fp16_raw: bool = False,
    huffman: bool = True,
) -> SdcSummary:
    """Encode `tensors` (state_dict order) into `path` atomically; return its accounting.

    `huffman=False` keeps every index stream fixed-width (the ladder's "+share" row);
    otherwise each stream is Huffman-coded where that is smaller.
    """
    blob, summary = encode_sdc(tensors, model, recipe, recipe_digest, metrics, fp16_raw, huffman)
    atomic.write_bytes(path, blob)
    return summary


def encode_sdc(
    tensors: Mapping[str, TensorLike],
    model: dict,
    recipe: dict | None = None,
    recipe_digest: str | None = None,
    metrics: dict | None = None,
    fp16_raw: bool = False,
    huffman: bool = True,
) -> tuple[bytes, SdcSummary]:
    """The bytes of a `.sdc` file and their accounting (`write_sdc` without the file)."""
    _check_header_inputs(model, recipe, recipe_digest, metrics)
    entries, blobs, nonzeros, offset = [], [], [], 0
    for name, tensor in tensors.items():
        entry, sections, count = _encode_tensor(name, tensor, fp16_raw, huffman)
        entry["sections"] = {}
        for key, blob in sections:
            entry["sections"][key] = [offset, len(blob)]
            offset += len(blob)
            blobs.append(blob)
        entries.append(entry)
        nonzeros.append(count)
    header = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "recipe": recipe,
        "recipe_digest": recipe_digest,
        "metrics": metrics or {},
        "tensors": entries,
    }
    blob = _assemble(header, b"".join(blobs))
    return blob, _summarize(header["tensors"], nonzeros, len(blob))


def _assemble(header: dict, data: bytes) -> bytes:
    try:
        text = zlib.compress(
            json.dumps(header, separators=(",", ":"), default=_json_scalar).encode(), 9
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"the .sdc header is not JSON-serializable: {exc}") from None
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(text), len(data)) + text + data
    return body + hashlib.sha256(body).digest()


def _json_scalar(value: object) -> object:
    # metrics often arrive as numpy scalars; anything else is a caller's mistake
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _check_header_inputs(model: object, recipe: object, digest: object, metrics: object) -> None:
    if not isinstance(model, dict):
        raise InputError(f"model must be the model.json dict, got {type(model).__name__}")
    if recipe is not None and not isinstance(recipe, dict):
        raise InputError(f"recipe must be a dict or None, got {type(recipe).__name__}")
    if digest is not None and not isinstance(digest, str):
        raise InputError(f"recipe_digest must be a str or None, got {type(digest).__name__}")
    if metrics is not None and not isinstance(metrics, dict):
        raise InputError(f"metrics must be a dict or None, got {type(metrics).__name__}")


def _encode_tensor(
    name: str, tensor: TensorLike, fp16_raw: bool, use_huffman: bool
) -> tuple[dict, list[tuple[str, bytes]], int]:
    """(header entry without sections, [(section name, bytes)], nonzeros) of one tensor."""
    if not isinstance(name, str) or not name:
        raise InputError(f"tensor names must be non-empty strings, got {name!r}")
    if isinstance(tensor, SharedTensor):
        params, sections = _encode_shared(tensor, use_huffman)
        encoding, dtype, values = "shared", "float32", tensor.values()
    elif isinstance(tensor, Int8Tensor):
        params, sections = _encode_int8(tensor, use_huffman)
        encoding, dtype, values = "int8", "float32", tensor.values()
    elif isinstance(tensor, SpectralTensor):
        params, sections = _encode_spectral(tensor, use_huffman)
        encoding, dtype, values = "dct2", "float32", tensor.values()
    else:
        array = _as_raw_array(name, tensor)
        dtype = array.dtype.name
        encoding = "raw-f16" if fp16_raw and dtype == "float32" else "raw"
        values = array.astype(_storage(encoding, dtype))  # nonzeros as stored: fp16 may flush
        params, sections = {}, [("data", values.tobytes())]
    if values.size > MAX_PARAMS:
        raise InputError(f"tensor {name!r}: {values.size} parameters, at most {MAX_PARAMS}")
    shape = [int(d) for d in values.shape]
    entry = {"name": name, "shape": shape, "dtype": dtype, "encoding": encoding, "params": params}
    return entry, sections, int(np.count_nonzero(values))


def _as_raw_array(name: str, tensor: object) -> np.ndarray:
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach().cpu()
        tensor = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    if not isinstance(tensor, np.ndarray):
        raise InputError(f"tensor {name!r}: unsupported type {type(tensor).__name__}")
    if tensor.dtype.kind == "f":
        tensor = tensor.astype(np.float32)
    if tensor.dtype.name not in _RAW_DTYPES:
        expected = f"a float dtype or one of {', '.join(_RAW_DTYPES)}"
        raise InputError(
            f"tensor {name!r}: dtype {tensor.dtype} is not storable, expected {expected}"
        )
    return tensor


def _storage(encoding: str, dtype: str) -> str:
    return "<f2" if encoding == "raw-f16" else _RAW_DTYPES[dtype]


def _encode_shared(t: SharedTensor, use_huffman: bool) -> tuple[dict, list[tuple[str, bytes]]]:
    """Codebook + assignments, dense or as sparse relative indices, whichever is smaller."""
    k = t.codebook.size
    width = huffman.fixed_width(k)
    flat = t.assignments.reshape(-1)
    storage = "float16" if t.fp16_codebook else "float32"
    codebook = t.codebook.astype("<f2" if t.fp16_codebook else "<f4").tobytes()
    params = {"k": k, "index_bits": t.index_bits, "codebook": storage}
    dense = {"values": _encode_stream(flat, width, use_huffman)}
    gaps, values = sparse.encode_sparse(flat, t.index_bits)
    sparse_ = {
        "gaps": _encode_stream(gaps, t.index_bits, use_huffman),
        "values": _encode_stream(values, width, use_huffman),
    }
    size = {"dense": _stream_bytes(dense), "sparse": _stream_bytes(sparse_)}
    layout = "sparse" if size["sparse"] < size["dense"] else "dense"
    streams = sparse_ if layout == "sparse" else dense
    params |= {"layout": layout, "streams": {key: spec for key, (spec, _) in streams.items()}}
    if layout == "sparse":
        params["entries"] = int(gaps.size)
    sections = [("codebook", codebook)] + [(key, blob) for key, (_, blob) in streams.items()]
    return params, sections


def _encode_int8(t: Int8Tensor, use_huffman: bool) -> tuple[dict, list[tuple[str, bytes]]]:
    spec, blob = _encode_stream(t.q.reshape(-1).astype(np.int64) + 128, 8, use_huffman)
    params = {"channels": int(t.scale.size), "streams": {"q": spec}}
    return params, [("scale", t.scale.astype("<f4").tobytes()), ("q", blob)]


def _encode_spectral(t: SpectralTensor, use_huffman: bool) -> tuple[dict, list[tuple[str, bytes]]]:
    """DCT-II coefficients: on their codebook (the `shared` layout and sections), or the float32
    values of the kept ones with their relative positions (or all of them), whichever is
    smaller."""
    if t.shared is not None:
        params, sections = _encode_shared(t.shared, use_huffman)
        return {"coefficients": "shared", **params}, sections
    flat = t.coefficients.reshape(-1)
    gaps, values = sparse.encode_sparse(flat, t.index_bits)  # values: float32, fillers 0.0
    spec, blob = _encode_stream(gaps, t.index_bits, use_huffman)
    params = {"coefficients": "float32", "index_bits": t.index_bits}
    if len(blob) + 4 * values.size < 4 * flat.size:
        params |= {"layout": "sparse", "entries": int(gaps.size), "streams": {"gaps": spec}}
        return params, [("gaps", blob), ("floats", values.astype("<f4").tobytes())]
    return params | {"layout": "dense"}, [("floats", flat.astype("<f4").tobytes())]


def _encode_stream(symbols: np.ndarray, width: int, use_huffman: bool) -> tuple[dict, bytes]:
    """Huffman-code or bit-pack `symbols` (each < 2**width), whichever is smaller."""
    fixed = huffman.pack_fixed(symbols, width)
    coded = huffman.encode(symbols).to_bytes() if use_huffman else None
    if coded is not None and len(coded) < len(fixed):
        return {"coding": "huffman", "width": width}, coded
    return {"coding": "fixed", "width": width}, fixed


def _stream_bytes(streams: dict[str, tuple[dict, bytes]]) -> int:
    return sum(len(blob) for _, blob in streams.values())


# --- reading -----------------------------------------------------------------------------------


def read_sdc(path: str | Path) -> SdcModel:
    """Verify and decode a `.sdc` file; anything wrong with it raises SdcError."""
    return decode_sdc(_read_file(path), where=str(path))


def describe(path: str | Path) -> SdcSummary:
    """The accounting of a `.sdc` file, recomputed from its header and decoded tensors."""
    blob = _read_file(path)
    sdc = decode_sdc(blob, where=str(path))
    nonzeros = [int(torch.count_nonzero(t)) for t in sdc.state_dict.values()]
    return _summarize(sdc.header["tensors"], nonzeros, len(blob))


def load_model(path: str | Path) -> tuple[PixelModel, ModelMeta]:
    """Rebuild the zoo module the header names and load the decoded weights into it (strict).

    A structurally pruned model has thinner layers than the zoo builds: they are resized to the
    stored shapes first (the shapes are data in the header, so this runs no code)."""
    sdc = read_sdc(path)
    try:
        meta = ModelMeta.from_json(sdc.header["model"], where=f"{path}: header.model")
        model = build(meta)
    except InputError as exc:
        raise SdcError(str(exc)) from None
    resize_to_state_dict(model, sdc.state_dict)
    try:
        model.load_state_dict(sdc.state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SdcError(f"{path}: weights do not match model {meta.model!r}: {first}") from None
    model.eval()
    return model, meta


def _read_file(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SdcError(f"{str(path)!r} cannot be read: {exc.strerror}") from None


def decode_sdc(blob: bytes, where: str = "<bytes>") -> SdcModel:
    """Decode the bytes of a `.sdc` file: checksum first, then every structural check."""
    header, data = _open(bytes(blob), where)
    state = {}
    for entry in header["tensors"]:
        name = entry["name"]
        try:
            array = _decode_entry(entry, data)
        except InputError as exc:  # the codecs' and decoders' messages name no tensor
            raise SdcError(f"{where}: tensor {name!r}: {exc}") from None
        state[name] = torch.from_numpy(array)
    return SdcModel(state, header)


def _open(blob: bytes, where: str) -> tuple[dict, bytes]:
    """Check magic, version, sizes and checksum; return the validated header and data bytes."""
    if blob[:4] != MAGIC:
        raise SdcError(f"{where}: not a .sdc file")
    if len(blob) < _PREFIX.size:
        raise SdcError(f"{where}: truncated ({len(blob)} bytes)")
    _, version, header_len, data_len = _PREFIX.unpack_from(blob)
    # the version is read before anything else, since another version may lay bytes out otherwise
    if version != FORMAT_VERSION:
        raise SdcError(f"{where}: format version {version}, this SigDL reads {FORMAT_VERSION}")
    expected = _PREFIX.size + header_len + data_len + _DIGEST
    if len(blob) != expected:
        state = "truncated" if len(blob) < expected else "trailing bytes"
        raise SdcError(f"{where}: {state} ({len(blob)} bytes, the header says {expected})")
    if hashlib.sha256(blob[:-_DIGEST]).digest() != blob[-_DIGEST:]:
        raise SdcError(f"{where}: corrupted: sha256 mismatch")
    start = _PREFIX.size + header_len
    header = _parse_header(blob[_PREFIX.size : start], where)
    data = blob[start : start + data_len]
    _check_sections(header["tensors"], len(data), where)
    return header, data


def _parse_header(text: bytes, where: str) -> dict:
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(text, MAX_HEADER_BYTES)
        if inflater.unconsumed_tail:  # inflates past the cap: refused before it is inflated
            raise SdcError(f"{where}: header inflates to over {MAX_HEADER_BYTES} bytes")
        if not inflater.eof:
            raise zlib.error("incomplete deflate stream")
        header = json.loads(raw.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SdcError(
            f"{where}: header is not deflated UTF-8 JSON ({type(exc).__name__})"
        ) from None
    if not isinstance(header, dict) or header.get("format_version") != FORMAT_VERSION:
        raise SdcError(f"{where}: header format_version does not match the file's version")
    expected = {"model": dict, "metrics": dict, "tensors": list}
    for key, kind in expected.items():
        if not isinstance(header.get(key), kind):
            raise SdcError(f"{where}: header field {key!r} missing or not a {kind.__name__}")
    if len(header["tensors"]) > MAX_TENSORS:
        raise SdcError(f"{where}: {len(header['tensors'])} tensors, expected <= {MAX_TENSORS}")
    names = set()
    for i, entry in enumerate(header["tensors"]):
        _check_entry(entry, f"{where}: tensors[{i}]")
        if entry["name"] in names:
            raise SdcError(f"{where}: tensor {entry['name']!r} appears twice")
        names.add(entry["name"])
    return header


def _check_entry(entry: object, where: str) -> None:
    """Types and ranges of one tensor entry, so that decoding meets no surprise."""
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not 0 < len(name) <= 1000:
        raise SdcError(f"{where}: not an object with a name of 1..1000 characters")
    where = f"{where} ({short(name)})"
    shape = entry.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(_is_int(d) and d >= 0 for d in shape)
    ):
        raise SdcError(f"{where}: shape must be a list of at most {MAX_NDIM} integers >= 0")
    if math.prod(shape) > MAX_PARAMS:
        raise SdcError(f"{where}: shape {shape} exceeds {MAX_PARAMS} parameters")
    encoding, dtype = entry.get("encoding"), entry.get("dtype")
    if not isinstance(encoding, str) or encoding not in _DECODERS:
        raise SdcError(f"{where}: unknown encoding {short(encoding)}")
    if not isinstance(dtype, str) or dtype not in _RAW_DTYPES:
        raise SdcError(f"{where}: unknown dtype {short(dtype)}")
    if encoding != "raw" and dtype != "float32":
        raise SdcError(f"{where}: dtype {dtype!r} invalid for {encoding}, expected float32")
    if not isinstance(entry.get("params"), dict):
        raise SdcError(f"{where}: params must be an object")
    sections = entry.get("sections")
    if not isinstance(sections, dict) or not all(
        isinstance(s, list) and len(s) == 2 and all(_is_int(x) and x >= 0 for x in s)
        for s in sections.values()
    ):
        raise SdcError(f"{where}: sections must map names to [offset, length]")


def _check_sections(entries: list[dict], data_len: int, where: str) -> None:
    """Sections must tile the data area exactly, in order: no gaps, overlaps or strays."""
    end = 0
    for entry in entries:
        for key, (offset, length) in entry["sections"].items():
            if offset != end or offset + length > data_len:
                span = f"[{offset}, {offset + length})"
                raise SdcError(
                    f"{where}: tensor {entry['name']!r} section {key!r} at {span} "
                    "is out of place or out of bounds"
                )
            end = offset + length
    if end != data_len:
        raise SdcError(f"{where}: sections cover {end} of {data_len} data bytes")


def _decode_entry(entry: dict, data: bytes) -> np.ndarray:
    """One tensor, decoded and shaped; the decoders return flat arrays."""
    shape = entry["shape"]
    numel = int(np.prod(shape, dtype=np.int64))
    sections = {key: data[o : o + n] for key, (o, n) in entry["sections"].items()}
    expected = _section_names(entry)
    if list(sections) != expected:
        raise SdcError(f"sections {list(sections)}, expected {expected}")
    flat = _DECODERS[entry["encoding"]](entry, sections, numel)
    if flat.size != numel:
        raise SdcError(f"decoded {flat.size} values for shape {shape}")
    return flat.reshape(shape)  # decoders return fresh arrays, which torch may share


def _section_names(entry: dict) -> list[str]:
    """The sections an entry must have, in the order the writer puts them."""
    shared = {"sparse": ["codebook", "gaps", "values"], "dense": ["codebook", "values"]}
    if entry["encoding"] == "shared":
        return _param_choice(entry["params"], "layout", shared)
    if entry["encoding"] == "dct2":
        kinds = {"shared": shared, "float32": {"sparse": ["gaps", "floats"], "dense": ["floats"]}}
        layouts = _param_choice(entry["params"], "coefficients", kinds)
        return _param_choice(entry["params"], "layout", layouts)
    return ["scale", "q"] if entry["encoding"] == "int8" else ["data"]


def _decode_raw(entry: dict, sections: dict[str, bytes], numel: int) -> np.ndarray:
    storage = np.dtype(_storage(entry["encoding"], entry["dtype"]))
    blob = _section(sections, "data")
    if len(blob) != numel * storage.itemsize:
        raise SdcError(f"{len(blob)} data bytes for {numel} x {storage.itemsize}-byte values")
    return np.frombuffer(blob, dtype=storage).astype(entry["dtype"])


def _decode_shared(entry: dict, sections: dict[str, bytes], numel: int) -> np.ndarray:
    p = entry["params"]
    k = _param_int(p, "k", 1, huffman.MAX_ALPHABET)
    index_bits = _param_int(p, "index_bits", 1, sparse.MAX_INDEX_BITS)
    storage = _param_choice(p, "codebook", {"float32": "<f4", "float16": "<f2"})
    blob = _section(sections, "codebook")
    if len(blob) != k * np.dtype(storage).itemsize:
        raise SdcError(f"codebook of {len(blob)} bytes does not hold {k} {p.get('codebook')}")
    codebook = np.frombuffer(blob, dtype=storage).astype(np.float32)
    if codebook[0] != 0.0:
        raise SdcError("codebook[0] must be 0.0 (the pruned weight)")
    width = huffman.fixed_width(k)
    # widths are <= 16 bits, so uint16 assignments take a quarter of int64's memory
    if p["layout"] == "dense":
        assignments = _read_stream(p, sections, "values", numel, width).astype(np.uint16)
    else:  # sparse; _section_names has refused any other layout
        entries = _param_int(p, "entries", 0, numel)
        gaps = _read_stream(p, sections, "gaps", entries, index_bits)
        values = _read_stream(p, sections, "values", entries, width).astype(np.uint16)
        assignments = sparse.decode_sparse(gaps, values, numel, index_bits)
    if assignments.size and assignments.max() >= k:
        raise SdcError(f"assignment {assignments.max()} outside the {k}-entry codebook")
    return codebook[assignments]


def _decode_int8(entry: dict, sections: dict[str, bytes], numel: int) -> np.ndarray:
    channels = _param_int(entry["params"], "channels", 1, MAX_PARAMS)
    shape = entry["shape"]
    if not shape or shape[0] != channels:
        raise SdcError(f"{channels} channels but shape {shape}")
    blob = _section(sections, "scale")
    if len(blob) != 4 * channels:
        raise SdcError(f"{len(blob)} scale bytes for {channels} channels")
    scale = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    q = _read_stream(entry["params"], sections, "q", numel, 8)
    return _dequantize(scale, (q - 128).astype(np.int8).reshape(shape)).reshape(-1)


def _decode_spectral(entry: dict, sections: dict[str, bytes], numel: int) -> np.ndarray:
    """The kernels of stored DCT-II coefficients (`SpectralTensor`), flat float32."""
    shape, p = entry["shape"], entry["params"]
    if len(shape) < 2 or not all(1 <= d <= spectral.MAX_KERNEL for d in shape[-2:]):
        raise SdcError(
            f"shape {shape}: expected (..., kh, kw) kernels, sides 1..{spectral.MAX_KERNEL}"
        )
    if p["coefficients"] == "shared":  # _section_names has refused any other kind
        coefficients = _decode_shared(entry, sections, numel)
    else:
        blob = _section(sections, "floats")
        if p["layout"] == "dense":
            if len(blob) != 4 * numel:
                raise SdcError(f"{len(blob)} coefficient bytes for {numel} float32 values")
            coefficients = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        else:
            index_bits = _param_int(p, "index_bits", 1, sparse.MAX_INDEX_BITS)
            entries = _param_int(p, "entries", 0, numel)
            if len(blob) != 4 * entries:
                raise SdcError(f"{len(blob)} coefficient bytes for {entries} float32 values")
            gaps = _read_stream(p, sections, "gaps", entries, index_bits)
            values = np.frombuffer(blob, dtype="<f4").astype(np.float32)
            coefficients = sparse.decode_sparse(gaps, values, numel, index_bits)
    if not np.isfinite(coefficients).all():
        raise SdcError("coefficients must be finite")
    return spectral.idct2(coefficients.reshape(shape)).reshape(-1)


def _dequantize(scale: np.ndarray, q: np.ndarray) -> np.ndarray:
    # one float32 product per value, so writer and reader agree bit for bit
    return (scale.reshape(-1, *([1] * (q.ndim - 1))) * q.astype(np.float32)).astype(np.float32)


def _read_stream(
    params: dict, sections: dict[str, bytes], key: str, count: int, width: int
) -> np.ndarray:
    """Decode stream `key` of `count` symbols, each < 2**width, as its header spec says."""
    streams = params.get("streams")
    spec = streams.get(key) if isinstance(streams, dict) else None
    if not isinstance(spec, dict) or spec.get("width") != width:
        raise SdcError(f"stream {key!r}: missing, or its width is not {width}")
    blob = _section(sections, key)
    if spec.get("coding") == "fixed":
        return huffman.unpack_fixed(blob, width, count)
    if spec.get("coding") != "huffman":
        raise SdcError(f"stream {key!r}: unknown coding {spec.get('coding')!r}")
    code = huffman.HuffmanCode.from_bytes(blob)
    if code.count != count or code.lengths.size > 1 << width:
        got = f"{code.count} symbols of {code.lengths.size} kinds"
        raise SdcError(f"stream {key!r}: {got}, expected {count} below {1 << width}")
    return huffman.decode(code)


def _section(sections: dict[str, bytes], key: str) -> bytes:
    if key not in sections:
        raise SdcError(f"section {key!r} missing")
    return sections[key]


def _param_int(params: dict, key: str, lo: int, hi: int) -> int:
    value = params.get(key)
    if not _is_int(value) or not lo <= value <= hi:
        raise SdcError(f"params.{key} = {short(value)}, expected an integer in {lo}..{hi}")
    return value


def _param_choice(params: dict, key: str, choices: dict[str, object]) -> object:
    """What `choices` maps params[key] to; an unknown value raises SdcError naming the known."""
    value = params.get(key)
    if not isinstance(value, str) or value not in choices:
        raise SdcError(f"params.{key} = {short(value)}, expected one of {', '.join(choices)}")
    return choices[value]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_DECODERS = {"raw": _decode_raw, "raw-f16": _decode_raw, "shared": _decode_shared,
             "int8": _decode_int8, "dct2": _decode_spectral}  # fmt: skip


# --- accounting --------------------------------------------------------------------------------


def _summarize(entries: list[dict], nonzeros: list[int], file_bytes: int) -> SdcSummary:
    tensors = [_summarize_tensor(e, n) for e, n in zip(entries, nonzeros, strict=True)]
    overhead = file_bytes - sum(t.compressed_bytes for t in tensors)
    return SdcSummary(tensors, file_bytes, overhead)


def _summarize_tensor(entry: dict, nonzeros: int) -> TensorSummary:
    lengths = {key: n for key, (_, n) in entry["sections"].items()}
    params = int(np.prod(entry["shape"], dtype=np.int64))
    p, encoding = entry["params"], entry["encoding"]
    layout, index_bits, table_bytes = "dense", 0, 0
    if encoding == "shared" or (encoding == "dct2" and p["coefficients"] == "shared"):
        width, layout, table_bytes = huffman.fixed_width(p["k"]), p["layout"], lengths["codebook"]
        index_bits = p["index_bits"] if layout == "sparse" else 0
        fixed = p["entries"] * (index_bits + width) if layout == "sparse" else params * width
    elif encoding == "dct2":  # float32 coefficients
        width, layout = 32, p["layout"]
        index_bits = p["index_bits"] if layout == "sparse" else 0
        fixed = p["entries"] * (index_bits + width) if layout == "sparse" else params * width
    elif encoding == "int8":
        width, table_bytes, fixed = 8, lengths["scale"], 8 * params
    else:
        width = 8 * np.dtype(_storage(encoding, entry["dtype"])).itemsize
        fixed = 8 * lengths["data"]
    coded = 8 * sum(n for key, n in lengths.items() if key in (*_STREAMS, "data", "floats"))
    return TensorSummary(
        name=entry["name"], encoding=encoding, layout=layout, shape=list(entry["shape"]),
        params=params, nonzeros=nonzeros, bits_per_weight=width, bits_per_index=index_bits,
        codebook_bytes=table_bytes, fixed_bits=fixed, coded_bits=coded, dense_bytes=4 * params,
        compressed_bytes=sum(lengths.values()),
    )  # fmt: skip
