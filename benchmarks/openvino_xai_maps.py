"""OpenVINO-XAI's white-box maps (ReciproCAM by default) of an ONNX classifier, saved for ``akd-evaluate --maps``.

Runs in its own environment (openvino-xai 1.1 needs numpy<2; ``scripts/openvino_xai_env.sh`` makes
``.venv-ovxai``), so it reads only numpy files: ``images.npz`` as ``benchmarks/any_target.py`` writes it
(akd-evaluate's own images: ``names``, ``pixels`` (N, H, W, 3) uint8 RGB after its resize and crop, ``class_ids``
the target's predictions, ``mean``/``std`` of the target's normalisation). The XAI branch is inserted into the
model's graph (``openvino_xai.insert_xai``), compiled by OpenVINO for the CPU, and every image runs once through
the model with its branch; ``seconds`` are those calls, batch 1, after a warm-up.

    .venv-ovxai/bin/python benchmarks/openvino_xai_maps.py model.onnx images.npz maps.npz [--method reciprocam]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main() -> int:
    import cv2
    import openvino as ov
    import openvino_xai as xai

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("images")
    parser.add_argument("out")
    parser.add_argument("--method", default="reciprocam", choices=["reciprocam", "activationmap"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["default", "f32", "bf16"], default="default",
                        help="OpenVINO's inference precision; its default on a CPU with bf16 instructions is bf16")
    args = parser.parse_args()
    with np.load(args.images, allow_pickle=False) as data:
        names, pixels, class_ids = data["names"], data["pixels"], data["class_ids"]
        mean, std = data["mean"].astype(np.float32), data["std"].astype(np.float32)
    method = {"reciprocam": xai.Method.RECIPROCAM, "activationmap": xai.Method.ACTIVATIONMAP}[args.method]
    model = xai.insert_xai(ov.Core().read_model(args.model), task=xai.Task.CLASSIFICATION, explain_method=method,
                           embed_scaling=False)
    config = {"INFERENCE_NUM_THREADS": args.threads}
    if args.precision != "default":
        config["INFERENCE_PRECISION_HINT"] = args.precision
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    inputs = ((pixels.astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2)[:, None]
    request.infer({0: inputs[0]})  # warm-up: the first call initialises the plugin
    maps, seconds = [], []
    for image, class_id in zip(inputs, class_ids, strict=True):
        started = time.perf_counter()
        request.infer({0: image})
        saliency = request.get_tensor("saliency_map").data  # (1, classes, h, w); ActivationMap: (1, h, w)
        seconds.append(time.perf_counter() - started)
        chosen = saliency[0, int(class_id)] if saliency.ndim == 4 else saliency[0]
        maps.append(cv2.resize(chosen.astype(np.float32), pixels.shape[2:0:-1], interpolation=cv2.INTER_LINEAR))
    np.savez(args.out, names=names, class_ids=class_ids, maps=np.stack(maps), seconds=np.asarray(seconds))
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    median = float(np.median(seconds))
    print(f"openvino_xai_maps: {args.method} ({precision}) on {len(maps)} images, median {median * 1e3:.2f} ms "
          f"({1 / median:.1f} images/s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
