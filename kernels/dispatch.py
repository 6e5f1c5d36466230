"""Where a kernel runs: on the device its input lives on (the one dispatch rule of `kernels/`).

NumPy arrays run the kernel's CPU path; CuPy arrays run its CUDA source (the `.cu` file beside
the module, compiled by `cupy.RawModule` on first use) on the arrays' device. CuPy is imported
only once a CuPy array has been seen, which means whoever made it had imported CuPy already, so
`import kernels` works without CuPy and never initializes CUDA.

    xp = array_module(x, w)                   # numpy or cupy, refusing a mix
    fn = cuda_function("sparse_linear.cu", "csr_linear_f32")   # only on a GPU path
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

KERNEL_DIR = Path(__file__).resolve().parent
CUDA_SOURCES = (
    "sparse_linear.cu",
    "codebook_linear.cu",
    "int8_gemm.cu",
    "fft_conv.cu",
    "huffman_decode.cu",
)
NVRTC_OPTIONS = ("--std=c++14",)  # no fast-math: int8 requantization must round like NumPy

Array = Any  # numpy.ndarray or cupy.ndarray (CuPy is optional, so no static type for it)


class KernelInputError(ValueError):
    """Arrays a kernel cannot take: wrong shapes or dtypes, or NumPy and CuPy mixed."""


def is_cupy(array: object) -> bool:
    """True for a CuPy array, found without importing CuPy."""
    return type(array).__module__.split(".")[0] == "cupy"


def on_gpu(*arrays: object) -> bool:
    """Whether the (non-None) arrays live on a GPU; a mix of devices raises KernelInputError."""
    kinds = {is_cupy(a) for a in arrays if a is not None}
    if len(kinds) > 1:
        raise KernelInputError("arrays mix NumPy and CuPy: move them to one device first")
    return kinds == {True}


def array_module(*arrays: object) -> ModuleType:
    """numpy, or cupy when the arrays are CuPy arrays."""
    if on_gpu(*arrays):
        import cupy

        return cupy
    return np


def cuda_available() -> bool:
    """Whether CuPy is installed and sees a GPU. Call it only when about to use one: asking
    the driver for its devices is the first CUDA call of the process."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CUDARuntimeError without a driver or a device
        return False


def cuda_function(source: str, name: str) -> Callable:
    """Kernel `name` of `kernels/<source>`, compiled once per device."""
    import cupy

    return _module(source, cupy.cuda.Device().id).get_function(name)


@functools.cache
def _module(source: str, device: int) -> Any:
    import cupy

    code = (KERNEL_DIR / source).read_text()
    return cupy.RawModule(code=code, options=NVRTC_OPTIONS)


def grid(total: int, block: int) -> int:
    """Blocks of `block` threads that cover `total` items."""
    return max(1, -(-total // block))


def synchronize(*arrays: object) -> None:
    """Wait for the GPU work on the arrays' device (nothing to wait for on the CPU)."""
    if on_gpu(*arrays):
        import cupy

        cupy.cuda.get_current_stream().synchronize()


def median_seconds(fn: Callable[[], object], repeat: int = 20, warmup: int = 3) -> float:
    """Median wall time of `fn()`; GPU work is waited for inside each timing."""
    for _ in range(warmup):
        synchronize(fn())
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        synchronize(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def to_host(array: Array) -> np.ndarray:
    """A NumPy copy of a CuPy array; a NumPy array as it is."""
    return array.get() if is_cupy(array) else np.asarray(array)


def check_2d(name: str, array: Array, columns: int | None = None) -> None:
    if array.ndim != 2 or (columns is not None and array.shape[1] != columns):
        want = f"(rows, {columns})" if columns is not None else "2-D"
        raise KernelInputError(f"{name} must be {want}, got shape {tuple(array.shape)}")
