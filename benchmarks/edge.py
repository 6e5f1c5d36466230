"""What the edge agent costs: Predict latency against ONNX Runtime alone, and model swaps.

    SIGDL_DATA=../shared/datasets flock /tmp/sigdl-cpu.lock \\
        .venv/bin/python benchmarks/edge.py [--requests 2000] [--swaps 3]

Two LeNet-300-100 packages (1 epoch on digits, seeds 0 and 1) are signed and published to a
`file://` store; one `sigdl edge-agent` process (target arm-cortex-a53: ONNX Runtime pinned to
min(4 cores, this machine's)) follows the fleet on a loopback port, polling every 0.2 s.

1. Latency at batch 1: `--requests` sequential Predict calls through the generated gRPC client
   (client-side wall time, after 200 warm-up calls), against `session.run` on the same
   model.onnx in this process with the same thread count. Overhead = agent - direct, on p50.
   The agent's own p50/p99 (from its Status: parse, check, run, softmax) are shown beside.
2. Swaps under traffic: 2 client threads send Predict back to back while the fleet's `current`
   moves `--swaps` times (deploy v2, then rollbacks between v1 and v2). Per swap: the agent's
   load time (download, verify digests and signature, load and warm up the session), the time
   from the pointer moving to the first reply from the new version (includes up to one poll
   interval), and failed requests during the whole run (must be 0).

Writes benchmarks/results/edge.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from common import ROOT, WORK, merge, write_table

sys.path.insert(0, str(ROOT))

BENCH = WORK / "edge"
TARGET = "arm-cortex-a53"
POLL_S = 0.2
WARMUP = 200
TRAFFIC_THREADS = 2


def setup_environment() -> None:
    os.environ.update(SIGDL_HOME=str(BENCH / "home"), SIGDL_MLFLOW_TRACKING_URI="off",
                      SIGDL_PROGRESS="0")  # fmt: skip


def train(seed: int) -> Path:
    from services.training.stage import run_training
    from sigdl.core.training import TrainConfig

    out = BENCH / f"run-seed{seed}"
    if not (out / "model.onnx").is_file():
        run_training(TrainConfig(model="lenet-300-100", dataset="digits", epochs=1, seed=seed), out)
    return out


def percentiles(ms: list[float]) -> dict:
    p50, p99 = np.percentile(np.array(ms), [50, 99])
    return {"p50_ms": round(float(p50), 4), "p99_ms": round(float(p99), 4), "n": len(ms)}


def start_agent(store_root: Path, public_key: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "SIGDL_VERIFY_KEY": str(public_key), "SIGDL_AGENT_ID": "bench",
           "SIGDL_AGENT_POLL_S": str(POLL_S), "SIGDL_HOME": str(BENCH / "agent-home")}  # fmt: skip
    env.pop("SIGDL_SIGNING_KEY", None)
    cmd = [sys.executable, "-m", "sigdl.cli", "edge-agent", "--fleet", "bench", "--target",
           TARGET, "--store", str(store_root), "--port", str(port)]  # fmt: skip
    log = (BENCH / "agent.log").open("wb")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--swaps", type=int, default=3)
    args = parser.parse_args()
    setup_environment()
    import shutil

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.deploy.stage import rollback, run_deploy
    from services.edge.server import to_tensor
    from services.protos.sigdl.v1 import edge_pb2, edge_pb2_grpc
    from sigdl.core import onnx_io, signing

    shutil.rmtree(BENCH / "store", ignore_errors=True)
    shutil.rmtree(BENCH / "keys", ignore_errors=True)
    runs = [train(0), train(1)]
    private, public = signing.generate_keys(BENCH / "keys")
    os.environ["SIGDL_SIGNING_KEY"] = str(private)
    store_root = BENCH / "store"
    run_deploy(str(runs[0]), TARGET, "bench", store_root=str(store_root))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = start_agent(store_root, public, port)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = edge_pb2_grpc.EdgeInferenceServiceStub(channel)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 90
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline or agent.poll() is not None:
                raise SystemExit(f"agent never served: see {BENCH / 'agent.log'}")
            time.sleep(0.2)
        status = json.loads(stub.Status(edge_pb2.AgentStatusRequest()).status_json)
        threads = status["threads"]
        pixels = np.random.default_rng(0).random((1, 1, 28, 28), np.float32)
        request = edge_pb2.PredictRequest(pixels=to_tensor(pixels))

        # 1. latency at batch 1
        for _ in range(WARMUP):
            stub.Predict(request, timeout=10)
        agent_ms = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            stub.Predict(request, timeout=10)
            agent_ms.append((time.perf_counter() - t0) * 1e3)
        server_side = json.loads(stub.Status(edge_pb2.AgentStatusRequest()).status_json)
        session = onnx_io.session(runs[0] / "model.onnx", threads)
        for _ in range(WARMUP):
            onnx_io.predict(session, pixels)
        direct_ms = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            onnx_io.predict(session, pixels)
            direct_ms.append((time.perf_counter() - t0) * 1e3)
        latency = {"agent_grpc": percentiles(agent_ms), "ort_direct": percentiles(direct_ms),
                   "agent_reported": server_side["latency_ms"], "threads": threads}  # fmt: skip

        # 2. swaps under traffic
        stop, failed, sent = threading.Event(), [], [0]
        seen: list[tuple[float, str]] = []
        lock = threading.Lock()

        def traffic() -> None:
            while not stop.is_set():
                try:
                    reply = stub.Predict(request, timeout=10)
                    with lock:
                        sent[0] += 1
                        seen.append((time.perf_counter(), reply.model_version))
                except grpc.RpcError as exc:
                    failed.append(exc.code().name)

        workers = [threading.Thread(target=traffic) for _ in range(TRAFFIC_THREADS)]
        for w in workers:
            w.start()
        time.sleep(0.5)
        swaps = []
        for i in range(args.swaps):
            if i == 0:
                result = run_deploy(str(runs[1]), TARGET, "bench", store_root=str(store_root))
            else:
                result = rollback("bench", TARGET, store_root=str(store_root))
            moved, version = time.perf_counter(), result["version"]
            while True:
                with lock:
                    hit = next((t for t, v in seen if t > moved and v == version), None)
                if hit is not None or time.perf_counter() - moved > 30:
                    break
                time.sleep(0.01)
            swaps.append({"to": version, "visible_after_ms": round((hit - moved) * 1e3, 1)})
            time.sleep(0.5)
        stop.set()
        for w in workers:
            w.join()
        final = json.loads(stub.Status(edge_pb2.AgentStatusRequest()).status_json)
        loads = [s["load_ms"] for s in final["swaps"]][-args.swaps :]
        for swap, load_ms in zip(swaps, loads, strict=False):
            swap["agent_load_ms"] = load_ms
        swap_row = {"swaps": swaps, "requests": sent[0], "failed": len(failed),
                    "failure_codes": sorted(set(failed)), "poll_s": POLL_S}  # fmt: skip
    finally:
        channel.close()
        agent.terminate()
        agent.wait(timeout=15)

    row = {"model": "lenet-300-100 (digits)", "target": TARGET, "latency": latency,
           "swap": swap_row}  # fmt: skip
    merge("edge", "lenet-300-100-digits", row)
    print(json.dumps(row, indent=2))
    a, d = latency["agent_grpc"], latency["ort_direct"]
    rows = [
        ["agent Predict over gRPC (client wall time)", a["p50_ms"], a["p99_ms"], a["n"]],
        ["agent, server side (its Status)", latency["agent_reported"]["p50"],
         latency["agent_reported"]["p99"], latency["agent_reported"]["window"]],
        ["ONNX Runtime session.run, same model and threads", d["p50_ms"], d["p99_ms"], d["n"]],
        ["overhead of the agent (p50)", round(a["p50_ms"] - d["p50_ms"], 4), "", ""],
    ]  # fmt: skip
    swap_text = "; ".join(
        f"to {s['to']}: load {s.get('agent_load_ms')} ms, visible after {s['visible_after_ms']} ms"
        for s in swaps
    )
    notes = (
        f"Batch 1, LeNet-300-100 (1x28x28), target {TARGET}: ONNX Runtime pinned to {threads} "
        f"threads, on {os.cpu_count()} shared CPUs.\n\n"
        f"Swaps with {TRAFFIC_THREADS} client threads sending Predict back to back: "
        f"{swap_row['requests']} requests, **{swap_row['failed']} failed**. {swap_text} "
        f"(load = download + verify digests and signature + load and warm the session; "
        f"visible = pointer moved to first reply from the new version, poll every {POLL_S} s)."
    )
    write_table("edge", "Edge agent: Predict latency (ms) and model swaps",
                ["what", "p50 ms", "p99 ms", "requests"], rows, notes)  # fmt: skip


if __name__ == "__main__":
    main()
