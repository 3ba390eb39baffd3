"""Load on the model server: N concurrent gRPC clients for T seconds, at several concurrency levels.

    python benchmarks/serve_load.py --model-base-path saved_models/mirrorgan [--concurrency 1 4 16]
        [--seconds 20] [--batch 4] [--warmup-seconds 5] [--rounds 1]
    python benchmarks/serve_load.py --server 127.0.0.1:8500 [--server-pid PID] ...

Without --server it starts `python -m mirrorgan_tf.serve` on free localhost ports and stops it at
the end. Localhost only, and bounded (at most 300 s per level, 64 clients, 64 captions a request).
Each client has its own channel and sends Predict (serving_default) back to back; every answer is
checked (shape, dtype), anything else counts as an error. Per level it prints requests/s,
images/s, p50 / p99 latency, errors, and the server's resident memory (VmRSS from /proc) before
and after; a warm-up at the highest concurrency comes first, so growth after it is a leak.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
MAX_SECONDS, MAX_CLIENTS, MAX_BATCH = 300, 64, 64
CAPTIONS = ["a small red circle on the left", "a big blue square at the top", "a green triangle in the middle",
            "a small yellow star at the bottom right"]


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(base_path: str, batch: int, workers: int, log_file) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "mirrorgan_tf.serve", "--model-base-path", base_path, "--host", "127.0.0.1",
           "--port", "0", "--rest-port", "0", "--max-batch", str(max(batch, 64)), "--workers", str(workers),
           "--log-level", "WARNING"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 180
    while time.time() < deadline:
        with open(log_file.name) as f:
            ready = re.search(r"gRPC (\S+),", f.read())
        if ready:
            return proc, ready[1]
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    with open(log_file.name) as f:
        raise SystemExit(f"the server did not start:\n{f.read()[-3000:]}")


def run_level(address: str, clients: int, seconds: float, captions: list[str], model_name: str):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.inputs["captions"].CopyFrom(tf.make_tensor_proto(captions, dtype=tf.string))
    latencies: list[float] = []
    errors: collections.Counter = collections.Counter()
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    options = [("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", 256 * 2**20)]

    def client():
        with grpc.insecure_channel(address, options=options) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            mine, failed = [], collections.Counter()
            start.wait()
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    images = tf.make_ndarray(stub.Predict(request, timeout=120).outputs["images"])
                    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(captions):
                        failed[f"bad answer {images.dtype} {list(images.shape)}"] += 1
                        continue
                except grpc.RpcError as e:
                    failed[f"{e.code().name}: {e.details()}"] += 1
                    continue
                mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)
            errors.update(failed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-base-path", help="start a server on this base path")
    where.add_argument("--server", help="HOST:PORT of a running server (localhost only)")
    p.add_argument("--server-pid", type=int, help="with --server: its process id, to read its memory")
    p.add_argument("--model-name", default="mirrorgan")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    p.add_argument("--warmup-seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=1, help="repeat the levels, to see memory settle")
    p.add_argument("--batch", type=int, default=4, help="captions per request")
    p.add_argument("--workers", type=int, default=8, help="the started server's --workers")
    a = p.parse_args()
    if not 0 < a.seconds <= MAX_SECONDS or not 0 <= a.warmup_seconds <= MAX_SECONDS:
        p.error(f"--seconds and --warmup-seconds must be within (0, {MAX_SECONDS}]")
    if not all(0 < c <= MAX_CLIENTS for c in a.concurrency) or not 0 < a.batch <= MAX_BATCH:
        p.error(f"concurrency must be 1..{MAX_CLIENTS} and --batch 1..{MAX_BATCH}")
    if not 0 < a.rounds <= 5:
        p.error("--rounds must be 1..5")
    proc, log_file = None, None
    if a.server:
        host = a.server.rsplit(":", 1)[0]
        if host not in LOCAL_HOSTS:
            p.error(f"refusing {a.server}: this benchmark only loads a server on localhost")
        address, pid = a.server, a.server_pid
    else:
        log_file = tempfile.NamedTemporaryFile("w", prefix="serve_load-", suffix=".log", delete=False)
        proc, address = start_server(a.model_base_path, a.batch, a.workers, log_file)
        pid = proc.pid
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(a.batch)]
    try:
        print(f"server {address} (pid {pid}), {os.cpu_count()} CPU cores here, {a.batch} captions per request, "
              f"{a.seconds:g} s per level; RSS at start {fmt(rss_mib(pid))}", flush=True)
        if a.warmup_seconds:
            _, errors, _ = run_level(address, max(a.concurrency), a.warmup_seconds, captions, a.model_name)
            print(f"warm-up: {a.warmup_seconds:g} s at concurrency {max(a.concurrency)}, {sum(errors.values())} "
                  f"errors; RSS {fmt(rss_mib(pid))}", flush=True)
        print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'images/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'errors':>6} {'RSS before':>10} {'RSS after':>10}")
        first = None
        for _ in range(a.rounds):
            for clients in a.concurrency:
                before = rss_mib(pid)
                first = before if first is None else first
                latencies, errors, elapsed = run_level(address, clients, a.seconds, captions, a.model_name)
                after = rss_mib(pid)
                ms = np.percentile(np.array(latencies) * 1000, [50, 99]) if latencies else [float("nan")] * 2
                rate = len(latencies) / elapsed
                print(f"{clients:>7} {len(latencies):>8} {rate:>7.1f} {rate * a.batch:>8.1f} {ms[0]:>7.1f} "
                      f"{ms[1]:>7.1f} {sum(errors.values()):>6} {fmt(before):>10} {fmt(after):>10}", flush=True)
                for message, count in errors.most_common(3):
                    print(f"        {count} x {message[:200]}")
        if first is not None and rss_mib(pid) is not None:
            print(f"RSS change over the measured levels: {rss_mib(pid) - first:+.1f} MiB")
    finally:
        if proc is not None:
            proc.terminate()
            code = proc.wait(60)
            print(f"server stopped (exit code {code}); its log: {log_file.name}")


def fmt(mib: float | None) -> str:
    return "n/a" if mib is None else f"{mib:.0f} MiB"


if __name__ == "__main__":
    main()
