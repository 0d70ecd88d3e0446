"""GPU check for a CUDA machine (one script, under 5 minutes): the torch backend and the shared pinned-memory /
stream pipeline on the GPU for the resnet50_cbam surrogate at 224, checked against CPU onnxruntime, then images/s
at batch 1 and 32 with fp16 + CUDA graphs, with one slot (no overlap) and two slots (copies overlap compute).

    python benchmarks/gpu_check.py [--work runs/gpu-check]

Goals on an H200-class GPU: batch 1 >= 1,000 images/s end to end with fp16 + CUDA graphs; overlap adds >= 20%
throughput at batch 32. Random weights are enough: speed and numerical agreement do not depend on training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/gpu-check")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per configuration")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check needs CUDA", file=sys.stderr)
        return 2
    from akd.data.imagenet import imagenet_class_names
    from akd.deploy.exporter import ExportOptions, export
    from akd.models.surrogate import Surrogate, save_checkpoint
    from akd.runtime.backends.onnxruntime import OnnxRuntimeRunner
    from akd.runtime.backends.torch import TorchRunner

    work = Path(args.work)
    checkpoint = work / "resnet50_cbam.safetensors"
    config = {"student": "resnet50_cbam", "classes": list(imagenet_class_names()), "input_size": [224, 224],
              "preprocessing": {"input_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                "crop_pct": 0.875, "color": "RGB"},
              "target": {"name": "none", "kind": "random", "sha256": None}}
    torch.manual_seed(0)
    save_checkpoint(checkpoint, Surrogate(config).eval())
    onnx_path = work / "resnet50_cbam.onnx"
    export(ExportOptions(str(checkpoint), str(onnx_path), precision="fp32", verify=False, force=True))
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")

    batch = np.random.default_rng(0).normal(size=(8, 3, 224, 224)).astype(np.float32)
    reference = OnnxRuntimeRunner(str(onnx_path), device="cpu").infer(batch).outputs
    for name, options in (("fp32", {}), ("fp16", {"fp16": True}), ("fp16+graphs", {"fp16": True, "cuda_graphs": True})):
        got = TorchRunner(str(checkpoint), "cuda", max_batch=8, **options).infer(batch).outputs
        error = float(np.abs(got["saliency"] - reference["saliency"]).max())
        agree = float((got["class_id"] == reference["class_id"]).mean())
        print(f"check {name:12s}: saliency max |diff| vs CPU onnxruntime {error:.5f}, class agreement {agree:.2f}")

    for size in (1, 32):
        feeds = [np.random.default_rng(i).normal(size=(size, 3, 224, 224)).astype(np.float32) for i in range(4)]
        for slots in (1, 2):
            runner = TorchRunner(str(checkpoint), "cuda", max_batch=size, fp16=True, cuda_graphs=True, slots=slots)
            for _ in runner.run(feeds * 3):  # warm-up
                pass
            images, started = 0, time.perf_counter()
            while time.perf_counter() - started < args.seconds:
                for _ in runner.run(feeds * 8):
                    images += size
            rate = images / (time.perf_counter() - started)
            stages = ", ".join(f"{k} {v:.3f} ms" for k, v in runner.infer(feeds[0]).stage_ms.items())
            print(f"batch {size:2d}, {slots} slot(s), fp16 + CUDA graphs: {rate:9.1f} images/s ({stages})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
