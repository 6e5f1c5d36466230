"""Dense baselines: LeNet-300-100 and LeNet-5 on MNIST and Fashion-MNIST, 20 epochs each.

    SIGDL_DATA=../shared/datasets python benchmarks/baselines.py [--only lenet-5:mnist ...]

Each run is the real CLI (`sigdl train ... --json`); accuracy is on the full 10,000-image test
set, for the PyTorch checkpoint and for the exported model.onnx under ONNX Runtime.
Writes benchmarks/results/baselines.{json,md}.
"""

from __future__ import annotations

from common import WORK, load, merge, pairs_to_run, sigdl, write_table

# Deep Compression (Han et al., ICLR 2016), Table 2/3: dense baselines' top-1 accuracy.
PAPER = {("lenet-300-100", "mnist"): 98.36, ("lenet-5", "mnist"): 99.20}
RUNS = [(m, d) for d in ("mnist", "fashion-mnist") for m in ("lenet-300-100", "lenet-5")]
EPOCHS = 20


def run(model: str, dataset: str) -> dict:
    out = WORK / "baselines" / f"{model}-{dataset}"
    args = [
        "train",
        "--model",
        model,
        "--dataset",
        dataset,
        "--epochs",
        str(EPOCHS),
        "--out",
        str(out),
    ]
    report = sigdl(*args, env={"SIGDL_HOME": str(WORK / "home")})
    m = report["metrics"]
    return {
        "model": model,
        "dataset": dataset,
        "command": "sigdl " + " ".join(args),
        "epochs": EPOCHS,
        "parameters": report["parameters"],
        "test_accuracy": m["test_accuracy"],
        "onnx_test_accuracy": m["onnx_test_accuracy"],
        "onnx_max_abs_diff": m["onnx_max_abs_diff"],
        "train_seconds": m["train_seconds"],
        "images_per_s": m["images_per_s"],
        "paper_accuracy": PAPER.get((model, dataset)),
        "config": report["config"],
    }


def table(doc: dict) -> None:
    rows = []
    for r in doc["rows"].values():
        paper = f"{r['paper_accuracy']:.2f}%" if r["paper_accuracy"] else "-"
        rows.append(
            [
                r["model"],
                r["dataset"],
                r["epochs"],
                f"{r['parameters']:,}",
                f"{100 * r['test_accuracy']:.2f}%",
                f"{100 * r['onnx_test_accuracy']:.2f}%",
                f"{r['onnx_max_abs_diff']:.1e}",
                paper,
                f"{r['train_seconds']:.0f}",
                f"`{r['command']}`",
            ]
        )
    write_table(
        "baselines",
        "Dense baselines (full test sets)",
        [
            "model",
            "data set",
            "epochs",
            "params",
            "PyTorch acc",
            "ONNX Runtime acc",
            "max abs logit diff",
            "Deep Compression",
            "train s",
            "command",
        ],
        rows,
        f"Machine: {doc['machine']}. Run: `make bench-train`. `train s` is the wall time of "
        "the training loop and depends on what else the 2 cores run: the recorded runs shared "
        "them with other jobs (lenet-5 on fashion-mnist heavily).",
    )


def main() -> None:
    todo = pairs_to_run(__doc__, RUNS)
    if todo is None:
        table(load("baselines"))
        return
    doc = None
    for model, dataset in todo:
        row = run(model, dataset)
        print(
            f"{model} {dataset}: {100 * row['test_accuracy']:.2f}% "
            f"(onnx {100 * row['onnx_test_accuracy']:.2f}%) in {row['train_seconds']:.0f} s"
        )
        doc = merge("baselines", f"{model}:{dataset}", row)
    if doc:
        table(doc)


if __name__ == "__main__":
    main()
