"""The `fft-prune` step: the DCT-II primitives against scipy, the `dct2` tensor kind of the .sdc
(exact round trips, accounting, refused corruption), spectra kept sparse through optimizer steps
(and that this is SGD on the kept coefficients), the plan's refusals, and a LeNet-5 on digits
whose decoded model.onnx has ordinary Conv weights equal to the trained ones."""

import contextlib
import hashlib
import json
import struct
import zlib

import numpy as np
import onnx
import pytest
import torch
from scipy.fft import dctn
from torch import nn

from services.compression.engine import compress, plan_recipe
from services.compression.prune import find_layers
from services.compression.recipe import Recipe
from services.compression.stage import run_compression
from services.compression.steps.fft_prune import FFTPruneConfig, Spectrum, SpectrumKeeper
from services.training.stage import run_training
from sigdl.core import sdc, spectral
from sigdl.core.checkpoint import ModelMeta, load_checkpoint
from sigdl.core.datasets import load_dataset
from sigdl.core.errors import InputError
from sigdl.core.sdc import SdcError, SharedTensor, SpectralTensor
from sigdl.core.training import TrainConfig

META = ModelMeta(model="lenet-5", input_size=28, channels=1, classes=10, mean=[0.13], std=[0.31])


# --- the transform -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 2, 5, 5), (4, 1, 3, 3), (2, 3, 1, 1), (5, 7, 3), (11, 11)])
def test_dct2_is_scipys_orthonormal_dct_and_idct2_inverts_it(shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    c = spectral.dct2(w)
    reference = dctn(w.astype(np.float64), axes=(-2, -1), norm="ortho")
    np.testing.assert_allclose(c, reference, rtol=0, atol=1e-12)
    np.testing.assert_allclose((c**2).sum(), (w.astype(np.float64) ** 2).sum(), rtol=1e-12)
    back = spectral.idct2(c.astype(np.float32))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, w, rtol=0, atol=1e-6)


def test_transform_refuses_what_is_not_kernels():
    with pytest.raises(InputError, match="kh, kw"):
        spectral.dct2(np.zeros(5))
    with pytest.raises(InputError, match="kernel side 65"):
        spectral.idct2(np.zeros((1, 65)))


# --- the .sdc tensor kind ----------------------------------------------------------------------


def _pruned_spectrum(shape, sparsity, seed=0) -> np.ndarray:
    """DCT coefficients of Gaussian kernels with the smallest `sparsity` of them zeroed."""
    rng = np.random.default_rng(seed)
    c = spectral.dct2(rng.normal(0, 0.1, shape).astype(np.float32)).astype(np.float32)
    c[np.abs(c) <= np.quantile(np.abs(c), sparsity)] = 0.0
    return c


def _on_codebook(c: np.ndarray, bits: int, **kw) -> SharedTensor:
    keep = c != 0
    centroids = np.linspace(c[keep].min(), c[keep].max(), 2**bits - 1, dtype=np.float32)
    assignments = np.zeros(c.shape, np.int64)
    assignments[keep] = np.abs(c[keep][:, None] - centroids).argmin(axis=1) + 1
    return SharedTensor(np.concatenate([[0.0], centroids]), assignments, **kw)


def _spectral_sample() -> dict:
    floats = _pruned_spectrum((20, 6, 5, 5), 0.9, 1)
    shared = _on_codebook(_pruned_spectrum((16, 6, 5, 5), 0.8, 2), 4, index_bits=8)
    return {
        "sparse.weight": SpectralTensor(floats, index_bits=5),
        "dense.weight": SpectralTensor(_pruned_spectrum((4, 2, 3, 3), 0.0, 3)),
        "shared.weight": SpectralTensor(shared.values(), 8, shared),
        "bias": np.arange(3, dtype=np.float32),
    }


@pytest.mark.parametrize("use_huffman", [False, True])
def test_dct2_tensors_round_trip_exactly_and_are_accounted(tmp_path, use_huffman):
    tensors = _spectral_sample()
    path = tmp_path / "model.sdc"
    summary = sdc.write_sdc(path, tensors, META.to_json(), huffman=use_huffman)
    decoded = sdc.read_sdc(path).state_dict
    for name in ("sparse.weight", "dense.weight", "shared.weight"):
        expected = tensors[name].values()  # idct2 of the stored coefficients, float32
        assert np.array_equal(decoded[name].numpy().view(np.int32), expected.view(np.int32))
        kernels = spectral.idct2(spectral.dct2(expected).astype(np.float32))
        np.testing.assert_allclose(kernels, expected, atol=1e-6)  # a real spatial kernel
    by_name = {t.name: t for t in summary.tensors}
    assert {t.encoding for n, t in by_name.items() if n != "bias"} == {"dct2"}
    assert by_name["sparse.weight"].layout == "sparse"
    assert by_name["dense.weight"].layout == "dense"  # nothing pruned: all 72 floats
    assert by_name["dense.weight"].compressed_bytes == 4 * 72
    # 10% of 3,000 coefficients kept: values + positions well under a fifth of the dense bytes
    assert by_name["sparse.weight"].compressed_bytes < 0.2 * by_name["sparse.weight"].dense_bytes
    assert by_name["shared.weight"].bits_per_weight == 4
    again = sdc.describe(path)
    assert again.file_bytes == path.stat().st_size == summary.file_bytes
    assert [t.compressed_bytes for t in again.tensors] == [
        t.compressed_bytes for t in summary.tensors
    ]


def test_the_old_encodings_are_written_as_before():
    """Adding the dct2 kind changed no byte of the other kinds (a file without it)."""
    tensors = {
        "w": _on_codebook(_pruned_spectrum((8, 4, 3, 3), 0.5), 3, index_bits=8),
        "b": np.ones(8, np.float32),
    }
    blob, _ = sdc.encode_sdc(tensors, META.to_json())
    header_len = struct.unpack_from("<4sHIQ", blob)[2]
    header = json.loads(zlib.decompress(blob[18 : 18 + header_len]))
    assert [t["encoding"] for t in header["tensors"]] == ["shared", "raw"]
    assert "coefficients" not in header["tensors"][0]["params"]


def _with_params(blob: bytes, name: str, edit) -> bytes:
    _, version, header_len, data_len = struct.unpack_from("<4sHIQ", blob)
    header = json.loads(zlib.decompress(blob[18 : 18 + header_len]))
    edit(next(t for t in header["tensors"] if t["name"] == name)["params"])
    text = zlib.compress(json.dumps(header).encode())
    body = struct.pack("<4sHIQ", b"SDC1", version, len(text), data_len)
    body += text + blob[18 + header_len : -32]
    return body + hashlib.sha256(body).digest()


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("sparse.weight", lambda p: p.update(coefficients="complex64"), "coefficients"),
        ("sparse.weight", lambda p: p.update(layout="diagonal"), "layout"),
        ("sparse.weight", lambda p: p.update(entries=p["entries"] + 1), "coefficient bytes"),
        ("dense.weight", lambda p: p.update(layout="sparse"), "sections"),
        ("shared.weight", lambda p: p.update(coefficients="float32"), "sections"),
    ],
)
def test_inconsistent_dct2_headers_are_refused(name, edit, message):
    blob, _ = sdc.encode_sdc(_spectral_sample(), META.to_json())
    with pytest.raises(SdcError, match=message):
        sdc.decode_sdc(_with_params(blob, name, edit))


def test_resealed_corruptions_of_dct2_tensors_raise_sdc_error_or_decode():
    blob, _ = sdc.encode_sdc(_spectral_sample(), META.to_json())
    header_len = struct.unpack_from("<4sHIQ", blob)[2]
    start = 18 + header_len  # the data area: what the checksum alone would catch, resealed
    rng = np.random.default_rng(0)
    for _ in range(200):
        data = bytearray(blob[:-32])
        for at in rng.integers(start, len(data), size=3):
            data[at] ^= 1 << int(rng.integers(8))
        with contextlib.suppress(SdcError):  # decoding anything else is fine too
            sdc.decode_sdc(bytes(data) + hashlib.sha256(bytes(data)).digest())


def test_spectral_tensor_checks():
    with pytest.raises(InputError, match="coefficients"):
        SpectralTensor(np.zeros(5, np.float32))
    with pytest.raises(InputError, match="finite"):
        SpectralTensor(np.full((2, 2), np.nan, np.float32))
    c = _pruned_spectrum((2, 2, 3, 3), 0.5)
    other = _on_codebook(_pruned_spectrum((2, 2, 3, 3), 0.5, seed=9), 3)
    with pytest.raises(InputError, match="exactly the coefficients"):
        SpectralTensor(c, 8, other)


# --- spectra through optimizer steps ----------------------------------------------------------


def test_prune_reaches_the_sparsity_and_never_revives_a_coefficient():
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(6, 3, 5, 5))
    spectrum = Spectrum.of(weight)
    spectrum.prune(weight, 0.6)
    first = spectrum.keep.copy()
    assert spectrum.sparsity == pytest.approx(round(0.6 * 450) / 450)
    spectrum.prune(weight, 0.8)
    assert spectrum.sparsity == pytest.approx(round(0.8 * 450) / 450)
    assert not (spectrum.keep & ~first).any()
    # the weight is exactly the kernels of the kept coefficients, none of the pruned ones
    w = weight.detach().numpy()
    assert np.array_equal(w.view(np.int32), spectral.idct2(spectrum.coefficients).view(np.int32))
    assert (spectrum.coefficients[~spectrum.keep] == 0).all()
    assert np.abs(spectral.dct2(w)[~spectrum.keep]).max() < 1e-6


def test_projected_sgd_is_sgd_on_the_kept_coefficients():
    torch.manual_seed(1)
    weight = nn.Parameter(torch.randn(4, 2, 5, 5))
    spectrum = Spectrum.of(weight)
    spectrum.prune(weight, 0.7)
    keeper = SpectrumKeeper([(weight, spectrum)])
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=1e-3)
    # the same SGD on the coefficients themselves, gradients masked to the kept ones
    coefs = torch.tensor(spectrum.coefficients.astype(np.float64), requires_grad=True)
    mask = torch.from_numpy(spectrum.keep)
    dh = torch.tensor(spectral.dct_matrix(5))
    reference = torch.optim.SGD([coefs], lr=0.1, momentum=0.9, weight_decay=1e-3)
    target = torch.randn(4, 2, 5, 5)
    for _ in range(5):
        optimizer.zero_grad()
        ((weight - target) ** 2).sum().backward()
        optimizer.step()
        keeper()
        reference.zero_grad()
        kernels = dh.T @ coefs @ dh  # idct2
        ((kernels - target.double()) ** 2).sum().backward()
        coefs.grad.mul_(mask)
        reference.step()
    np.testing.assert_allclose(spectrum.coefficients, coefs.detach().numpy(), atol=2e-5)
    assert (spectrum.coefficients[~spectrum.keep] == 0).all()


def test_shared_coefficients_stay_on_their_codebook_and_centroids_train():
    torch.manual_seed(2)
    weight = nn.Parameter(torch.randn(8, 4, 3, 3))
    spectrum = Spectrum.of(weight)
    spectrum.prune(weight, 0.5)
    spectrum.share(weight, 3, "mean", fp16=True)
    before = spectrum.codebook.copy()
    keeper = SpectrumKeeper([(weight, spectrum)])
    optimizer = torch.optim.SGD([weight], lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        (weight**2).sum().backward()  # each centroid's mean move pulls it towards 0
        optimizer.step()
        keeper()
    assert spectrum.codebook[0] == 0.0 and not np.array_equal(spectrum.codebook, before)
    assert np.abs(spectrum.codebook[1:]).sum() < np.abs(before[1:]).sum()
    half = spectrum.codebook.astype(np.float16).astype(np.float32)
    assert np.array_equal(half, spectrum.codebook)
    coefficients = spectrum.codebook[spectrum.assignments].reshape(weight.shape)
    w = weight.detach().numpy()
    assert np.array_equal(w.view(np.int32), spectral.idct2(coefficients).view(np.int32))
    stored = spectrum.tensor(8)
    assert stored.shared is not None and np.array_equal(stored.values(), w)


# --- recipes -----------------------------------------------------------------------------------


def test_config_checks():
    with pytest.raises(InputError, match="sparsity=None"):
        FFTPruneConfig()
    with pytest.raises(InputError, match="sparsity"):
        FFTPruneConfig(sparsity=1.0)
    with pytest.raises(InputError, match="bits"):
        FFTPruneConfig(sparsity=0.5, bits=0)
    with pytest.raises(InputError, match="schedule"):
        FFTPruneConfig(sparsity=0.5, schedule="cubic")
    with pytest.raises(InputError, match="epochs"):
        FFTPruneConfig(sparsity=0.5, share_retrain={"epochs": -1})
    assert Recipe("r", [{"type": "fft-prune", "sparsity": 0.5}]).steps[0].layers == ["conv"]


def test_plan_selects_2d_convolutions_and_refuses_the_rest():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv1d(4, 4, 3), nn.Flatten(), nn.Linear(8, 2))
    layers = find_layers(net)
    plan = plan_recipe(Recipe("f", [{"type": "fft-prune", "sparsity": 0.5}]), layers)
    assert list(plan[0]) == ["0.weight"]  # the 1-D convolution is skipped when not named
    with pytest.raises(InputError, match=r"layer '3' is not a 2-D convolution"):
        plan_recipe(Recipe("f", [{"type": "fft-prune", "layers": ["fc"], "sparsity": 0.5}]), layers)
    with pytest.raises(InputError, match=r"layer '1' is not a 2-D convolution"):
        plan_recipe(Recipe("f", [{"type": "fft-prune", "layers": ["1"], "sparsity": 0.5}]), layers)
    only_1d = find_layers(nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten(), nn.Linear(8, 2)))
    with pytest.raises(InputError, match=r"\['conv'\] select no 2-D convolution"):
        plan_recipe(Recipe("f", [{"type": "fft-prune", "sparsity": 0.5}]), only_1d)
    # a spatial prune or share after it would undo the sparse spectra: refused before any work
    for later in ({"type": "prune", "sparsity": 0.5}, {"type": "share", "bits": 4}):
        steps = [{"type": "fft-prune", "sparsity": 0.5}, {**later, "layers": ["0"]}]
        with pytest.raises(InputError, match="already fixed"):
            plan_recipe(Recipe("f", steps), layers)


@pytest.fixture(scope="module")
def lenet5(tmp_path_factory):
    root = tmp_path_factory.mktemp("fftprune")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
        mp.setenv("SIGDL_PROGRESS", "0")
        run_training(TrainConfig(model="lenet-5", dataset="digits", epochs=3), root / "ck")
    return root


def test_a_layer_pruned_spatially_before_is_refused(lenet5):
    model, meta = load_checkpoint(lenet5 / "ck")
    steps = [
        {"type": "prune", "layers": ["conv1"], "sparsity": 0.5, "retrain": {"epochs": 0}},
        {"type": "fft-prune", "sparsity": 0.5, "retrain": {"epochs": 0}},
    ]
    with pytest.raises(InputError, match="'conv1' was pruned in the spatial domain"):
        compress(model, Recipe("both", steps), load_dataset("digits"), meta)


RECIPE = """
name: fft-smoke
seed: 0
steps:
  - type: fft-prune
    sparsity: {conv1: 0.5, conv2: 0.9}
    rounds: 2
    schedule: agp
    retrain: {epochs: 1, lr: 0.01}
    bits: {conv2: 5}
    codebook: float16
    share_retrain: {epochs: 1, lr: 0.001}
  - type: prune
    layers: [fc]
    sparsity: 0.8
    retrain: {epochs: 1, lr: 0.01}
  - type: share
    layers: [fc]
    bits: 5
    retrain: {epochs: 1, lr: 0.001}
  - type: huffman
    raw_dtype: float16
"""


def test_lenet5_recipe_stores_sparse_spectra_and_decodes_to_plain_conv(lenet5, monkeypatch):
    monkeypatch.setenv("SIGDL_MLFLOW_TRACKING_URI", "off")
    monkeypatch.setenv("SIGDL_PROGRESS", "0")
    (lenet5 / "fft.yaml").write_text(RECIPE)
    out = lenet5 / "out"
    report = run_compression(lenet5 / "ck", lenet5 / "fft.yaml", "digits", out)
    spectra = report["spectral"]
    assert spectra["conv1"]["sparsity"] == pytest.approx(0.5)
    assert spectra["conv2"]["sparsity"] >= 0.9  # k-means may put a kept coefficient on 0.0
    assert spectra["conv1"]["bits"] is None and spectra["conv2"]["bits"] == 5
    sizes = {t["name"]: t for t in report["sizes"]["tensors"]}
    assert sizes["net.conv1.weight"]["encoding"] == "dct2"
    assert sizes["net.conv2.weight"]["encoding"] == "dct2"
    assert sizes["net.conv2.weight"]["layout"] == "sparse"
    assert sizes["net.fc1.weight"]["encoding"] == "shared"
    # the spatial kernels are dense: the sparsity lives in the spectrum the file stores
    assert sizes["net.conv2.weight"]["nonzeros"] > 0.9 * sizes["net.conv2.weight"]["params"]
    assert sizes["net.conv2.weight"]["compressed_bytes"] < 0.1 * 4 * 25_000
    # decoded: ordinary Conv nodes, scored under ONNX Runtime as the PyTorch model was
    graph = onnx.load(out / "model.onnx").graph
    assert [n.op_type for n in graph.node].count("Conv") == 2
    assert not any(n.op_type.startswith("DFT") for n in graph.node)
    m = report["metrics"]
    assert m["onnx_test_accuracy"] == pytest.approx(m["compressed_accuracy"], abs=2e-3)
    assert m["compressed_accuracy"] > m["dense_accuracy"] - 0.05
    decoded, _ = sdc.load_model(out / "model.sdc")
    rebuilt = dict(decoded.state_dict())
    spectrum = spectral.dct2(rebuilt["net.conv2.weight"].numpy())
    assert (np.abs(spectrum) < 1e-6).mean() >= 0.9  # the decoded kernel's spectrum is sparse
