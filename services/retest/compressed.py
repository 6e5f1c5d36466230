"""Accuracy of compressed candidates computed from their `.sdc` form, through `kernels/`.

Retest normally decodes a candidate to a dense model.onnx and runs ONNX Runtime. Here the
weights stay as the `.sdc` stores them: a pruned shared layer is a CSR of codebook indices
(kernels.sparse_linear), a dense shared layer an index matrix (kernels.codebook_linear), and
convolutions run by FFT (kernels.fft_conv); the Huffman streams are decoded by
kernels.huffman_decode. The kernels run where their input lives: NumPy here, CuPy on a GPU
(`device="cuda"`), where each candidate gets its own CUDA stream, candidates round-robin over
the devices. Several candidates are scored concurrently either way (threads: NumPy's BLAS and
the GPU both work without the GIL).

    scores = score_candidates(["a/model.sdc", "b/model.sdc"], "digits")
    scores[0].accuracy

Tolerance against ONNX Runtime on the decoded model.onnx: the same float32 arithmetic in
another order, so logits agree within LOGIT_ATOL + LOGIT_RTOL * |logit|, and a prediction may
differ only where the top two logits of ONNX Runtime lie within twice that of each other.
Models: lenet-300-100 and lenet-5 (the zoo's compression baselines).
"""

from __future__ import annotations

import math
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import numpy as np

from kernels import codebook_linear, dispatch, fft_conv, huffman_decode, sparse_linear
from sigdl.core import huffman, sdc
from sigdl.core.datasets import Split, load_dataset
from sigdl.core.errors import InputError
from sigdl.core.evaluation import pixel_batches

MODELS = ("lenet-300-100", "lenet-5")
DEVICES = ("auto", "cpu", "cuda")
LOGIT_ATOL = 1e-3  # see the module docstring
LOGIT_RTOL = 1e-4
BATCH = 256  # images per forward pass
_PREFIX = struct.Struct("<4sHIQ")  # sdc.py's layout: magic, version, header length, data length


@dataclass(frozen=True)
class Weight:
    """One weight matrix (out, in) in the form a kernel takes; convs are (O, C * kh * kw)."""

    shape: tuple[int, ...]  # the tensor's shape in the state dict
    csr: sparse_linear.Csr | None = None  # a pruned shared layer: codebook indices
    assignments: object = None  # a dense shared layer: (out, in) uint8/uint16
    codebook: object = None  # (K,) float32 for `assignments`
    dense: object = None  # anything else: (out, in) float32

    def to(self, xp: ModuleType) -> Weight:
        def move(v: object) -> object:
            return None if v is None else xp.asarray(v)

        csr = None if self.csr is None else self.csr.to(xp)
        return replace(
            self,
            csr=csr,
            assignments=move(self.assignments),
            codebook=move(self.codebook),
            dense=move(self.dense),
        )

    def linear(self, x: object, bias: object) -> object:
        """(B, out) x @ W.T + bias."""
        if self.csr is not None:
            return sparse_linear.sparse_linear(x, self.csr, bias)
        if self.assignments is not None:
            return codebook_linear.codebook_linear(x, self.assignments, self.codebook, bias)
        return x @ self.dense.T + bias

    def tensor(self) -> object:
        """The dense weight in its state-dict shape (convolution kernels, for the FFT)."""
        return self.dense.reshape(self.shape)


@dataclass(frozen=True)
class CompressedModel:
    """A LeNet whose weights are in the kernels' compressed forms."""

    model: str  # zoo name
    channels: int
    input_size: int
    adapt_mode: str
    mean: object  # (1, C, 1, 1) float32
    std: object
    weights: dict[str, Weight]  # "fc1" -> its weight
    biases: dict[str, object]  # "fc1" -> (out,) float32
    decode_seconds: float  # reading and Huffman-decoding the .sdc

    def to(self, xp: ModuleType) -> CompressedModel:
        return replace(
            self,
            mean=xp.asarray(self.mean),
            std=xp.asarray(self.std),
            weights={k: w.to(xp) for k, w in self.weights.items()},
            biases={k: xp.asarray(b) for k, b in self.biases.items()},
        )

    def logits(self, pixels: object) -> object:
        """(N, classes) logits of float32 (N, C, H, W) pixels in [0, 1], on their device."""
        xp = dispatch.array_module(pixels)
        x = (pixels - self.mean) / self.std
        w, b = self.weights, self.biases
        if self.model == "lenet-5":
            x = _pool(fft_conv.conv2d(x, w["conv1"].tensor(), b["conv1"]))  # (N, 20, h, w)
            x = _pool(fft_conv.conv2d(x, w["conv2"].tensor(), b["conv2"]))  # (N, 50, h, w)
            x = xp.maximum(w["fc1"].linear(x.reshape(len(x), -1), b["fc1"]), 0)  # (N, 500)
            return w["fc2"].linear(x, b["fc2"])  # (N, classes)
        x = x.reshape(len(x), -1)  # (N, C*H*W)
        x = xp.maximum(w["fc1"].linear(x, b["fc1"]), 0)  # (N, 300)
        x = xp.maximum(w["fc2"].linear(x, b["fc2"]), 0)  # (N, 100)
        return w["fc3"].linear(x, b["fc3"])  # (N, classes)


def _pool(x: object) -> object:
    """2 x 2 max pooling, stride 2, the odd row/column dropped (nn.MaxPool2d(2))."""
    n, c, h, w = x.shape
    return x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def load_compressed(path: str | Path) -> CompressedModel:
    """Read, verify (sigdl.core.sdc) and decode a LeNet's `.sdc` into the kernels' forms."""
    started = time.perf_counter()
    checked = sdc.read_sdc(path)  # checksum, header and every stream checked by the reader
    model = checked.header["model"]
    if model.get("model") not in MODELS:
        raise InputError(
            f"{str(path)!r}: model {model.get('model')!r}: compressed retest "
            f"supports {', '.join(MODELS)}"
        )
    blob = Path(path).read_bytes()
    _, _, header_len, data_len = _PREFIX.unpack_from(blob)
    data = blob[_PREFIX.size + header_len : _PREFIX.size + header_len + data_len]
    weights, biases = {}, {}
    for entry in checked.header["tensors"]:
        name = entry["name"]
        layer, _, kind = name.removeprefix("net.").rpartition(".")
        if kind == "bias":
            biases[layer] = checked.state_dict[name].numpy().astype(np.float32)
        elif kind == "weight":
            weights[layer] = _weight(entry, data, checked.state_dict[name].numpy())
    mean = checked.state_dict["mean"].numpy().astype(np.float32)
    std = checked.state_dict["std"].numpy().astype(np.float32)
    return CompressedModel(
        model["model"],
        model["channels"],
        model["input_size"],
        model.get("adapt_mode", "resize"),
        mean,
        std,
        weights,
        biases,
        time.perf_counter() - started,
    )


def _weight(entry: dict, data: bytes, decoded: np.ndarray) -> Weight:
    """A weight as its kernel takes it; `decoded` (the reader's dense copy) where no kernel
    reads the stored form (int8 and raw tensors: their dense float32 values, and conv kernels,
    which the FFT needs whole)."""
    shape = tuple(entry["shape"])
    matrix = (shape[0], math.prod(shape[1:]))
    if entry["encoding"] != "shared":
        return Weight(shape, dense=decoded.reshape(matrix).astype(np.float32))
    p, sections = entry["params"], entry["sections"]
    storage = "<f2" if p["codebook"] == "float16" else "<f4"
    codebook = np.frombuffer(_section(data, sections, "codebook"), storage).astype(np.float32)
    width = huffman.fixed_width(p["k"])
    if p["layout"] == "sparse":
        gaps = _stream(data, p, sections, "gaps", p["entries"])
        values = _stream(data, p, sections, "values", p["entries"])
        weight = Weight(shape, csr=sparse_linear.from_relative(gaps, values, matrix, codebook))
    else:
        values = _stream(data, p, sections, "values", math.prod(shape))
        dtype = np.uint8 if width <= 8 else np.uint16
        weight = Weight(shape, assignments=values.astype(dtype).reshape(matrix), codebook=codebook)
    if len(shape) > 2:  # a conv kernel: the FFT transforms it whole, so decode it once here
        dense = weight.csr.dense() if weight.csr else codebook[weight.assignments]
        return Weight(shape, dense=dense)
    return weight


def _section(data: bytes, sections: dict, key: str) -> bytes:
    offset, length = sections[key]
    return data[offset : offset + length]


def _stream(data: bytes, params: dict, sections: dict, key: str, count: int) -> np.ndarray:
    spec, blob = params["streams"][key], _section(data, sections, key)
    if spec["coding"] == "fixed":
        return huffman.unpack_fixed(blob, spec["width"], count)
    code = huffman.HuffmanCode.from_bytes(blob)
    stream = np.frombuffer(code.data, np.uint8)
    return huffman_decode.huffman_decode(code.lengths, stream, code.count, code.nbits)


@dataclass(frozen=True)
class CompressedScore:
    """Test-set result of one candidate scored from its compressed form."""

    path: str
    correct: int
    total: int
    device: str  # cpu | cuda:<id>
    decode_seconds: float
    score_seconds: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def logits(model: CompressedModel, split: Split, xp: ModuleType = np) -> np.ndarray:
    """(N, classes) float32 logits of the whole split, batch by batch on `xp`'s device."""
    parts = []
    for pixels, _ in pixel_batches(
        split, model.channels, model.input_size, model.adapt_mode, BATCH
    ):
        parts.append(dispatch.to_host(model.logits(xp.asarray(pixels.numpy()))))
    return np.concatenate(parts)


def _score_one(path: str, split: Split, device: str, index: int) -> CompressedScore:
    model = load_compressed(path)
    started = time.perf_counter()
    if device == "cpu":
        predicted, where = logits(model, split).argmax(1), "cpu"
    else:
        import cupy

        gpu = index % cupy.cuda.runtime.getDeviceCount()
        with cupy.cuda.Device(gpu):
            stream = cupy.cuda.Stream(non_blocking=True)
            with stream:
                predicted = logits(model.to(cupy), split, cupy).argmax(1)
            stream.synchronize()
        where = f"cuda:{gpu}"
    correct = int(np.sum(predicted == split.labels.numpy()))
    return CompressedScore(
        str(path),
        correct,
        len(split.labels),
        where,
        model.decode_seconds,
        time.perf_counter() - started,
    )


def score_candidates(
    paths: list[str | Path],
    dataset: str,
    data_dir: str | None = None,
    device: str = "auto",
    workers: int | None = None,
) -> list[CompressedScore]:
    """Test-set accuracy of every candidate `.sdc`, `workers` at a time (default: all).
    `device` auto takes the GPU when CuPy sees one, else the CPU."""
    if device not in DEVICES:
        raise InputError(f"device={device!r}: expected one of {', '.join(DEVICES)}")
    if device == "auto":
        device = "cuda" if dispatch.cuda_available() else "cpu"
    elif device == "cuda" and not dispatch.cuda_available():
        raise InputError("device='cuda' but CuPy is not installed or sees no GPU")
    test = load_dataset(dataset, data_dir).test
    with ThreadPoolExecutor(max_workers=workers or max(1, len(paths))) as pool:
        futures = [pool.submit(_score_one, str(p), test, device, i) for i, p in enumerate(paths)]
        return [f.result() for f in futures]
