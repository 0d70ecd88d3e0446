"""The device check of akd's GPU path (issue 11): one run of at most ~7 minutes on a CUDA machine whose image has
torch with CUDA, cuda-python, cupy, numpy and CPU onnxruntime - but no akd install, no timm, no TensorRT and no
internet. So the shipped surrogate travels as TorchScript, with real frames and CPU fp32 reference outputs made
here:

    python benchmarks/gpu_check.py --prepare runs/gpu-check          # here: CPU, the full environment
    PYTHONPATH=src python benchmarks/gpu_check.py --work runs/gpu-check --out "$OUT"   # there (carry runs/gpu-check)

Gates (exit 1 when one fails; the JSON report goes to OUT/gpu_check.json either way):
- pinned host buffers are page-locked (``cudaPointerGetAttributes``) and pinned H2D and D2H run >= 1.5x the
  bandwidth of pageable memory;
- copies are asynchronous: a D2H queued behind a ~50 ms kernel returns to the host in < 5 ms;
- the slot pipeline overlaps: on a copy-heavy batch 2 slots take <= 0.8x the wall time of 1 slot, outputs
  bit-identical, and a worker thread can use it;
- the shipped surrogate in fp16 (eager and CUDA graphs) against CPU fp32 on the real frames: akd's fp16 parity
  limits and class agreement >= 0.99; fp32 with TF32 off within 1e-4; a partial last batch (5 after batches of 8);
- throughput, host batch in -> host outputs out, fp16 + CUDA graphs, 2 slots, two batches in flight: images/s
  at batch 1 (goal >= 1000 on an H200-class GPU) and 32, with per-stage times.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

FRAMES_FROM = Path(__file__).resolve().parents[1] / "examples" / "bottles.mp4"
IMAGENET = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"  # when it sits beside us


def prepare(work: Path) -> None:
    """TorchScript of the shipped surrogate's graph module, 24 frames of the clip (and 24 ImageNet photos when
    ../shared is here) as the model's input, and the CPU fp32 outputs on them."""
    import cv2

    from akd.contract import OUTPUTS
    from akd.deploy.graph import DeployableSurrogate
    from akd.models.surrogate import load_surrogate
    from akd.runtime.engine import SaliencyEngine, default_model

    work.mkdir(parents=True, exist_ok=True)
    surrogate = load_surrogate(default_model())
    module = DeployableSurrogate(surrogate, "float-nchw").eval()
    capture, frames = cv2.VideoCapture(str(FRAMES_FROM)), []
    while len(frames) < 24 and capture.grab():
        if int(capture.get(cv2.CAP_PROP_POS_FRAMES)) % 45 == 1:
            frames.append(capture.retrieve()[1])
    capture.release()
    if IMAGENET.is_dir():  # photos the target recognises, beside the clip's near-identical frames
        frames += [cv2.imread(str(path)) for path in sorted(IMAGENET.glob("*.JPEG"))[:24]]
    with SaliencyEngine.load(default_model()) as engine:
        images = engine.preprocess(frames)[0]
    with torch.no_grad():
        traced = torch.jit.trace(module, torch.from_numpy(images[:2]), check_trace=False)
        outputs = dict(zip(OUTPUTS, (v.numpy() for v in module(torch.from_numpy(images))), strict=True))
    torch.jit.save(traced, str(work / "surrogate.ts"))
    np.savez(work / "reference.npz", images=images, **outputs)
    (work / "config.json").write_text(json.dumps(surrogate.config))
    print(f"prepared {work}: surrogate.ts, {len(images)} frames ({FRAMES_FROM.name}, ImageNet sample: "
          f"{IMAGENET.is_dir()}), CPU fp32 reference outputs")


def check_pinned_memory() -> dict:
    from cuda.bindings import runtime

    from akd.runtime.cuda import CudaPython

    api = CudaPython()
    size = 256 << 20
    pinned, pageable = api.pinned((size,), np.uint8), np.ones(size, np.uint8)
    device = api.device(size)
    attributes = api._check(runtime.cudaPointerGetAttributes(pinned.ctypes.data))
    locked = attributes.type == runtime.cudaMemoryType.cudaMemoryTypeHost

    def bandwidth(host: np.ndarray, kind) -> float:
        def copy():
            if kind == runtime.cudaMemcpyKind.cudaMemcpyHostToDevice:
                api._check(runtime.cudaMemcpy(int(device), host.ctypes.data, size, kind))
            else:
                api._check(runtime.cudaMemcpy(host.ctypes.data, int(device), size, kind))
        copy()
        started = time.perf_counter()
        for _ in range(5):
            copy()
        return 5 * size / (time.perf_counter() - started) / 1e9

    h2d, d2h = runtime.cudaMemcpyKind.cudaMemcpyHostToDevice, runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
    rates = {"pinned_h2d_GBps": bandwidth(pinned, h2d), "pageable_h2d_GBps": bandwidth(pageable, h2d),
             "pinned_d2h_GBps": bandwidth(pinned, d2h), "pageable_d2h_GBps": bandwidth(pageable, d2h)}
    api._check(runtime.cudaFree(device))
    api._check(runtime.cudaFreeHost(pinned.ctypes.data))
    ratio = min(rates["pinned_h2d_GBps"] / rates["pageable_h2d_GBps"],
                rates["pinned_d2h_GBps"] / rates["pageable_d2h_GBps"])
    return {"page_locked": bool(locked), **rates, "pinned_over_pageable": ratio,
            "passed": bool(locked) and ratio >= 1.5}


def check_async_copies() -> dict:
    from akd.runtime.cuda import CudaPython

    api = CudaPython()
    stream = api.stream()
    host, device = api.pinned((64 << 20,), np.uint8), api.device(64 << 20)
    torch_stream = torch.cuda.ExternalStream(api.stream_handle(stream))
    started = time.perf_counter()
    torch.cuda._sleep(10_000_000)  # calibrate: how many GPU cycles a millisecond holds
    torch.cuda.synchronize()
    cycles_per_ms = 10_000_000 / max((time.perf_counter() - started) * 1e3, 1e-3)
    with torch.cuda.stream(torch_stream):
        torch.cuda._sleep(int(50 * cycles_per_ms))  # a ~50 ms kernel ahead of the copy on the same stream
    started = time.perf_counter()
    api.d2h(host, device, stream)
    returned_ms = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    api.synchronize(stream)
    waited_ms = (time.perf_counter() - started) * 1e3
    return {"d2h_call_ms": returned_ms, "then_synchronize_ms": waited_ms, "passed": returned_ms < 5.0 < waited_ms}


def check_overlap() -> dict:
    import cupy

    from akd.runtime.cuda import CudaPython, OutputSpec, SlotPipeline

    api = CudaPython()
    count = 16 << 20  # 64 MB per batch each way: copies dominate, the kernel is one multiply

    def compute(slot, n: int) -> None:
        with cupy.cuda.ExternalStream(api.stream_handle(slot.stream)):
            def view(pointer):
                memory = cupy.cuda.UnownedMemory(int(pointer), n * count * 4, slot)
                return cupy.ndarray((n, count), cupy.float32, cupy.cuda.MemoryPointer(memory, 0))
            cupy.multiply(view(slot.device_in), 2, out=view(slot.device_out["y"]))

    batches = [np.full((1, count), i, np.float32) for i in range(12)]
    walls, outputs = {}, {}
    for slots in (1, 2):
        pipeline = SlotPipeline(api, 1, (count,), np.float32, {"y": OutputSpec((count,), np.float32)}, compute, slots)
        list(pipeline.run(batches[:2]))  # warm-up
        started = time.perf_counter()
        outputs[slots] = [out["y"] for out in pipeline.run(batches)]
        walls[slots] = time.perf_counter() - started
        threaded: dict = {}
        worker = threading.Thread(target=lambda p=pipeline, t=threaded: t.update(y=p.infer(batches[3])[0]["y"]))
        worker.start()
        worker.join()
        pipeline.close()
    identical = all(np.array_equal(a, b) and np.array_equal(a, 2 * batch)
                    for a, b, batch in zip(outputs[1], outputs[2], batches, strict=True))
    from_thread = bool(np.array_equal(threaded["y"], 2 * batches[3]))
    ratio = walls[2] / walls[1]
    return {"one_slot_s": walls[1], "two_slots_s": walls[2], "ratio": ratio, "bit_identical": identical,
            "worker_thread": from_thread, "passed": ratio <= 0.8 and identical and from_thread}


def check_surrogate(work: Path) -> dict:
    from akd.deploy import parity
    from akd.runtime.backends.torch import TorchRunner

    config = json.loads((work / "config.json").read_text())
    reference = dict(np.load(work / "reference.npz"))
    images = reference.pop("images")
    real = np.ones(len(images), bool)
    report: dict = {}
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 here
    for name, options in (("fp32", {}), ("fp16", {"fp16": True}),
                          ("fp16+cuda_graphs", {"fp16": True, "cuda_graphs": True})):
        runner = TorchRunner("surrogate.ts", "cuda", max_batch=8, module=torch.jit.load(str(work / "surrogate.ts")),
                             config=config, **options)
        count = len(images) - (len(images) - 5) % 8  # full batches of 8, then a partial batch of 5
        chunks = [images[start:min(start + 8, count)] for start in range(0, count, 8)]
        got = [runner.infer(np.ascontiguousarray(chunk)).outputs for chunk in chunks]
        runner.close()
        outputs = {key: np.concatenate([g[key] for g in got]) for key in got[0]}
        head = {key: value[:count] for key, value in reference.items()}
        metrics = parity.compare(head, outputs, real[:count])
        metrics["limits"] = "fp32: max abs <= 1e-4" if name == "fp32" else "akd fp16 parity limits"
        failed = ([] if metrics["saliency_max_abs"] <= 1e-4 and metrics["class_agreement"] == 1.0 else ["fp32"]) \
            if name == "fp32" else parity.failures(metrics, "fp16")
        report[name] = {**metrics, "failed": failed, "passed": not failed}
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    report["passed"] = all(entry["passed"] for entry in report.values() if isinstance(entry, dict))
    return report


def check_throughput(work: Path, seconds: float) -> dict:
    from akd.runtime.backends.torch import TorchRunner

    config = json.loads((work / "config.json").read_text())
    images = np.load(work / "reference.npz")["images"]
    report: dict = {}
    for size in (1, 32):
        runner = TorchRunner("surrogate.ts", "cuda", max_batch=size, fp16=True, cuda_graphs=True, slots=2,
                             module=torch.jit.load(str(work / "surrogate.ts")), config=config)
        feeds = [np.ascontiguousarray(np.resize(images, (size, *images.shape[1:]))) for _ in range(2)]
        for feed in feeds * 3:  # warm-up: captures the bucket's graphs
            runner.infer(feed)
        done, stages, pending = 0, [], []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            pending.append(runner.submit(feeds[done % 2]))
            if len(pending) == 2:
                stages.append(runner.collect(pending.pop(0)).stage_ms)
                done += 1
        for handle in pending:
            stages.append(runner.collect(handle).stage_ms)
            done += 1
        rate = done * size / (time.perf_counter() - started)
        runner.close()
        report[f"batch_{size}"] = {"images_per_s": rate, "stage_ms": {
            key: float(np.median([s[key] for s in stages])) for key in stages[0]}}
    report["passed"] = report["batch_1"]["images_per_s"] >= 1000
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", metavar="DIR", help="write the check's inputs (here, on CPU) and stop")
    parser.add_argument("--work", default="runs/gpu-check", help="what --prepare wrote")
    parser.add_argument("--out", default="runs/gpu-check/out", help="where gpu_check.json goes")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per throughput configuration")
    args = parser.parse_args()
    if args.prepare:
        prepare(Path(args.prepare))
        return 0
    if not torch.cuda.is_available():
        print("gpu_check needs CUDA", file=sys.stderr)
        return 2
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}
    checks = (("pinned_memory", check_pinned_memory), ("async_copies", check_async_copies),
              ("overlap", check_overlap), ("surrogate", lambda: check_surrogate(work)),
              ("throughput", lambda: check_throughput(work, args.seconds)))
    for name, check in checks:
        started = time.perf_counter()
        try:
            report[name] = check()
        except Exception as exc:  # noqa: BLE001 - a check that cannot run is a failed gate, reported, not a crash
            report[name] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"}
        report[name]["seconds"] = time.perf_counter() - started
        print(f"{name:14s} {'PASS' if report[name]['passed'] else 'FAIL'}  "
              f"{json.dumps({k: v for k, v in report[name].items() if k != 'passed'}, default=float)[:600]}",
              flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=float))
    failed = [name for name, _ in checks if not report[name]["passed"]]
    print(f"gpu_check: {'all gates passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
