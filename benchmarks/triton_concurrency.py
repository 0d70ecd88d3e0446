"""One real Triton server (nvidia-pytriton's, made ready by scripts/triton_env.sh) serving the shipped surrogate
(`akd-export --format triton --triton-platform python --triton-kind cpu`), dynamic batching on: N concurrent
SaliencyEngine clients vs one client, each sending single frames. Prints images/s and per-request latency
percentiles, side by side in one run.

    python benchmarks/triton_concurrency.py [--clients 4] [--requests 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_triton_server import READY, Server  # noqa: E402  - the same server harness the tests use


def run_clients(url: str, clients: int, requests: int, frame: np.ndarray) -> tuple[float, list[float]]:
    from akd.runtime import SaliencyEngine

    latencies: list[float] = []
    lock = threading.Lock()
    engines = [SaliencyEngine.load(url) for _ in range(clients)]

    def client(engine) -> None:
        mine = []
        for _ in range(requests):
            started = time.perf_counter()
            engine.explain(frame)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    engines[0].explain(frame)  # warm-up: session creation inside the server
    threads = [threading.Thread(target=client, args=(engine,)) for engine in engines]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for engine in engines:
        engine.close()
    return clients * requests / wall, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=40, help="frames each client sends")
    args = parser.parse_args()
    if not READY:
        print("needs the Triton server: bash scripts/triton_env.sh", file=sys.stderr)
        return 2
    from akd.deploy.exporter import ExportOptions, export
    from akd.deploy.serving import TritonOptions
    from akd.runtime.engine import default_model

    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="akd-triton-") as folder:
        export(ExportOptions(default_model(), str(Path(folder) / "repo"), format="triton", verify=False,
                             triton=TritonOptions(platform="python", kind="KIND_CPU", max_batch=8,
                                                  preferred_batches=(4, 8), queue_delay_us=2000)))
        server = Server(Path(folder) / "repo", Path(folder) / "server.log")
        try:
            server.wait_ready()
            url = f"grpc://127.0.0.1:{server.grpc}/akd_surrogate"
            print(f"machine: {os.cpu_count()} CPUs; server: nvidia-pytriton tritonserver, Python backend, "
                  f"onnxruntime CPU, max_batch_size 8, preferred 4/8, queue delay 2 ms; 640x480 frames")
            for clients in (1, args.clients):
                rate, latencies = run_clients(url, clients, args.requests, frame)
                p50, p99 = np.percentile(np.asarray(latencies) * 1e3, [50, 99])
                print(f"{clients} client(s) x {args.requests} frames: {rate:.1f} images/s, latency p50 "
                      f"{p50:.1f} ms, p99 {p99:.1f} ms")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
