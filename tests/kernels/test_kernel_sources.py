"""Every kernel's CUDA source compiles with nvcc, every module keeps the llm.c shape, and the
dispatch rule refuses mixed devices. GPU runs of every kernel are in test_kernel_gpu.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import kernels
from kernels import dispatch

MODULES = ["sparse_linear", "codebook_linear", "int8_gemm", "fft_conv", "huffman_decode"]
NVCC_ARCH = "sm_75"  # the oldest architecture nvcc 13 still targets (Turing)


def test_every_module_has_its_source_reference_validate_and_benchmark():
    sources = sorted(p.name for p in dispatch.KERNEL_DIR.glob("*.cu"))
    assert sources == sorted(dispatch.CUDA_SOURCES) == sorted(f"{m}.cu" for m in MODULES)
    for name in MODULES:
        module = getattr(kernels, name)
        for function in (
            "reference",
            "validate",
            "benchmark",
            name if name != "fft_conv" else "conv2d",
        ):
            assert callable(getattr(module, function)), (name, function)


@pytest.mark.parametrize("source", dispatch.CUDA_SOURCES)
def test_cuda_source_compiles_to_ptx(source, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    out = tmp_path / (Path(source).stem + ".ptx")
    proc = subprocess.run(
        [
            nvcc,
            "--ptx",
            f"-arch={NVCC_ARCH}",
            "--std=c++14",
            "-Werror=all-warnings",
            str(dispatch.KERNEL_DIR / source),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    for name in _extern_kernels(source):
        assert f".entry {name}(" in text, name


def _extern_kernels(source: str) -> list[str]:
    text = (dispatch.KERNEL_DIR / source).read_text()
    return [
        line.split("void", 1)[1].split("(")[0].strip()
        for line in text.splitlines()
        if line.startswith('extern "C" __global__ void')
    ]


def test_numpy_input_runs_on_the_cpu_and_mixed_devices_are_refused():
    class FakeCupyArray:  # dispatch recognizes CuPy arrays by their module, without CuPy
        __module__ = "cupy._core.core"

    assert dispatch.array_module(np.zeros(2), None) is np
    assert not dispatch.on_gpu(np.zeros(2))
    assert dispatch.on_gpu(FakeCupyArray())
    with pytest.raises(dispatch.KernelInputError, match="mix NumPy and CuPy"):
        dispatch.on_gpu(np.zeros(2), FakeCupyArray())
