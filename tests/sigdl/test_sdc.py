"""The `.sdc` container: exact round trips, size accounting, and no silent corruption."""

import hashlib
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sigdl.core import checkpoint, sdc
from sigdl.core.checkpoint import ModelMeta
from sigdl.core.errors import InputError
from sigdl.core.sdc import Int8Tensor, SdcError, SharedTensor

META = ModelMeta(
    model="lenet-300-100", input_size=28, channels=1, classes=10, mean=[0.13], std=[0.31]
)


def _bits(t: torch.Tensor) -> np.ndarray:
    """The tensor's bytes, so comparisons are bitwise (-0.0 and NaN included)."""
    return t.detach().cpu().contiguous().numpy().reshape(-1).view(np.uint8)


def _assert_bitwise(decoded: torch.Tensor, expected: np.ndarray) -> None:
    assert decoded.dtype == torch.from_numpy(expected).dtype
    assert list(decoded.shape) == list(expected.shape)
    np.testing.assert_array_equal(_bits(decoded), _bits(torch.from_numpy(expected)))


def _shared(shape: tuple[int, ...], k: int, pruned: float, seed: int, **kw) -> SharedTensor:
    """Magnitude-pruned Gaussian weights shared into k linear centroids, as in the paper."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.05, shape).astype(np.float32)
    keep = np.abs(w) > np.quantile(np.abs(w), pruned) if pruned else np.ones(shape, bool)
    centroids = np.linspace(w[keep].min(), w[keep].max(), k - 1, dtype=np.float32)
    assignments = np.zeros(shape, np.int64)
    assignments[keep] = np.abs(w[keep][:, None] - centroids).argmin(axis=1) + 1
    return SharedTensor(np.concatenate([[0.0], centroids]), assignments, **kw)


def _int8(shape: tuple[int, ...], seed: int) -> Int8Tensor:
    rng = np.random.default_rng(seed)
    q = np.clip(np.round(rng.normal(0, 30, shape)), -127, 127).astype(np.int8)
    return Int8Tensor(rng.uniform(1e-3, 1e-2, shape[0]).astype(np.float32), q)


def _sample() -> dict:
    """One tensor of every encoding and storage choice, small enough for fuzzing."""
    rng = np.random.default_rng(7)
    return {
        "conv.weight": _shared((8, 4, 3, 3), 16, 0.6, 1, index_bits=8),
        "conv.bias": rng.normal(size=8).astype(np.float32),
        "fc.weight": _shared((20, 30), 8, 0.9, 2, index_bits=5, fp16_codebook=True),
        "fc.bias": torch.tensor([-0.0, 1.5, float("nan")]),
        "q.weight": _int8((6, 10), 3),
        "bn.num_batches_tracked": torch.tensor(42),
    }


def _expected(tensors: dict, fp16_raw: bool = False) -> dict[str, np.ndarray]:
    out = {}
    for name, t in tensors.items():
        if isinstance(t, SharedTensor | Int8Tensor):
            out[name] = t.values()
        else:
            a = t.numpy() if isinstance(t, torch.Tensor) else t
            halve = fp16_raw and a.dtype.kind == "f"
            out[name] = a.astype(np.float16).astype(np.float32) if halve else a
    return out


def _reseal(blob: bytes) -> bytes:
    """Recompute the checksum, as a forger (or a buggy writer) would."""
    body = blob[:-32]
    return body + hashlib.sha256(body).digest()


def _with_header(blob: bytes, edit) -> bytes:
    _, version, header_len, data_len = struct.unpack_from("<4sHIQ", blob)
    header = json.loads(zlib.decompress(blob[18 : 18 + header_len]))
    edit(header)
    text = zlib.compress(json.dumps(header).encode())
    prefix = struct.pack("<4sHIQ", b"SDC1", version, len(text), data_len)
    return _reseal(prefix + text + blob[18 + header_len :])


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("fp16_raw", [False, True])
def test_every_encoding_round_trips_bitwise(tmp_path, fp16_raw):
    tensors = _sample()
    path = tmp_path / "model.sdc"
    sdc.write_sdc(path, tensors, META.to_json(), fp16_raw=fp16_raw)
    decoded = sdc.read_sdc(path).state_dict
    assert list(decoded) == list(tensors)  # state_dict order
    for name, expected in _expected(tensors, fp16_raw).items():
        _assert_bitwise(decoded[name], expected)
    encodings = [t["encoding"] for t in sdc.read_sdc(path).header["tensors"]]
    raw = "raw-f16" if fp16_raw else "raw"
    assert encodings == ["shared", raw, "shared", raw, "int8", "raw"]


def test_shared_values_are_exactly_codebook_of_assignments():
    t = _shared((50, 40), 32, 0.8, 4, index_bits=5)
    blob, _ = sdc.encode_sdc({"w": t}, META.to_json())
    decoded = sdc.decode_sdc(blob).state_dict["w"]
    _assert_bitwise(decoded, t.codebook[t.assignments])
    assert (decoded.numpy() == 0).sum() == (t.assignments == 0).sum()


def test_int8_values_are_scale_times_q():
    t = _int8((4, 3, 5, 5), 9)
    blob, _ = sdc.encode_sdc({"w": t}, META.to_json())
    expected = t.scale[:, None, None, None] * t.q.astype(np.float32)
    _assert_bitwise(sdc.decode_sdc(blob).state_dict["w"], expected)


def test_header_round_trips(tmp_path):
    path = tmp_path / "m.sdc"
    recipe = {"name": "deep-compression", "steps": [{"prune": {"quality": 0.7}}]}
    metrics = {"accuracy": np.float32(0.98), "ratio": 41.0, "layers": ["fc1"]}
    sdc.write_sdc(path, _sample(), META.to_json(), recipe, "sha256:abc", metrics)
    header = sdc.read_sdc(path).header
    assert header["format_version"] == sdc.FORMAT_VERSION
    assert header["model"] == json.loads(json.dumps(META.to_json()))
    assert header["recipe"] == recipe and header["recipe_digest"] == "sha256:abc"
    assert header["metrics"] == {**metrics, "accuracy": float(np.float32(0.98))}
    entry = header["tensors"][0]
    assert entry["name"] == "conv.weight" and entry["shape"] == [8, 4, 3, 3]
    assert entry["params"]["k"] == 16 and entry["params"]["index_bits"] == 8


def test_load_model_rebuilds_the_module(tmp_path):
    torch.manual_seed(0)
    model = checkpoint.build(META)
    state = model.state_dict()
    tensors = {k: v for k, v in state.items()}
    tensors["net.fc1.weight"] = _shared((300, 784), 32, 0.92, 5, index_bits=5)
    path = tmp_path / "model.sdc"
    sdc.write_sdc(path, tensors, META.to_json())
    loaded, meta = sdc.load_model(path)
    assert meta == META and not loaded.training
    for name, expected in _expected(tensors).items():
        _assert_bitwise(loaded.state_dict()[name], expected)
    del tensors["net.fc3.bias"]
    sdc.write_sdc(path, tensors, META.to_json())
    with pytest.raises(SdcError, match="do not match model 'lenet-300-100'"):
        sdc.load_model(path)
    sdc.write_sdc(path, state, {**META.to_json(), "model": "no-such-net"})
    with pytest.raises(SdcError, match="unknown model 'no-such-net'"):
        sdc.load_model(path)


# --- storage choices and accounting ------------------------------------------------------------


def test_the_smaller_storage_is_chosen_automatically():
    dense = _shared((64, 64), 16, 0.0, 1, index_bits=5)  # no zeros: relative indices are waste
    sparse = _shared((64, 64), 16, 0.95, 1, index_bits=5)
    noise = np.random.default_rng(0).integers(-128, 128, (64, 64)).astype(np.int8)
    uniform = Int8Tensor(np.ones(64, np.float32), noise)
    peaked = _int8((64, 64), 1)
    tensors = {"dense": dense, "sparse": sparse, "uniform": uniform, "peaked": peaked}
    blob, summary = sdc.encode_sdc(tensors, META.to_json())
    params = {t["name"]: t["params"] for t in sdc.decode_sdc(blob).header["tensors"]}
    assert params["dense"]["layout"] == "dense" and "gaps" not in params["dense"]["streams"]
    assert params["sparse"]["layout"] == "sparse"
    assert set(params["sparse"]["streams"]) == {"gaps", "values"}
    assert params["uniform"]["streams"]["q"]["coding"] == "fixed"  # a table would only add bytes
    assert params["peaked"]["streams"]["q"]["coding"] == "huffman"
    by_name = {t.name: t for t in summary.tensors}
    for t in by_name.values():  # never worse than fixed width
        assert t.coded_bits <= t.fixed_bits + 16  # byte padding of at most two streams
    assert by_name["sparse"].bits_per_index == 5 and by_name["dense"].bits_per_index == 0


def test_accounting_matches_the_file_on_disk(tmp_path):
    path = tmp_path / "model.sdc"
    summary = sdc.write_sdc(path, _sample(), META.to_json(), {"r": 1}, "d", {"acc": 0.9})
    size = path.stat().st_size
    assert summary.file_bytes == size
    assert sum(t.compressed_bytes for t in summary.tensors) + summary.overhead_bytes == size
    assert summary.params == 8 * 36 + 8 + 600 + 3 + 60 + 1
    assert summary.dense_bytes == 4 * summary.params
    assert summary.ratio == summary.dense_bytes / size
    assert sdc.describe(path) == summary
    report = summary.to_json()
    assert report["file_bytes"] == size and len(report["tensors"]) == 6
    conv = report["tensors"][0]
    assert conv["bits_per_weight"] == 4 and conv["codebook_bytes"] == 16 * 4
    assert conv["nonzeros"] == int(np.count_nonzero(_sample()["conv.weight"].values()))
    assert report["tensors"][2]["codebook_bytes"] == 8 * 2  # float16 codebook


def test_lenet_fc1_compresses_like_deep_compression():
    # 300x784, 92% pruned, 5-bit codebook (32 entries), 5-bit relative indices (the paper's fc)
    t = _shared((300, 784), 32, 0.92, 11, index_bits=5)
    _, summary = sdc.encode_sdc({"fc1.weight": t}, META.to_json())
    fc1 = summary.tensors[0]
    budget = fc1.nonzeros * (5 + 5) / 8
    gain = fc1.huffman_gain
    print(f"fc1: {fc1.compressed_bytes} B (budget {budget:.0f}), {fc1.ratio:.1f}x, gain {gain:.2f}")
    assert fc1.layout == "sparse" and fc1.nonzeros == round(0.08 * 300 * 784)
    assert fc1.compressed_bytes <= budget
    assert fc1.ratio > 30 and fc1.huffman_gain > 1.0
    _, plain = sdc.encode_sdc({"fc1.weight": t}, META.to_json(), huffman=False)
    fixed = plain.tensors[0]  # the ladder's "+share" row: fixed-width indices only
    assert fixed.huffman_gain <= 1.0 < fixed.fixed_bits / fc1.coded_bits
    assert fixed.compressed_bytes > fc1.compressed_bytes


def test_constructor_checks():
    with pytest.raises(InputError, match=r"codebook\[0\]"):
        SharedTensor(np.array([0.5, 1.0]), np.zeros(3, int))
    with pytest.raises(InputError, match=r"0\.\.1"):
        SharedTensor(np.array([0.0, 1.0]), np.array([0, 2]))
    with pytest.raises(InputError, match="index_bits"):
        SharedTensor(np.array([0.0, 1.0]), np.array([0, 1]), index_bits=17)
    with pytest.raises(InputError, match="one per channel"):
        Int8Tensor(np.ones(2, np.float32), np.zeros((3, 4), np.int8))
    with pytest.raises(InputError, match="int8"):
        Int8Tensor(np.ones(3, np.float32), np.zeros((3, 4), np.int16))
    with pytest.raises(InputError, match="not storable"):
        sdc.encode_sdc({"c": np.zeros(2, np.complex64)}, META.to_json())
    with pytest.raises(InputError, match="model must be"):
        sdc.encode_sdc({}, "lenet-5")


# --- corruption never yields a model -----------------------------------------------------------


_BLOB = sdc.encode_sdc(_sample(), META.to_json(), {"steps": []}, "d", {"a": 1.0})[0]


@pytest.fixture
def blob() -> bytes:
    return _BLOB


def test_clear_errors(tmp_path, blob):
    cases = {
        b"PK\x03\x04" + blob[4:]: "not a .sdc file",
        blob[:4] + struct.pack("<H", 9) + blob[6:]: "format version 9, this SigDL reads 1",
        blob[:-100]: "truncated",
        blob[:10]: "truncated",
        blob + b"\0": "trailing bytes",
        blob[:40] + bytes([blob[40] ^ 0x10]) + blob[41:]: "corrupted: sha256 mismatch",
    }
    for i, (data, message) in enumerate(cases.items()):
        path = tmp_path / f"{i}.sdc"
        path.write_bytes(data)
        with pytest.raises(SdcError, match=message) as info:
            sdc.read_sdc(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(SdcError, match="cannot be read"):
        sdc.read_sdc(tmp_path / "missing.sdc")


def _set(path: list, value):
    def edit(header: dict) -> None:
        target = header
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set(["tensors", 0, "shape"], [8, 4, 3, 2]), "stream 'values'"),
        (_set(["tensors", 2, "shape"], [20, 2]), "params.entries = 60"),
        (_set(["tensors", 2, "shape"], [20, 25]), "beyond length"),
        (_set(["tensors", 1, "shape"], [9]), "data bytes for 9"),
        (_set(["tensors", 1, "sections", "data"], [0, 32]), "out of place or out of bounds"),
        (_set(["tensors", 5, "sections", "data"], [10**6, 8]), "out of place or out of bounds"),
        (_set(["tensors", 2, "params", "entries"], 3), "stream"),
        (_set(["tensors", 0, "params", "k"], 300), "codebook of"),
        (_set(["tensors", 2, "params", "layout"], "dense"), "sections"),
        (
            _set(["tensors", 2, "params", "layout"], "csr"),
            "params.layout = 'csr', expected one of sparse, dense",
        ),
        (_set(["tensors", 4, "params", "channels"], 5), "channels but shape"),
        (_set(["tensors", 4, "encoding"], "zstd"), "unknown encoding 'zstd'"),
        (_set(["tensors", 1, "dtype"], "float64"), "dtype 'float64'"),
        (_set(["tensors", 3, "name"], "conv.bias"), "appears twice"),
        (_set(["tensors"], {}), "'tensors' missing or not a list"),
        (_set(["format_version"], 2), "format_version"),
        (_set(["tensors", 0, "shape"], [2**40]), "exceeds"),
    ],
)
def test_inconsistent_headers_are_refused(blob, edit, message):
    with pytest.raises(SdcError, match=message):
        sdc.decode_sdc(_with_header(blob, edit))


@st.composite
def corruptions(draw: st.DrawFn, blob: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "version", "garbage"]))
    if kind == "truncate":
        return blob[: draw(st.integers(0, len(blob) - 1))]
    if kind == "flip":
        data = bytearray(blob)
        # distinct positions: two flips of one bit would cancel out into a valid file
        for pos in draw(st.sets(st.integers(0, len(data) - 1), min_size=1, max_size=4)):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "version":
        version = draw(st.integers(0, 65535).filter(lambda v: v != sdc.FORMAT_VERSION))
        return _reseal(blob[:4] + struct.pack("<H", version) + blob[6:])
    prefix = draw(st.sampled_from([b"", b"SDC1", blob[:18]]))
    return prefix + draw(st.binary(max_size=300))


@settings(max_examples=300, deadline=None)
@given(corruptions(_BLOB))
def test_every_corruption_raises_sdc_error(data):
    with pytest.raises(SdcError):
        sdc.decode_sdc(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_resealed_bit_flips_never_crash_the_reader(data):
    # a forged checksum defeats the sha256; the structural checks must still hold: the reader
    # either refuses with SdcError or returns tensors of exactly the shapes its header declares
    blob = bytearray(_BLOB)
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(18, len(blob) - 33))] ^= 1 << data.draw(st.integers(0, 7))
    try:
        model = sdc.decode_sdc(_reseal(bytes(blob)))
    except SdcError:
        return
    for entry in model.header["tensors"]:
        assert list(model.state_dict[entry["name"]].shape) == entry["shape"]
