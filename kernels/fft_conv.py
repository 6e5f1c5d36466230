"""FFT convolution: conv2d (stride 1, zero padding) as transform, multiply, inverse transform.

Convolution in space is a product in frequency; for wide kernels or many channels the
transforms cost less than the sliding window (Mathieu, Henaff, LeCun, "Fast training of
convolutional networks through FFTs", ICLR 2014). Two ways by size:

- `full`: one transform of the whole (padded) image at (H + kh - 1, W + kw - 1);
- `overlap-add`: the image cut into L x L blocks, each transformed at a small fixed size
  T = L + k - 1 (a power of two) and the block outputs added where they overlap: less padding
  and less memory once the image is much larger than the kernel.

`method="auto"` takes `full` while the padded image side is at most 2 T, else overlap-add.
On CuPy arrays the transforms run in cuFFT (cupy.fft) and the channel sum at every frequency
in fft_conv.cu; on NumPy arrays in numpy.fft and a batched matmul.

    y = conv2d(x, w, bias, padding=2)   # (N, O, H', W'), like torch.nn.functional.conv2d
    validate(); benchmark(size=28)

Tolerance: float32 transforms: |y - y_ref| <= RTOL * (1 + max |x| * sum |w| of the channel).
"""

from __future__ import annotations

import numpy as np

from kernels.dispatch import (
    Array,
    KernelInputError,
    array_module,
    cuda_function,
    grid,
    median_seconds,
    on_gpu,
    to_host,
)

METHODS = ("auto", "full", "overlap-add")
RTOL = 1e-5  # see the module docstring


def block_fft(kh: int, kw: int) -> tuple[int, int]:
    """Transform size T of one overlap-add block per axis: a power of two >= 4 k, >= 16."""
    return tuple(max(16, 1 << (4 * k - 1).bit_length()) for k in (kh, kw))  # type: ignore[return-value]


def choose_method(height: int, width: int, kh: int, kw: int) -> str:
    """`full` while the padded image fits in two blocks per side, else `overlap-add`."""
    th, tw = block_fft(kh, kw)
    return "full" if height <= 2 * th and width <= 2 * tw else "overlap-add"


def check(x: Array, w: Array, padding: int) -> None:
    if x.ndim != 4 or w.ndim != 4 or x.shape[1] != w.shape[1]:
        raise KernelInputError(
            f"x (N, C, H, W) and w (O, C, kh, kw) needed, got {tuple(x.shape)} and {tuple(w.shape)}"
        )
    fits = all(x.shape[i] + 2 * padding >= w.shape[i] for i in (2, 3))
    if padding < 0 or not fits:
        raise KernelInputError(f"padding {padding}: the kernel must fit the padded image")


def reference(
    x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, padding: int = 0
) -> np.ndarray:
    """float64 numpy.fft full transform: (N, O, H + 2p - kh + 1, W + 2p - kw + 1)."""
    x = np.pad(np.asarray(x, np.float64), [(0, 0), (0, 0), (padding,) * 2, (padding,) * 2])
    w = np.asarray(w, np.float64)
    (hp, wp), (kh, kw) = x.shape[2:], w.shape[2:]
    size = (hp + kh - 1, wp + kw - 1)
    spectrum = np.einsum(
        "ncij,ocij->noij", np.fft.rfft2(x, size), np.fft.rfft2(w[..., ::-1, ::-1], size)
    )
    y = np.fft.irfft2(spectrum, size)[..., kh - 1 : hp, kw - 1 : wp]
    return y + (0.0 if bias is None else np.asarray(bias, np.float64)[:, None, None])


def conv2d(
    x: Array, w: Array, bias: Array | None = None, padding: int = 0, method: str = "auto"
) -> Array:
    """float32 cross-correlation like torch's conv2d (stride 1), on the device x lives on."""
    check(x, w, padding)
    if method not in METHODS:
        raise KernelInputError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    xp = array_module(x, w, bias)
    x = xp.asarray(x, dtype=xp.float32)
    w = xp.asarray(w, dtype=xp.float32)
    if padding:
        x = xp.pad(x, [(0, 0), (0, 0), (padding, padding), (padding, padding)])
    (hp, wp), (kh, kw) = x.shape[2:], w.shape[2:]
    if method == "auto":
        method = choose_method(hp, wp, kh, kw)
    full = _full(xp, x, w) if method == "full" else _overlap_add(xp, x, w)
    y = full[..., kh - 1 : hp, kw - 1 : wp]  # the positions where the kernel fits: "valid"
    return y + bias.reshape(-1, 1, 1) if bias is not None else xp.ascontiguousarray(y)


def _full(xp: object, x: Array, w: Array) -> Array:
    (hp, wp), (kh, kw) = x.shape[2:], w.shape[2:]
    return _transform_conv(xp, x, w, (hp + kh - 1, wp + kw - 1))  # (N, O, ...)


def _overlap_add(xp: object, x: Array, w: Array) -> Array:
    (n, c, hp, wp), (kh, kw) = x.shape, w.shape[2:]
    (th, tw) = block_fft(kh, kw)
    lh, lw = th - kh + 1, tw - kw + 1  # image pixels per block
    bh, bw = -(-hp // lh), -(-wp // lw)
    x = xp.pad(x, [(0, 0), (0, 0), (0, bh * lh - hp), (0, bw * lw - wp)])  # type: ignore[attr-defined]
    blocks = x.reshape(n, c, bh, lh, bw, lw).transpose(0, 2, 4, 1, 3, 5)  # (N, bh, bw, C, lh, lw)
    blocks = blocks.reshape(n * bh * bw, c, lh, lw)
    outs = _transform_conv(xp, blocks, w, (th, tw)).reshape(n, bh, bw, w.shape[0], th, tw)
    full = xp.zeros((n, w.shape[0], bh * lh + kh - 1, bw * lw + kw - 1), xp.float32)  # type: ignore[attr-defined]
    for i in range(bh):  # blocks overlap by k - 1 pixels: add them in place one by one
        for j in range(bw):
            full[:, :, i * lh : i * lh + th, j * lw : j * lw + tw] += outs[:, i, j]
    return full


def _transform_conv(xp: object, x: Array, w: Array, size: tuple[int, int]) -> Array:
    """Full linear convolution of every image with every kernel at transform `size`."""
    fft = xp.fft  # type: ignore[attr-defined]
    xf = fft.rfft2(x, size).astype(xp.complex64)  # (B, C, s0, s1 // 2 + 1)  # type: ignore[attr-defined]
    wf = fft.rfft2(w[..., ::-1, ::-1], size).astype(xp.complex64)  # (O, C, ...)  # type: ignore[attr-defined]
    b, c = xf.shape[:2]
    o, freq = wf.shape[0], xf.shape[2:]
    xs = xf.reshape(b, c, -1).transpose(2, 0, 1)  # (F, B, C)
    ws = wf.reshape(o, c, -1).transpose(2, 1, 0)  # (F, C, O)
    ys = _spectral_mac_gpu(xs, ws) if on_gpu(xs) else np.matmul(xs, ws)  # (F, B, O)
    y = fft.irfft2(ys.transpose(1, 2, 0).reshape(b, o, *freq), size)
    return y.astype(xp.float32)  # type: ignore[attr-defined]


def _spectral_mac_gpu(xs: Array, ws: Array) -> Array:
    import cupy

    xs, ws = cupy.ascontiguousarray(xs), cupy.ascontiguousarray(ws)
    (f, b, c), o = xs.shape, ws.shape[2]
    ys = cupy.empty((f, b, o), cupy.complex64)
    fn = cuda_function("fft_conv.cu", "spectral_mac")
    fn(
        (grid(f * b * o, 256),),
        (256,),
        (xs, ws, ys, np.int64(f), np.int32(b), np.int32(c), np.int32(o)),
    )
    return ys


def tolerance(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(O, 1, 1) bound on |y - reference| for float32 transforms."""
    return RTOL * (1.0 + np.abs(x).max() * np.abs(w).sum(axis=(1, 2, 3)))[:, None, None]


def example(
    batch: int = 2,
    channels: int = 3,
    outputs: int = 4,
    size: int = 28,
    kernel: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
    w = rng.standard_normal((outputs, channels, kernel, kernel)).astype(np.float32)
    return x, w, rng.standard_normal(outputs).astype(np.float32)


def validate(
    size: int = 28,
    kernel: int = 5,
    padding: int = 0,
    method: str = "auto",
    xp: object = np,
    seed: int = 0,
) -> float:
    """Max |error| / tolerance of conv2d on `xp`'s device against `reference` (<= 1)."""
    x, w, bias = example(size=size, kernel=kernel, seed=seed)
    move = xp.asarray  # type: ignore[attr-defined]
    got = to_host(conv2d(move(x), move(w), move(bias), padding, method))
    ratio = float(np.max(np.abs(got - reference(x, w, bias, padding)) / tolerance(x, w)))
    if not ratio <= 1.0:
        raise AssertionError(f"fft conv2d off by {ratio:.3g} x its tolerance")
    return ratio


def benchmark(
    batch: int = 1,
    channels: int = 20,
    outputs: int = 50,
    size: int = 12,
    kernel: int = 5,
    method: str = "auto",
    xp: object = np,
    repeat: int = 20,
) -> dict:
    """Seconds of this conv2d and of torch's direct conv2d (CPU) on the same layer."""
    import torch

    x, w, bias = example(batch, channels, outputs, size, kernel)
    xt, wt, bt = (torch.from_numpy(v) for v in (x, w, bias))
    dev = [xp.asarray(v) for v in (x, w, bias)]  # type: ignore[attr-defined]
    return {
        "kernel_s": median_seconds(lambda: conv2d(*dev, 0, method), repeat),
        "dense_torch_s": median_seconds(lambda: torch.conv2d(xt, wt, bt), repeat),
    }
