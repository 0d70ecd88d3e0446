"""The graph contract, written once. Every akd graph takes ``images`` and returns ``saliency`` (N,1,H,W) float32 in
[0,1], ``logits`` (N,C) float32, ``class_id`` (N) int32 and ``score`` (N) float32 (softmax probability of
class_id); ``images`` is (N,3,H,W) float32 normalised (``float-nchw``) or (N,H,W,3) uint8 RGB at model resolution
(``uint8-nhwc``, normalisation fused in). Its ``metadata_props`` carry the surrogate's config and how the graph was
made. The exporter writes graphs to this contract; runtime backends, parity, calibration, serving configs and
evaluation read them through it (the C++ runtime in cpp/ mirrors it by hand). numpy only: the runtime-only
install imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

INPUT = "images"
BATCH = "batch"  # the name of every input and output's first, dynamic, dimension
SALIENCY, LOGITS, CLASS_ID, SCORE = "saliency", "logits", "class_id", "score"
OUTPUTS = (SALIENCY, LOGITS, CLASS_ID, SCORE)
INPUT_FORMATS = ("float-nchw", "uint8-nhwc")
OPSET = 17

# metadata_props keys
CONFIG_KEY = "akd_config"  # the surrogate's JSON config: classes, input_size, preprocessing, student, ...
VERSION_KEY = "akd_version"
SOURCE_SHA256_KEY = "akd_source_sha256"  # the checkpoint the graph was exported from
PRECISION_KEY = "akd_precision"  # fp32 | fp16 | int8
INPUT_FORMAT_KEY = "akd_input_format"
INT8_FLAVOUR_KEY = "akd_int8_flavour"  # cpu | tensorrt
CALIBRATION_KEY = "akd_calibration"  # JSON: how the INT8 ranges were made
DRIFT_KEY = "akd_drift"  # JSON: the INT8 drift report
FP32_SHA256_KEY = "akd_fp32_sha256"  # the fp32 graph akd-calibrate quantized


def layercam_weights(config: dict[str, Any]) -> tuple[float, float]:
    """The weights of LayerCAM at the stride-8 and stride-16 taps in the map (config ``layercam8_weight`` and
    ``layercam_weight``): a graph with any computes a gradient inside."""
    return float(config.get("layercam8_weight", 0.0)), float(config.get("layercam_weight", 0.0))


def output_specs(config: dict[str, Any]) -> dict[str, tuple[type, tuple[int, ...]]]:
    """Output name -> (numpy dtype, per-sample shape)."""
    height, width = (int(v) for v in config["input_size"])
    return {SALIENCY: (np.float32, (1, height, width)), LOGITS: (np.float32, (len(config["classes"]),)),
            CLASS_ID: (np.int32, ()), SCORE: (np.float32, ())}


def input_spec(config: dict[str, Any], input_format: str) -> tuple[type, tuple[int, ...]]:
    """(numpy dtype, per-sample shape) of ``images``."""
    height, width = (int(v) for v in config["input_size"])
    return (np.uint8, (height, width, 3)) if input_format == "uint8-nhwc" else (np.float32, (3, height, width))


def normalisation(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset), each (1,3,1,1) float32: normalised = pixels * scale - offset, pixels RGB in 0..255."""
    std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return 1.0 / (255.0 * std), np.asarray(mean, np.float32).reshape(1, 3, 1, 1) / std


def normalise(pixels: np.ndarray, mean, std) -> np.ndarray:
    """(N,H,W,3) RGB pixels (uint8 or float 0..255) -> (N,3,H,W) float32 normalised."""
    scale, offset = normalisation(mean, std)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32) * scale - offset


def to_pixels(images: np.ndarray, mean, std) -> np.ndarray:
    """The inverse: (N,3,H,W) normalised -> (N,H,W,3) uint8 RGB, rounded."""
    scale, offset = normalisation(mean, std)
    return np.clip(np.rint((images + offset) / scale), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()


def to_input(images: np.ndarray, config: dict[str, Any], input_format: str) -> np.ndarray:
    """Normalised float NCHW -> what a graph of ``input_format`` takes."""
    if input_format == "float-nchw":
        return images
    return to_pixels(images, config["preprocessing"]["mean"], config["preprocessing"]["std"])


def config_of(metadata: dict[str, str]) -> dict[str, Any]:
    """The surrogate config a graph's metadata carries."""
    return json.loads(metadata[CONFIG_KEY])


def read_metadata(path: str) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` without the onnx package (the runtime-only install has none): a walk over
    the top-level ModelProto's protobuf fields, keeping field 14's key/value pairs and skipping the rest."""
    data = memoryview(Path(path).read_bytes())
    metadata: dict[str, str] = {}
    for number, value in _fields(data):
        if number == 14 and isinstance(value, memoryview):
            entry = {n: bytes(v).decode() for n, v in _fields(value) if isinstance(v, memoryview)}
            metadata[entry.get(1, "")] = entry.get(2, "")
    return metadata


def _fields(data: memoryview):
    """(field number, value) of one protobuf message: varints as int, length-delimited fields as memoryview."""
    position = 0

    def varint() -> int:
        nonlocal position
        result, shift = 0, 0
        while True:
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    while position < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, varint()
        elif wire == 2:
            length = varint()
            yield number, data[position:position + length]
            position += length
        elif wire in (1, 5):  # fixed 64 / 32 bits
            position += 8 if wire == 1 else 4
        else:
            raise ValueError(f"not an ONNX model (protobuf wire type {wire})")
