"""``akd-profile``: end-to-end fps and latency percentiles of a SaliencyEngine, per-stage times, throughput vs
batch size, device and library versions, and board power from tegrastats on Jetson."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import threading
import time
from typing import Any

import numpy as np

from akd.util import atomic_path


class TegraPower:
    """Samples total board power (mW) from ``tegrastats`` while profiling, when the tool exists (Jetson)."""

    PATTERN = re.compile(r"(?:VDD_IN|POM_5V_IN)\s+(\d+)mW")

    def __init__(self):
        self.samples: list[int] = []
        self.process = None
        if shutil.which("tegrastats"):
            self.process = subprocess.Popen(["tegrastats", "--interval", "100"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if match := self.PATTERN.search(line):
                self.samples.append(int(match.group(1)))

    def stop(self) -> dict[str, float] | None:
        if self.process is None:
            return None
        self.process.terminate()
        return {"mean_mw": float(np.mean(self.samples)), "max_mw": float(np.max(self.samples))} if self.samples \
            else None


def environment(engine) -> dict[str, Any]:
    import onnxruntime

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "numpy": np.__version__, "onnxruntime": onnxruntime.__version__, "torch": None}
    try:  # optional: the runtime-only install has no torch
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        info.update({"torch": torch.__version__, "torch_threads": torch.get_num_threads()})
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    info.update({f"model_{k}": v for k, v in engine.info.details.items()})
    info["model_precision"] = engine.info.precision
    info["model_input_format"] = engine.info.input_format
    return info


def profile(engine, batches: list[int], warmup: int, iters: int, frame_size: tuple[int, int]) -> dict[str, Any]:
    """Time ``engine.explain`` on random frames of ``frame_size`` (h, w) at each batch size."""
    rng = np.random.default_rng(0)
    power = TegraPower()
    rows = []
    for batch in batches:
        frames = [rng.integers(0, 256, (*frame_size, 3), dtype=np.uint8) for _ in range(batch)]
        for _ in range(warmup):
            engine.explain(frames)
        latencies, stages = [], []
        for _ in range(iters):
            started = time.perf_counter()
            results = engine.explain(frames)
            latencies.append((time.perf_counter() - started) * 1e3)
            stages.append(results[0].stage_ms)
        keys = sorted({k for s in stages for k in s})
        rows.append({
            "batch": batch, "fps": batch * 1e3 / float(np.mean(latencies)),
            "latency_ms": {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 90, 99)},
            "stage_ms": {k: float(np.mean([s.get(k, 0.0) for s in stages])) for k in keys},
        })
    return {"model": engine.info.source, "frame_size": list(frame_size), "warmup": warmup, "iters": iters,
            "results": rows, "power": power.stop(), "environment": environment(engine)}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"model {report['model']} ({report['environment']['model_precision']}, "
             f"{report['environment'].get('model_backend')}), frames {report['frame_size'][1]}x"
             f"{report['frame_size'][0]}"]
    for row in report["results"]:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in row["stage_ms"].items())
        latency = row["latency_ms"]
        lines.append(f"batch {row['batch']:>3}: {row['fps']:8.1f} fps  latency p50 {latency['p50']:.2f} ms, "
                     f"p90 {latency['p90']:.2f}, p99 {latency['p99']:.2f}  stages (ms): {stages}")
    if report["power"]:
        lines.append(f"board power: mean {report['power']['mean_mw']:.0f} mW, max {report['power']['max_mw']:.0f} mW")
    env = report["environment"]
    lines.append(f"{env['platform']}, {env['cpu_count']} CPUs, python {env['python']}, onnxruntime "
                 f"{env['onnxruntime']}, torch {env['torch']}" + (f", GPU {env['gpu']}" if "gpu" in env else ""))
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
