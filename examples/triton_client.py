"""Explain images with an akd model served by Triton (repository made by ``akd-export --format triton``).

    tritonserver --model-repository REPO &
    python examples/triton_client.py photo.jpg [more.jpg ...] [--url localhost:8001] [--model akd_surrogate]
        [--config surrogate-config.json] [--shard K/N] [--batch 8]

Many files: start N clients with --shard 0/N ... N-1/N (each takes every N-th file); Triton's dynamic batcher
merges their requests on the GPU.

The input shape and dtype come from the server's model metadata. Float graphs need the surrogate's mean/std:
``--config`` (the JSON in the graph's ``akd_config`` metadata) or EfficientNet-Lite0's (x - 127) / 128 by
default; uint8 graphs (``--input-format uint8-nhwc``) normalise inside the graph.
"""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np


def preprocess(path: str, size: int, mean: np.ndarray, std: np.ndarray, uint8: bool) -> np.ndarray:
    """One image -> one sample in the graph's input layout (centre crop at crop_pct 0.875, like akd)."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"{path}: not a readable image")
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    short = round(size / 0.875)
    height, width = rgb.shape[:2]
    scale = short / min(height, width)
    rgb = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    top, left = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
    rgb = rgb[top:top + size, left:left + size]
    if uint8:
        return np.ascontiguousarray(rgb)
    return ((rgb.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1).copy()


def build_request(batch: np.ndarray):
    """Inputs and requested outputs of one inference call (a batch of samples)."""
    import tritonclient.grpc as grpcclient

    dtype = "UINT8" if batch.dtype == np.uint8 else "FP32"
    images = grpcclient.InferInput("images", list(batch.shape), dtype)
    images.set_data_from_numpy(batch)
    outputs = [grpcclient.InferRequestedOutput(name) for name in ("saliency", "class_id", "score")]
    return [images], outputs


def main() -> None:
    import tritonclient.grpc as grpcclient

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+")
    parser.add_argument("--url", default="localhost:8001")
    parser.add_argument("--model", default="akd_surrogate")
    parser.add_argument("--config", help="surrogate config JSON (for mean/std); default EfficientNet-Lite0's")
    parser.add_argument("--shard", default="0/1", help="K/N: explain every N-th file starting at the K-th")
    parser.add_argument("--batch", type=int, default=8, help="images per request")
    args = parser.parse_args()
    index, count = (int(v) for v in args.shard.split("/"))
    paths = args.images[index::count]
    client = grpcclient.InferenceServerClient(args.url)
    metadata = client.get_model_metadata(args.model, as_json=True)
    shape = [int(d) for d in metadata["inputs"][0]["shape"][1:]]
    uint8 = metadata["inputs"][0]["datatype"] == "UINT8"
    size = shape[0] if uint8 else shape[1]
    pre = {"mean": [127 / 255] * 3, "std": [128 / 255] * 3}
    if args.config:
        with open(args.config) as handle:
            pre = json.load(handle)["preprocessing"]
    mean, std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
    for start in range(0, len(paths), args.batch):
        chunk = paths[start:start + args.batch]
        inputs, outputs = build_request(np.stack([preprocess(path, size, mean, std, uint8) for path in chunk]))
        result = client.infer(args.model, inputs, outputs=outputs)
        for path, maps, class_id, score in zip(chunk, result.as_numpy("saliency"), result.as_numpy("class_id"),
                                                result.as_numpy("score"), strict=True):
            heat = cv2.applyColorMap((maps[0] * 255).astype(np.uint8), cv2.COLORMAP_JET)
            out = path.rsplit(".", 1)[0] + ".triton.png"
            cv2.imwrite(out, heat)
            print(f"{path}: class {int(class_id)} score {float(score):.3f} mean saliency {maps.mean():.3f} -> {out}")


if __name__ == "__main__":
    main()
