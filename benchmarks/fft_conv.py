"""Direct vs FFT convolution on this machine, per conv shape and batch, beside the cost rule.

    flock /tmp/sigdl-cpu.lock python benchmarks/fft_conv.py [--batches 1 32] [--table]

Times `F.conv2d` (oneDNN) and `fft_conv2d` (the `fft-conv` step's kernel, spectrum precomputed
as in eval mode) on LeNet-5's two convolutions, AlexNet's 11x11 and 5x5 and two VGG-16 3x3
layers, one after the other, the median of a few runs each; then shows what the step's cost rule
(services/compression/steps/fft_conv.py) chose and whether the measured times agree. It also
fits each path's seconds per flop over all rows (the rule's two constants come from that fit).
Writes benchmarks/results/fft_conv.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import load, merge, write_table

from services.compression.steps import fft_conv
from services.compression.steps.fft_conv import ConvShape, fft_conv2d, fft_size, kernel_spectrum

# name -> (in channels, out channels, input H=W before padding, kernel, stride, padding)
SHAPES = {
    "lenet5.conv1": (1, 20, 28, 5, 1, 0),
    "lenet5.conv2": (20, 50, 12, 5, 1, 0),
    "alexnet.conv1 11x11": (3, 64, 224, 11, 4, 2),
    "alexnet.conv2 5x5": (64, 192, 27, 5, 1, 2),
    "vgg16.conv3_1 3x3": (128, 256, 56, 3, 1, 1),
    "vgg16.conv5_1 3x3": (512, 512, 14, 3, 1, 1),
}
BUDGET_S = 0.6  # per path and row: enough runs for a stable median, few for the big ones


def timed(fn, budget: float = BUDGET_S) -> float:
    """Median seconds of `fn()`, after one warm-up, over as many runs as fit `budget` (3-15)."""
    fn()
    first = time.perf_counter()
    fn()
    one = time.perf_counter() - first
    times = [one]
    for _ in range(max(2, min(14, int(budget / max(one, 1e-6))))):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def measure(name: str, batch: int) -> dict:
    c, o, size, k, s, p = SHAPES[name]
    x = torch.rand(batch, c, size, size)  # (B, C, H, W)
    w = torch.randn(o, c, k, k) / (c * k * k) ** 0.5  # (O, C, k, k)
    b = torch.zeros(o)
    grid = (fft_size(size + 2 * p),) * 2
    spectrum = kernel_spectrum(w, grid)  # precomputed, as FFTConv2d in eval mode
    ref = F.conv2d(x, w, b, s, p)
    got = fft_conv2d(x, w, b, (s, s), (p, p), spectrum)
    error = float((ref - got).abs().max() / ref.abs().max())
    direct = timed(lambda: F.conv2d(x, w, b, s, p))
    fft = timed(lambda: fft_conv2d(x, w, b, (s, s), (p, p), spectrum))
    shape = ConvShape(batch, c, o, (size + 2 * p,) * 2, (k, k), (s, s))
    return {
        "shape": name,
        "batch": batch,
        "direct_s": direct,
        "fft_s": fft,
        "direct_flops": shape.direct_flops(),
        "fft_flops": shape.fft_flops(),
        "max_rel_error": error,
    }


def judge(row: dict) -> dict:
    """The cost rule's choice for this row (with the constants now in the code), and whether
    the measured times agree."""
    c, o, size, k, s, p = SHAPES[row["shape"]]
    shape = ConvShape(row["batch"], c, o, (size + 2 * p,) * 2, (k, k), (s, s))
    choice = "fft" if shape.fft_pays() else "direct"
    faster = "fft" if row["fft_s"] < row["direct_s"] else "direct"
    return {**row, "rule": choice, "faster": faster, "right": choice == faster}


def fit(rows: list[dict]) -> dict:
    """Each path's seconds per flop, the median over rows (the rule's constants)."""
    return {
        "direct_seconds_per_flop": _median(rows, "direct"),
        "fft_seconds_per_flop": _median(rows, "fft"),
    }


def _median(rows: list[dict], path: str) -> float:
    return statistics.median(r[f"{path}_s"] / r[f"{path}_flops"] for r in rows)


def table(doc: dict) -> None:
    rows = [judge(r) for r in doc["rows"].values()]
    rows.sort(key=lambda r: (list(SHAPES).index(r["shape"]), r["batch"]))
    constants = (fft_conv.DIRECT_SECONDS_PER_FLOP, fft_conv.FFT_SECONDS_PER_FLOP)
    fitted = fit(rows)
    body = [
        [
            r["shape"], r["batch"], f"{1e3 * r['direct_s']:.3f}", f"{1e3 * r['fft_s']:.3f}",
            f"{r['direct_s'] / r['fft_s']:.2f}x", r["rule"], "yes" if r["right"] else "**no**",
            f"{r['max_rel_error']:.1e}",
        ]
        for r in rows
    ]  # fmt: skip
    right = sum(r["right"] for r in rows)
    notes = (
        f"Median of a few runs per path, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}. FFT: real 2-D FFTs on a 2^a3^b5^c7^d grid covering the padded "
        "input, kernel spectra precomputed, channel sum in the frequency domain (a complex GEMM "
        "per bin), stride by subsampling. Rule: FFT where fft_flops x "
        f"{constants[1]:.3g} s < direct_flops x {constants[0]:.3g} s; right on {right} of "
        f"{len(rows)} rows. Fitted over these rows: direct "
        f"{fitted['direct_seconds_per_flop']:.3g} s/flop, FFT "
        f"{fitted['fft_seconds_per_flop']:.3g} s/flop. max rel error: |fft - direct| / "
        "max|direct|."
    )
    header = ["conv", "batch", "direct ms", "FFT ms", "FFT speedup", "rule chose", "right",
              "max rel error"]  # fmt: skip
    write_table("fft_conv", "Direct vs FFT convolution on this machine", header, body, notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 32])
    parser.add_argument("--only", nargs="*", choices=list(SHAPES), help="shapes to (re)run")
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    args = parser.parse_args()
    if not args.table:
        for name in args.only or SHAPES:
            for batch in args.batches:
                row = measure(name, batch)
                merge("fft_conv", f"{name}@{batch}", row)
                times = f"direct {row['direct_s']:.5f}s, fft {row['fft_s']:.5f}s"
                print(f"{name} batch {batch}: {times}")
    table(load("fft_conv"))


if __name__ == "__main__":
    main()
