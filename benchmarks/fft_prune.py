"""Frequency-domain (DCT-II) pruning vs the same sparsity in the spatial domain, on MNIST LeNet-5.

    SIGDL_DATA=../shared/datasets flock /tmp/sigdl-cpu.lock .venv/bin/python \\
        benchmarks/fft_prune.py [--only fft-prune-lenet-5 ...] [--table]

Compresses the dense LeNet-5 checkpoint of `benchmarks/baselines.py` (not retrained here)
through the real CLI (`sigdl compress ... --json`) with six recipes in three pairs that differ
only in the domain the conv kernels are pruned in (same sparsities, codebook bits, rounds and
epochs):
- `fft-prune-lenet-5` (built-in): conv frequency-pruned, fc magnitude-pruned, share, Huffman;
  its control `benchmarks/recipes/spatial-prune-lenet-5.yaml`.
- `benchmarks/recipes/fft-prune-conv-lenet-5.yaml`: only the convs (fc left dense float32);
  its control `spatial-prune-conv-lenet-5.yaml`; and the `-hard-` pair: the convs alone pruned
  to 80/97% instead of 50/94%.
Size is the `.sdc` file's bytes on disk against 4 bytes per dense parameter (and the conv
weights' own bytes in it); accuracy is the decoded `model.onnx` under ONNX Runtime on the full
test set, against the dense checkpoint's. Writes benchmarks/results/fft_prune.{json,md}.
"""

from __future__ import annotations

import argparse
import json

from common import ROOT, WORK, load, merge, sigdl, write_table

BASELINE = WORK / "baselines" / "lenet-5-mnist"
RECIPES = ROOT / "benchmarks" / "recipes"
# name -> (recipe argument, domain of the conv pruning, what the fc layers get, and for a
# spatial control the frequency-domain run it controls)
RUNS = {
    "fft-prune-lenet-5": ("fft-prune-lenet-5", "frequency (DCT-II)", "prune + share", None),
    "spatial-prune-lenet-5": (
        str(RECIPES / "spatial-prune-lenet-5.yaml"), "spatial", "prune + share",
        "fft-prune-lenet-5",
    ),
    "fft-prune-conv-lenet-5": (
        str(RECIPES / "fft-prune-conv-lenet-5.yaml"), "frequency (DCT-II)", "dense float32", None,
    ),
    "spatial-prune-conv-lenet-5": (
        str(RECIPES / "spatial-prune-conv-lenet-5.yaml"), "spatial", "dense float32",
        "fft-prune-conv-lenet-5",
    ),
    "fft-prune-conv-hard-lenet-5": (
        str(RECIPES / "fft-prune-conv-hard-lenet-5.yaml"), "frequency (DCT-II)", "dense float32",
        None,
    ),
    "spatial-prune-conv-hard-lenet-5": (
        str(RECIPES / "spatial-prune-conv-hard-lenet-5.yaml"), "spatial", "dense float32",
        "fft-prune-conv-hard-lenet-5",
    ),
}  # fmt: skip
CONVS = ("net.conv1.weight", "net.conv2.weight")


def run(name: str) -> dict:
    if not (BASELINE / "model.json").is_file():
        raise SystemExit(f"no baseline checkpoint at {BASELINE}: run benchmarks/baselines.py")
    dense = json.loads((BASELINE / "report.json").read_text())["metrics"]["onnx_test_accuracy"]
    recipe, domain, fc, _ = RUNS[name]
    out = WORK / "fft_prune" / name
    args = ["compress", str(BASELINE), "--recipe", recipe, "--out", str(out)]
    report = sigdl(*args, env={"SIGDL_HOME": str(WORK / "home")})
    m = report["metrics"]
    sizes = {t["name"]: t for t in report["sizes"]["tensors"]}
    convs = {
        key: {
            "encoding": sizes[key]["encoding"],
            "sdc_bytes": sizes[key]["compressed_bytes"],
            "dense_bytes": sizes[key]["dense_bytes"],
        }
        for key in CONVS
    }
    sparsity = _conv_sparsity(report)
    epochs = sum(_epochs(row) for row in report["ladder"])
    return {
        "recipe": name, "domain": domain, "fc": fc,
        "command": "sigdl " + " ".join(args), "recipe_digest": report["recipe_digest"],
        "parameters": m["parameters"], "sdc_bytes": m["compressed_bytes"], "ratio": m["ratio"],
        "conv": convs, "conv_sdc_bytes": sum(c["sdc_bytes"] for c in convs.values()),
        "conv_sparsity": sparsity, "epochs": epochs,
        "dense_onnx_accuracy": dense, "compressed_onnx_accuracy": m["onnx_test_accuracy"],
        "change_points": 100 * (m["onnx_test_accuracy"] - dense),
        "wall_s": report["_wall_s"],
        "ladder": [{"step": r["step"], "accuracy": r["accuracy"],
                    "estimated_ratio": r["estimated_ratio"], "seconds": r["seconds"]}
                   for r in report["ladder"]],
        "kept_by_frequency": {k: v["kept_by_frequency"]
                              for k, v in report.get("spectral", {}).items()},
    }  # fmt: skip


def _conv_sparsity(report: dict) -> dict[str, float]:
    """Each conv layer's pruned fraction, of its DCT coefficients or of its weights."""
    if report.get("spectral"):
        return {name: s["sparsity"] for name, s in report["spectral"].items()}
    for row in report["ladder"]:
        if row["step"] == "prune" and "conv1" in row["rounds"][-1]["sparsity"]:
            return row["rounds"][-1]["sparsity"]
    return {}


def _epochs(row: dict) -> int:
    rounds = sum(r.get("epochs", 0) for r in row.get("rounds", []))
    return rounds + row.get("epochs", 0) + row.get("share_epochs", 0)


def table(doc: dict) -> None:
    rows, convs, freq = [], [], []
    for r in doc["rows"].values():
        sparsity = ", ".join(f"{k} {v:.1%}" for k, v in r["conv_sparsity"].items())
        rows.append([
            r["recipe"], r["domain"], r["fc"], sparsity, f"{4 * r['parameters']:,}",
            f"{r['sdc_bytes']:,}", f"**{r['ratio']:.1f}x**",
            f"{100 * r['dense_onnx_accuracy']:.2f}%", f"{100 * r['compressed_onnx_accuracy']:.2f}%",
            f"{r['change_points']:+.2f}", r["epochs"], f"{r['wall_s'] / 60:.1f}",
            f"`{r['command']}`",
        ])  # fmt: skip
        # a spatial row names the frequency-domain run it controls
        twin = RUNS.get(r["recipe"], (None,) * 4)[3]
        fft = doc["rows"].get(twin) if twin else None
        if fft is not None:
            convs.append([
                f"{r['recipe']} vs {twin}", f"{r['conv_sdc_bytes']:,}",
                f"{fft['conv_sdc_bytes']:,}", f"{fft['conv_sdc_bytes'] / r['conv_sdc_bytes']:.2f}",
                f"{100 * r['compressed_onnx_accuracy']:.2f}%",
                f"{100 * fft['compressed_onnx_accuracy']:.2f}%",
                f"{fft['change_points'] - r['change_points']:+.2f}",
            ])  # fmt: skip
        for layer, grid in r.get("kept_by_frequency", {}).items():
            cells = " / ".join(" ".join(f"{v:.2f}" for v in row) for row in grid)
            freq.append([r["recipe"], layer, cells])
    notes = [
        f"Machine: {doc['machine']}. Dense: the `benchmarks/baselines.py` checkpoint "
        "(not retrained). Sizes: the `.sdc` file on disk vs 4 bytes per dense parameter; "
        "accuracy: the decoded `model.onnx` (plain Conv) under ONNX Runtime, full MNIST test set. "
        "Run: `SIGDL_DATA=../shared/datasets flock /tmp/sigdl-cpu.lock .venv/bin/python "
        "benchmarks/fft_prune.py`.",
        "",
        "## Conv weights alone: .sdc bytes of conv1 + conv2 and accuracy, spatial vs frequency",
        "",
        "| pair (spatial vs frequency) | spatial conv bytes | frequency conv bytes | "
        "frequency / spatial | spatial acc (ORT) | frequency acc (ORT) | accuracy difference "
        "(points, frequency - spatial) |",
        "|---|---|---|---|---|---|---|",
        *["| " + " | ".join(map(str, x)) + " |" for x in convs],
        "",
        "## Which DCT coefficients survive: fraction of kernels keeping coefficient (k, l), "
        "rows k = 0..4 (vertical frequency) separated by /, columns l = 0..4",
        "",
        "| recipe | layer | kept fraction by frequency |",
        "|---|---|---|",
        *["| " + " | ".join(map(str, x)) + " |" for x in freq],
    ]
    write_table(
        "fft_prune", "Frequency-domain pruning on MNIST LeNet-5: .sdc size and decoded accuracy",
        ["recipe", "conv pruned in", "fc layers", "conv sparsity", "dense bytes", ".sdc bytes",
         "ratio", "dense acc (ORT)", "compressed acc (ORT)", "change (points)",
         "retrain epochs", "wall min", "command"],
        rows, "\n".join(notes),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(RUNS), help="recipes to (re)run")
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    args = parser.parse_args()
    if args.table:
        table(load("fft_prune"))
        return
    for name in args.only or list(RUNS):
        row = run(name)
        print(
            f"{name}: {row['ratio']:.1f}x ({row['sdc_bytes']:,} B, conv {row['conv_sdc_bytes']:,}"
            f" B), {100 * row['dense_onnx_accuracy']:.2f}% -> "
            f"{100 * row['compressed_onnx_accuracy']:.2f}%",
            flush=True,
        )
        table(merge("fft_prune", name, row))


if __name__ == "__main__":
    main()
