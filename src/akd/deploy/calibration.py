"""INT8 with explicit Q/DQ nodes (onnxruntime ``quantize_static``, QDQ format, per-channel weights).

Two flavours, because the fast form differs by deployment target:
- ``tensorrt``: symmetric signed INT8 activations and weights, bias left in float - the only form TensorRT
  accepts for explicit quantization (strongly typed networks in TensorRT 11);
- ``cpu``: unsigned 8-bit activations with signed symmetric per-channel weights - the form onnxruntime's CPU
  kernels run fast (QLinearConv / u8s8 GEMM).
Calibration images stream from folders (images and video frames) one at a time; ranges are cached by
(model hash, data hash, method, flavour), and a drift report (fp32 vs int8 on held-out images) gates the result.
The shipped surrogate also ships its ranges (numbers from the ImageNet sample, no images), so its INT8 form needs
no data; a user's own images still override them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from akd.contract import INPUT, to_input
from akd.data.preprocessing import images_of
from akd.data.sources import sampled
from akd.deploy.float_nodes import float_nodes
from akd.deploy.parity import compare
from akd.util import AkdError

log = logging.getLogger(__name__)
FLAVOURS = ("cpu", "tensorrt")
METHODS = ("minmax", "entropy", "percentile")
DEFAULT_MAX_DRIFT = 0.03  # the int8 parity limits: Pearson >= 0.98, class agreement >= 0.97
# onnxruntime's default op set (None): only Conv/Gemm/MatMul left float islands around every attention module,
# which drifted far more and ran slower (docs/BENCHMARKS.md, "Precision on CPU").
QUANTIZED_OPS = None
CACHE_FORMAT = 2  # bump when what the calibrator records changes
DEFAULT_CACHE_DIR = Path(os.environ.get("AKD_CACHE_DIR", Path.home() / ".cache" / "akd" / "calibration"))
SHIPPED_RANGES = "assets/efficientnet_lite0_surrogate.int8-ranges.json"  # inside the akd package


@dataclass
class CalibrationData:
    samples: list  # akd.train.data.Sample, in deterministic order
    heldout: list
    fingerprint: str
    ranges: Path | None = None  # precomputed ranges (the shipped ones) instead of samples


def shipped_ranges_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("akd").joinpath(SHIPPED_RANGES)))


def shipped_ranges(source_sha256: str | None) -> CalibrationData:
    """The ranges shipped for the shipped surrogate, for a graph exported from it (``source_sha256``: the
    checkpoint hash its metadata records); any other graph needs images."""
    path = shipped_ranges_path()
    content = path.read_bytes() if path.is_file() else b"{}"
    provenance = json.loads(content).get("akd", {})
    if not source_sha256 or source_sha256 != provenance.get("checkpoint_sha256"):
        raise AkdError("INT8 needs calibration images (--data / --calib-data DIR): ranges ship only for the "
                       "surrogate shipped with akd, and this graph was exported from another checkpoint")
    return CalibrationData([], [], hashlib.sha256(content).hexdigest(), ranges=path)


def calibration_data(data: str, num_images: int, seed: int = 0) -> CalibrationData:
    """A seeded shuffle: up to ``num_images`` calibrate, and up to 128 of the rest are held out for drift. At least
    a fifth of a small folder (8 images or more) is always held out, so drift is judged on images like the
    user's; only a folder under 16 images leaves none (drift is then judged on the fallback photos)."""
    from akd.data.sources import discover

    found = discover(data, "train")
    ordered = sampled(found.samples, seed)
    reserved = max(8, len(ordered) // 5)
    reserved = reserved if len(ordered) - reserved >= 8 else 0
    chosen = ordered[:min(num_images, len(ordered) - reserved)]
    heldout = ordered[len(chosen):len(chosen) + 128]
    digest = hashlib.sha256(f"{num_images}:{seed}".encode())
    for sample in chosen:
        stat = os.stat(sample.path)
        digest.update(f"{sample.path}|{sample.frame}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return CalibrationData(chosen, heldout, digest.hexdigest())


class ImageCalibrationReader:
    """onnxruntime ``CalibrationDataReader``: decodes one image per ``get_next`` (bounded memory) and supports
    ``set_range`` so histogram calibrators can be fed in strides."""

    def __init__(self, samples: list, config: dict[str, Any], input_format: str):
        from akd.data.preprocessing import Preprocessing, transforms_for

        self.transform = transforms_for(Preprocessing.from_config(config), train=False)
        self.samples, self.config, self.input_format = samples, config, input_format
        self.start, self.end, self.position = 0, len(samples), 0
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.position = start_index, min(end_index, len(self.samples)), start_index

    def rewind(self) -> None:
        self.position = self.start

    def get_next(self) -> dict[str, np.ndarray] | None:
        from akd.data.sources import read_rgb

        while self.position < self.end:
            sample = self.samples[self.position]
            self.position += 1
            image = read_rgb(sample)
            if image is None:
                self.skipped += 1
                continue
            tensor = self.transform(image).numpy()[None]
            return {INPUT: to_input(tensor, self.config, self.input_format)}
        return None


def cache_file(cache_dir: Path, model_sha: str, data_fingerprint: str, method: str, flavour: str) -> Path:
    """One file per key: a changed model, data set, method, flavour or quantizer setting (which tensors get
    ranges) simply names another file, so a stale cache is never read."""
    settings = hashlib.sha256(repr((QUANTIZED_OPS, CACHE_FORMAT)).encode()).hexdigest()[:8]
    return Path(cache_dir) / f"{model_sha[:16]}-{data_fingerprint[:16]}-{method}-{flavour}-{settings}.json"


def near_constant_tensors(fp32_path: str, reader: ImageCalibrationReader, images: int = 8,
                          relative_range: float = 1e-3) -> dict[str, tuple[float, float]]:
    """Float tensors whose values barely vary (relative range below ``relative_range`` on a few calibration
    images), with their (min, max): e.g. CBAM channel gates still near their identity value sigmoid(5) = 0.9933.
    onnxruntime's histogram calibrators bin in float32 and fail on them ("Too many bins for data range")."""
    import itertools

    import onnx
    import onnxruntime as ort

    model = onnx.load(fp32_path)
    produced = [name for node in model.graph.node for name in node.output if name]
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in produced)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batches = list(itertools.islice(iter(reader.get_next, None), images))
    reader.rewind()
    runs = [session.run(None, batch) for batch in batches]
    found = {}
    for index, name in enumerate(produced):
        values = np.concatenate([np.asarray(run[index]).ravel() for run in runs]) if runs else np.zeros(0)
        if values.dtype != np.float32 or not values.size:
            continue
        low, high = float(values.min()), float(values.max())
        if 0 < high - low < relative_range * max(abs(low), abs(high)):
            found[name] = (low, high)
    return found


def histogram_ranges(fp32_path: str, reader: ImageCalibrationReader, method: str, stride: int,
                     constant: dict[str, tuple[float, float]]):
    """Tensor ranges from onnxruntime's histogram calibrator (entropy or percentile), fed in strides; tensors that
    barely vary are taken out of its histograms and given their observed min/max, which is all a histogram of
    them could say (``constant``: see ``near_constant_tensors``)."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.calibrate import TensorData

    calibrate_method = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[method]
    options = {"percentile": 99.99} if method == "percentile" else {}
    with tempfile.TemporaryDirectory(prefix="akd-calibrate-") as tmp:
        calibrator = create_calibrator(Path(fp32_path), QUANTIZED_OPS, str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method, extra_options=options)
        calibrator.tensors_to_calibrate -= set(constant)  # the set the calibrator histograms
        for start in range(0, len(reader), stride):
            reader.set_range(start, start + stride)
            calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    for name, (low, high) in constant.items():
        ranges.data[name] = TensorData(lowest=np.float32(min(low, 0.0)), highest=np.float32(max(high, 0.0)))
    return ranges


def quantize(fp32_path: str, out_path: str, data: CalibrationData, config: dict[str, Any], input_format: str,
             flavour: str, method: str, cache_dir: Path | None) -> dict[str, Any]:
    """Write a QDQ INT8 model of ``fp32_path`` to ``out_path``; returns what happened (cache hit, skipped)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    from akd.util import sha256_file

    if flavour not in FLAVOURS:
        raise AkdError(f"--int8-target must be one of {', '.join(FLAVOURS)}, not '{flavour}'")
    if method not in METHODS:
        raise AkdError(f"--calibration-method must be one of {', '.join(METHODS)}, not '{method}'")
    reader = ImageCalibrationReader(data.samples, config, input_format)
    if data.ranges is not None:
        cache_dir = None  # the ranges are the cache; nothing to compute or store
        check_ranges_fit(data.ranges, fp32_path, method)
    cache = cache_file(cache_dir, sha256_file(fp32_path), data.fingerprint, method, flavour) if cache_dir else None
    hit = cache is not None and cache.is_file()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
    stride = next((s for s in range(min(16, len(reader)), 0, -1) if len(reader) % s == 0), 1)
    extra = {"WeightSymmetric": True, "ActivationSymmetric": flavour == "tensorrt",
             "QuantizeBias": flavour != "tensorrt",
             # feed the calibrator in strides: ranges/histograms are merged per stride, so memory stays bounded
             # (CalibMaxIntermediateOutputs is not used: onnxruntime 1.32 drops the outputs it caps, unmerged)
             "CalibStridedMinMax": stride}
    if method == "percentile":
        extra["CalibPercentile"] = 99.99
    near_constant: dict[str, tuple[float, float]] = {}
    try:
        with contextlib.ExitStack() as stack:
            quiet = stack.enter_context(_quiet_quantizer())
            if cache is None:  # ranges reach quantize_static through its cache file, so use a temporary one
                cache = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="akd-ranges-"))) / "ranges.json"
                if data.ranges is not None:
                    cache.write_bytes(data.ranges.read_bytes())
            if method != "minmax" and not cache.is_file():
                near_constant = near_constant_tensors(fp32_path, reader)  # only when ranges are computed
                save_tensors_data(histogram_ranges(fp32_path, reader, method, stride, near_constant), cache)
            quantize_static(
                fp32_path, out_path, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTIZED_OPS,
                nodes_to_exclude=float_nodes(fp32_path), per_channel=True, reduce_range=flavour == "cpu",
                activation_type=QuantType.QInt8 if flavour == "tensorrt" else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method={"minmax": CalibrationMethod.MinMax,
                                                               "entropy": CalibrationMethod.Entropy,
                                                               "percentile": CalibrationMethod.Percentile}[method],
                extra_options=extra, calibration_cache_path=str(cache))
            _refuse_nonfinite_ranges(cache)
    except ValueError as exc:  # e.g. histogram calibrators on images with no variation
        raise AkdError(f"calibration failed with the {method} method ({exc}); are the calibration images varied "
                       "enough? Try more images or --calibration-method minmax") from None
    if quiet.per_tensor:
        log.info("%d weights of rank 1 have no channel axis: quantized per tensor", quiet.per_tensor)
    return {"flavour": flavour, "method": method, "images": len(data.samples), "skipped": reader.skipped,
            "near_constant_tensors": len(near_constant), "cache": str(cache) if cache_dir else None, "cache_hit": hit,
            "ranges": "shipped" if data.ranges is not None else "computed"}


def check_ranges_fit(ranges: Path, fp32_path: str, method: str) -> None:
    """Precomputed ranges must name exactly the tensors this graph has (another torch version may name them
    differently) and come from the method asked for."""
    import onnx

    content = json.loads(ranges.read_text())
    if content["akd"]["method"] != method:
        raise AkdError(f"the shipped INT8 ranges were computed with the {content['akd']['method']} method, not "
                       f"{method}; pass --data DIR to calibrate with {method}")
    graph = onnx.load(fp32_path, load_external_data=False).graph
    names = {name for node in graph.node for name in node.output} | {value.name for value in graph.input}
    missing = sorted(set(content["data"]) - names)
    if missing:
        raise AkdError(f"the shipped INT8 ranges do not fit this graph ({len(missing)} tensors not found, e.g. "
                       f"'{missing[0]}': exported by another torch version?); pass --data DIR to calibrate")


class _QuantizerNoise(logging.Filter):
    """Drops onnxruntime quantizer warnings that are not the user's problem, counting the per-channel fallbacks:
    one 'Axis 1 is out-of-range' per rank-1 weight (quantized per tensor instead, as intended), and the advice to
    run its pre-processing, which akd does not (graph optimisation would fold the float islands it keeps)."""

    per_tensor = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "is out-of-range for weight" in message:
            self.per_tensor += 1
            return False
        return "pre-processing before quantization" not in message


@contextlib.contextmanager
def _quiet_quantizer():
    """The quantizer's log noise filtered (see ``_QuantizerNoise``) and its progress prints to stdout ("Collecting
    tensor data and making histogram ..." once per stride, "Finding optimal threshold ...") swallowed: akd's own
    progress and report say what happened."""
    import io

    noise = _QuantizerNoise()
    root = logging.getLogger()
    root.addFilter(noise)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield noise
    finally:
        root.removeFilter(noise)


def _refuse_nonfinite_ranges(cache: Path) -> None:
    """A range that is NaN or infinite means the fp32 graph itself computes garbage (corrupt weights): such a
    cache must never be kept, or every later run would reuse it."""
    def finite(value) -> bool:  # a number, or an array saved as {"data": [...], ...}
        values = np.asarray(value.get("data", 0.0) if isinstance(value, dict) else value, dtype=np.float64)
        return bool(np.isfinite(values).all())

    data = json.loads(cache.read_text()).get("data", {})
    broken = [name for name, entry in data.items()
              if not all(finite(entry.get(key, 0.0)) for key in ("lowest", "highest"))]
    if broken:
        cache.unlink(missing_ok=True)
        raise AkdError(f"calibration produced non-finite ranges for {len(broken)} tensors (e.g. '{broken[0]}'): the "
                       "fp32 graph computes NaN or infinity on these images (corrupt weights?); nothing cached or "
                       "written")


def drift_report(fp32_model, int8_model, config: dict[str, Any], input_format: str, data: CalibrationData,
                 fallback: str | None = None, flavour: str = "cpu") -> dict:
    """fp32 vs int8 on images the calibration never saw: the held-out part of the calibration folder, or, when
    fewer than 8 are left over, real photos from ``fallback`` (default: the bundled sample photos).
    Reports saliency Pearson, IoU of the top-20% regions, class agreement and the single ``drift`` figure."""
    from akd.data.preprocessing import real_images
    from akd.deploy.parity import run_onnx

    heldout = len(data.heldout) >= 8
    images = images_of(data.heldout, config) if heldout else real_images(config, fallback, 128)
    inputs = to_input(images, config, input_format)
    # a tensorrt-flavour graph is judged by its quantization arithmetic, a cpu one as onnxruntime runs it here
    int8 = run_onnx(int8_model, inputs, simulate_qdq=flavour == "tensorrt")
    metrics = compare(run_onnx(fp32_model, inputs), int8, np.ones(len(images), bool))
    metrics["drift"] = drift(metrics)
    reason = "shipped ranges" if data.ranges is not None else "fewer than 16 calibration images: none held out"
    metrics["evaluated_on"] = (f"{len(images)} held-out images of the calibration data" if heldout else
                               f"{fallback or 'sample-photos'} ({reason})")
    return metrics


def drift(metrics: dict[str, float]) -> float:
    """One number for the gate: the worst of (1 - saliency Pearson) and (1 - class agreement); infinite when
    either is NaN (a graph computing NaN must fail every gate)."""
    if not (np.isfinite(metrics["saliency_pearson"]) and np.isfinite(metrics["class_agreement"])):
        return float("inf")
    return max(1.0 - metrics["saliency_pearson"], 1.0 - metrics["class_agreement"])
