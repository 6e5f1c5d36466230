"""Training throughput of LeNet-5 on MNIST: one process vs `--nproc 2` (torchrun + DDP, gloo).

    SIGDL_DATA=../shared/datasets python benchmarks/ddp_throughput.py [--epochs 2] [--repeats 2]

Both runs use the same global batch (64), so they take the same optimization steps. images/s
counts training steps only (the mean over epochs, each rank's share summed into global
images); wall s is the whole `sigdl train` command, including torchrun's start-up, per-epoch
evaluation, ONNX export and checks. Writes benchmarks/results/ddp_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics

from common import WORK, load, machine, merge, sigdl, write_table


def run(nproc: int, epochs: int, repeat: int) -> dict:
    out = WORK / "ddp" / f"nproc{nproc}-{repeat}"
    args = [
        "train",
        "--model",
        "lenet-5",
        "--dataset",
        "mnist",
        "--epochs",
        str(epochs),
        "--nproc",
        str(nproc),
        "--out",
        str(out),
    ]
    report = sigdl(*args, env={"SIGDL_MLFLOW_TRACKING_URI": "off"})
    return {
        "images_per_s": report["metrics"]["images_per_s"],
        "wall_s": report["_wall_s"],
        "test_accuracy": report["metrics"]["test_accuracy"],
        "command": "sigdl " + " ".join(args),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    args = parser.parse_args()
    if args.table:
        table(load("ddp_throughput"))
        return
    doc = None
    for nproc in (1, 2):
        runs = [run(nproc, args.epochs, r) for r in range(args.repeats)]
        row = {
            "nproc": nproc,
            "epochs": args.epochs,
            "runs": runs,
            "images_per_s_median": statistics.median(r["images_per_s"] for r in runs),
            "wall_s_median": statistics.median(r["wall_s"] for r in runs),
            "command": runs[0]["command"],
        }
        print(
            f"nproc {nproc}: {row['images_per_s_median']:.0f} img/s, "
            f"{row['wall_s_median']:.1f} s wall"
        )
        doc = merge("ddp_throughput", f"nproc={nproc}", row)
    table(doc)


def table(doc: dict) -> None:
    base = doc["rows"]["nproc=1"]["images_per_s_median"]
    rows = [
        [
            r["nproc"],
            r["epochs"],
            f"{r['images_per_s_median']:.0f}",
            f"{r['images_per_s_median'] / base:.2f}x",
            f"{r['wall_s_median']:.1f}",
            " / ".join(f"{100 * x['test_accuracy']:.2f}%" for x in r["runs"]),
            f"`{r['command']}`",
        ]
        for r in doc["rows"].values()
    ]
    write_table(
        "ddp_throughput",
        "LeNet-5 training throughput on MNIST, 1 vs 2 processes",
        [
            "nproc",
            "epochs",
            "images/s (median)",
            "vs 1 process",
            "wall s (median)",
            "test acc per run",
            "command",
        ],
        rows,
        f"Machine: {machine()}. Run: `make bench-ddp`. One process already keeps both cores "
        "busy with intra-op threads; two ranks get one thread each and add a gloo all-reduce "
        "of LeNet-5's 431,080 gradients after each of the 937 steps per epoch, so on this "
        "machine data parallelism is slower. It pays off with more cores or GPUs per node.",
    )


if __name__ == "__main__":
    main()
