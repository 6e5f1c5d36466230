"""What the gRPC services cost: retest through RetestService vs in-process, and throughput.

    SIGDL_DATA=../shared/datasets flock /tmp/sigdl-cpu.lock \\
        .venv/bin/python benchmarks/grpc_services.py [--repeats 3] [--jobs-per-client 4]

1. Overhead. Two retest jobs (LeNet-5 on the 10,000 MNIST test images: jetson-tx2 fp32, and
   arm-cortex-a53 int8 with calibration), `--repeats` times each way:
   - in-process: `run_retest` in a fresh Python that has already imported the stage (what a
     service worker is: a process forked with the stage imported), timed around the call;
     also the same call repeated in one warm process, for reference;
   - service: RetestService in a `StageServer` on 127.0.0.1 (the server `sigdl serve` runs),
     the job submitted with the generated client, watched to its end and its outputs fetched
     into a local folder: timed from Submit to the fetched files.
   Overhead = (service - in-process) / in-process, on medians.
2. Throughput. 8 client threads (a channel each) submit small retest jobs (LeNet-300-100 on
   digits' 360 test images) and wait for each, against one service with SIGDL_WORKERS=2; beside
   it the same jobs back to back in one warm process.

Writes benchmarks/results/services.{json,md}. Models come from benchmarks/results/.work (the
LeNet-5 MNIST baseline when `benchmarks/baselines.py` made one, else a 1-epoch training).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, WORK, merge, write_table

sys.path.insert(0, str(ROOT))

HOME = WORK / "services" / "home"
# the overhead's retest jobs: a short one (fp32 predictions) and one with int8 calibration
OVERHEAD_JOBS = {
    "fp32": {"target": "jetson-tx2", "precision": "fp32"},
    "int8": {"target": "arm-cortex-a53", "precision": "int8"},
}
SMALL_JOB = OVERHEAD_JOBS["fp32"]
CLIENTS = 8


def setup_environment() -> None:
    # the benchmark is its own user: its own SIGDL_HOME, no MLflow, no progress bars
    os.environ.update(SIGDL_HOME=str(HOME), SIGDL_MLFLOW_TRACKING_URI="off", SIGDL_PROGRESS="0")


def checkpoint(model: str, dataset: str) -> Path:
    """A trained checkpoint: the baseline's when there is one, else a quick training."""
    baseline = WORK / "baselines" / f"{model}-{dataset}"
    if (baseline / "model.onnx").is_file():
        return baseline
    out = WORK / "services" / f"{model}-{dataset}"
    if not (out / "model.onnx").is_file():
        from services.training.stage import run_training
        from sigdl.core.training import TrainConfig

        cfg = TrainConfig(model, dataset, epochs=1, max_train_samples=10_000)
        run_training(cfg, out)
    return out


def in_process_cold(model: Path, dataset: str, options: dict, repeats: int) -> list[float]:
    """Seconds of `run_retest` in fresh processes that imported the stage first."""
    code = (
        "import json, sys, time, tempfile\n"
        "from services.retest.stage import run_retest\n"
        "with tempfile.TemporaryDirectory() as out:\n"
        "    t = time.perf_counter()\n"
        f"    run_retest({str(model)!r}, out=out, dataset={dataset!r}, **{options!r})\n"
        "    print(json.dumps(time.perf_counter() - t))\n"
    )
    times = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, check=True)  # fmt: skip
        times.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return times


def in_process_warm(model: Path, dataset: str, options: dict, repeats: int) -> list[float]:
    from services.retest.stage import run_retest

    times = []
    for n in range(repeats + 1):  # the first call pays data loading; not counted
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            run_retest(str(model), out=Path(out), dataset=dataset, **options)
            if n:
                times.append(time.perf_counter() - started)
    return times


def through_service(address: str, model: Path, dataset: str, options: dict) -> dict:
    """One job through RetestService, outputs fetched; seconds and where they went."""
    from services.grpc_common.client import run_remote
    from services.protos.sigdl.v1 import common_pb2
    from services.retest.client import RetestClient, retest_request

    request = retest_request(model, dataset=dataset, **options)
    with RetestClient(address) as client, tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run_remote(client, request, out)
        wall = time.perf_counter() - started
        job = client.submit(request)  # run_remote set a request id: this is the job it ran
    assert job.state == common_pb2.SUCCEEDED, job.error
    return {"wall_s": wall, "queue_s": job.started_at - job.created_at,
            "worker_s": job.finished_at - job.started_at}  # fmt: skip


def start_server(workers: int):
    from services.grpc_common.server import ServerConfig, StageServer

    server = StageServer(["retest"], ServerConfig(port=0, workers=workers, queue_size=64))
    port = server.start()
    if not server.wait_ready(60):
        raise SystemExit("RetestService never became SERVING")
    return server, f"127.0.0.1:{port}"


def overhead(options: dict, repeats: int) -> dict:
    model = checkpoint("lenet-5", "mnist")
    warm = in_process_warm(model, "mnist", options, repeats)
    server, address = start_server(workers=1)
    cold, runs = [], []
    try:
        through_service(address, model, "mnist", options)  # warm-up: the forkserver's imports
        for _ in range(repeats):  # interleaved: a change in the machine's load hits both
            cold += in_process_cold(model, "mnist", options, 1)
            runs.append(through_service(address, model, "mnist", options))
    finally:
        server.stop(grace_s=0)
    service = statistics.median(r["wall_s"] for r in runs)
    base = statistics.median(cold)
    return {
        "job": f"retest {model.name} on mnist (10,000 images), {options}",
        "repeats": repeats, "in_process_s": cold, "in_process_warm_s": warm,
        "service_runs": runs, "service_median_s": service, "in_process_median_s": base,
        "in_process_warm_median_s": statistics.median(warm),
        "worker_median_s": statistics.median(r["worker_s"] for r in runs),
        "overhead_s": service - base, "overhead_pct": 100 * (service - base) / base,
    }  # fmt: skip


def throughput(jobs_per_client: int) -> dict:
    from services.retest.client import RetestClient, retest_request

    model = checkpoint("lenet-300-100", "digits")
    sequential = in_process_warm(model, "digits", SMALL_JOB, CLIENTS)
    server, address = start_server(workers=2)
    latencies: list[float] = []
    lock = threading.Lock()

    def client_loop() -> None:
        with RetestClient(address) as client:
            for _ in range(jobs_per_client):
                started = time.perf_counter()
                request = retest_request(model, dataset="digits", **SMALL_JOB)
                job = client.wait(client.submit(request).id)
                assert job.error == "", job.error
                with lock:
                    latencies.append(time.perf_counter() - started)

    try:
        through_service(address, model, "digits", SMALL_JOB)  # warm-up
        started = time.perf_counter()
        threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    finally:
        server.stop(grace_s=0)
    latencies.sort()
    return {
        "job": f"retest {model.name} on digits (360 images), {SMALL_JOB}",
        "clients": CLIENTS, "workers": 2, "jobs": len(latencies), "wall_s": wall,
        "jobs_per_s": len(latencies) / wall,
        "latency_p50_s": latencies[len(latencies) // 2],
        "latency_p90_s": latencies[int(0.9 * (len(latencies) - 1))],
        "in_process_job_s": statistics.median(sequential),
        "in_process_jobs_per_s": 1 / statistics.median(sequential),
    }  # fmt: skip


def table(doc: dict) -> None:
    rows = []
    for name in OVERHEAD_JOBS:
        o = doc["rows"].get(f"overhead-{name}")
        if o is None:
            continue
        rows.append([
            "overhead", o["job"], f"{o['in_process_median_s']:.2f} s (fresh process), "
            f"{o['in_process_warm_median_s']:.2f} s (warm)",
            f"{o['service_median_s']:.2f} s (worker {o['worker_median_s']:.2f} s)",
            f"**{o['overhead_pct']:+.1f}%** ({o['overhead_s'] * 1000:+.0f} ms)",
        ])  # fmt: skip
    t = doc["rows"]["throughput"]
    rows.append([
        "throughput", t["job"], f"{t['in_process_jobs_per_s']:.2f} jobs/s (one process)",
        f"{t['jobs_per_s']:.2f} jobs/s ({t['clients']} clients, {t['workers']} workers)",
        f"latency p50 {t['latency_p50_s']:.2f} s, p90 {t['latency_p90_s']:.2f} s",
    ])  # fmt: skip
    notes = (
        f"Machine: {doc['machine']} (2 cores shared with other work: compare within a run). "
        "Run: `SIGDL_DATA=../shared/datasets flock /tmp/sigdl-cpu.lock .venv/bin/python "
        "benchmarks/grpc_services.py`. In-process is `run_retest` timed around the call in a fresh "
        "process that had imported the stage (a service worker is such a process, forked), "
        "interleaved with the service runs; `warm` repeats the call in one process (data set "
        "and sessions cached), for reference. The service time runs from Submit to the "
        "outputs fetched into a local folder; `worker` is the job's time in its worker process."
    )
    header = ["measure", "job", "in-process", "through the service", "result"]
    write_table("services", "gRPC services: overhead and throughput", header, rows, notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs-per-client", type=int, default=4)
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    args = parser.parse_args()
    setup_environment()
    if not args.table:
        for name, options in OVERHEAD_JOBS.items():
            merge("services", f"overhead-{name}", overhead(options, args.repeats))
        merge("services", "throughput", throughput(args.jobs_per_client))
    doc = json.loads((WORK.parent / "services.json").read_text())
    table(doc)
    print((WORK.parent / "services.md").read_text())


if __name__ == "__main__":
    main()
