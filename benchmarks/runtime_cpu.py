"""SaliencyEngine overhead on this CPU, side by side in one run (onnxruntime backend, batch 1, fp32 graph):

1. bare ``session.run`` on pre-processed (1,3,224,224) tensors - the model alone;
2. ``SaliencyEngine.explain`` on 640x480 uint8 BGR frames - letterbox, normalise, run, map back to 640x480;
3. the video pipeline (``engine.stream`` on a 640x480 clip: threaded decode + infer) vs the engine alone on the
   same decoded frames.
Goals (issue 11): (2) >= 0.90x (1); (3) >= 0.95x the engine alone.

    python benchmarks/runtime_cpu.py [--model runs/bench-precision/surrogate.fp32.onnx] [--frames 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from akd.runtime import SaliencyEngine
from akd.runtime.video import demo_clip


def rate(function, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        function()
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/bench-precision/surrogate.fp32.onnx")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not Path(args.model).is_file():
        print(f"{args.model} not found: run benchmarks/precision_cpu.py first (or pass --model)", file=sys.stderr)
        return 2
    engine = SaliencyEngine.load(args.model, backend="onnxruntime")
    session = engine.runner.session
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    tensor, _ = engine.preprocess([frame])
    bare = lambda: session.run(None, {"images": tensor})  # noqa: E731
    full = lambda: engine.explain(frame)  # noqa: E731
    for function in (bare, full):
        rate(function, 10)
    bare_rates, engine_rates = [], []
    for _ in range(args.rounds):  # interleaved rounds: machine noise hits both
        bare_rates.append(rate(bare, args.frames // 2))
        engine_rates.append(rate(full, args.frames // 2))
    bare_fps, engine_fps = float(np.median(bare_rates)), float(np.median(engine_rates))

    clip = Path("runs/bench-runtime/clip.avi")
    clip.parent.mkdir(parents=True, exist_ok=True)
    demo_clip(clip, args.frames)
    capture = cv2.VideoCapture(str(clip))
    decoded = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        decoded.append(image)
    stream_rates, alone_rates = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        count = sum(1 for _ in engine.stream(str(clip)))
        stream_rates.append(count / (time.perf_counter() - started))
        started = time.perf_counter()
        for image in decoded:
            engine.explain(image)
        alone_rates.append(len(decoded) / (time.perf_counter() - started))
    stream_fps, alone_fps = float(np.median(stream_rates)), float(np.median(alone_rates))

    print(f"model {args.model}, onnxruntime {ort.__version__} {engine.runner.providers[0]}, {os.cpu_count()} CPUs, "
          f"{args.rounds} interleaved rounds (median)")
    print(f"bare session.run, (1,3,224,224) tensor:      {bare_fps:7.1f} fps")
    print(f"SaliencyEngine, 640x480 frame -> 640x480 map: {engine_fps:7.1f} fps  ({engine_fps / bare_fps:.2f}x bare; "
          f"goal >= 0.90x)")
    print(f"engine alone on {len(decoded)} decoded frames:       {alone_fps:7.1f} fps")
    print(f"video pipeline (decode thread + engine):      {stream_fps:7.1f} fps  ({stream_fps / alone_fps:.2f}x "
          f"engine alone; goal >= 0.95x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
