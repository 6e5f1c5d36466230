"""Kernels for compressed models, each a CUDA source beside a NumPy reference (llm.c style).

| module | computes | CUDA source |
| --- | --- | --- |
| `sparse_linear` | x @ W.T + b, W as CSR (from .sdc relative indices) | sparse_linear.cu |
| `codebook_linear` | x @ codebook[A].T + b from the index matrix A | codebook_linear.cu |
| `int8_gemm` | int8 x int8, int32 sums, float or fixed-point requantization | int8_gemm.cu |
| `fft_conv` | conv2d by FFT, full transform or overlap-add | fft_conv.cu + cuFFT |
| `huffman_decode` | canonical Huffman decoding of .sdc streams | huffman_decode.cu |

Each module has `reference(...)`, the kernel itself (NumPy in: the CPU path; CuPy in: the
CUDA kernel, see `kernels.dispatch`), `validate(...)` and `benchmark(...)`. Importing this
package imports NumPy only: no CuPy, no CUDA initialization.
"""

from kernels import codebook_linear, dispatch, fft_conv, huffman_decode, int8_gemm, sparse_linear

__all__ = [
    "codebook_linear",
    "dispatch",
    "fft_conv",
    "huffman_decode",
    "int8_gemm",
    "sparse_linear",
]
