"""onnxruntime CPU throughput and fidelity of one surrogate at fp32, fp16, int8 (cpu flavour) and int8 (tensorrt
flavour), measured side by side in one run (round-robin over the models, so machine noise hits all of them).

    python benchmarks/precision_cpu.py [--checkpoint runs/bench-distill/surrogate.safetensors]
        [--calib runs/bench-distill/train] [--heldout runs/bench-distill/heldout]

Defaults follow benchmarks/distill_imagenet_sample.py (run it first). Drift is measured against the fp32 graph on
the held-out images (never used for calibration). Goal: int8 cpu >= 2x fp32 images/s at batch 1 with saliency
Pearson >= 0.98; the tensorrt flavour within the same drift limits (its speed is for a GPU to show).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from akd.data.preprocessing import images_of
from akd.data.sources import discover
from akd.deploy import parity
from akd.deploy.exporter import ExportOptions, export
from akd.deploy.graph import read_metadata


def timed(session: ort.InferenceSession, feed: np.ndarray, iterations: int) -> float:
    started = time.perf_counter()
    for _ in range(iterations):
        session.run(None, {"images": feed})
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/bench-distill/surrogate.safetensors")
    parser.add_argument("--calib", default="runs/bench-distill/train")
    parser.add_argument("--heldout", default="runs/bench-distill/heldout")
    parser.add_argument("--work", default="runs/bench-precision")
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not Path(args.checkpoint).is_file():
        print(f"{args.checkpoint} not found: run benchmarks/distill_imagenet_sample.py first", file=sys.stderr)
        return 2
    work = Path(args.work)
    variants = {"fp32": {}, "fp16": {}, "int8-cpu": {"int8_target": "cpu"},
                "int8-tensorrt": {"int8_target": "tensorrt"}}
    paths = {}
    for name, extra in variants.items():
        precision = name.split("-")[0]
        paths[name] = work / f"surrogate.{name}.onnx"
        started = time.perf_counter()
        export(ExportOptions(args.checkpoint, str(paths[name]), precision=precision, calib_data=args.calib,
                             num_images=args.num_images, parity_data=args.heldout, force=True, max_drift=1.0,
                             verify=precision == "fp32", **extra))  # drift of the others is printed below
        print(f"exported {name} in {time.perf_counter() - started:.0f} s: {paths[name]} "
              f"({paths[name].stat().st_size / 1e6:.1f} MB)", flush=True)

    config = json.loads(read_metadata(onnx.load_model(str(paths["fp32"])))["akd_config"])
    images = images_of(discover(args.heldout, "test").samples, config)
    reference = parity.run_onnx(str(paths["fp32"]), images)
    print(f"\nfidelity vs fp32 graph on {len(images)} held-out images:")
    print(f"{'model':15s} {'sal. Pearson':>12s} {'top20 IoU':>10s} {'class agr.':>10s} {'max |dS|':>9s}")
    for name, path in paths.items():
        m = parity.compare(reference, parity.run_onnx(str(path), images), np.ones(len(images), bool))
        print(f"{name:15s} {m['saliency_pearson']:12.4f} {m['top20_iou']:10.4f} {m['class_agreement']:10.4f} "
              f"{m['saliency_max_abs']:9.4f}")

    sessions = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for name, path in paths.items()}
    print(f"\nthroughput, onnxruntime {ort.__version__} CPU, {os.cpu_count()} CPUs, default threads, "
          f"{args.rounds} interleaved rounds:")
    rng = np.random.default_rng(0)
    for batch, iterations in ((1, 40), (8, 6)):
        feed = images[:batch] if len(images) >= batch else rng.normal(size=(batch, *images.shape[1:])).astype("f4")
        for session in sessions.values():
            timed(session, feed, 3)  # warm-up
        totals = dict.fromkeys(sessions, 0.0)
        for _ in range(args.rounds):
            for name, session in sessions.items():
                totals[name] += timed(session, feed, iterations)
        rates = {name: args.rounds * iterations * batch / seconds for name, seconds in totals.items()}
        shown = ", ".join(f"{name} {rate:.1f} img/s ({rate / rates['fp32']:.2f}x)" for name, rate in rates.items())
        print(f"batch {batch}: {shown}")
    print(f"torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
