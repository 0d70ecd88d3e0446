"""INT8 ranges of the shipped surrogate, computed on ../shared/data/imagenet-sample, and the drift they give.

Exports the shipped surrogate (fp32), calibrates it the way ``akd-calibrate --data imagenet-sample`` does by default
(entropy, 512 images, seed 0; 128 of the other images held out), then judges the ranges as a user without data
meets them (``akd-calibrate MODEL`` with no --data: drift on the bundled sample photos) and on the held-out ImageNet
images, for both INT8 flavours, side by side.

    python benchmarks/int8_ranges_imagenet_sample.py [--ship]

``--ship`` writes the ranges (tensor name -> lowest/highest, no histograms, no images) to
src/akd/assets/efficientnet_lite0_surrogate.int8-ranges.json, with the checkpoint hash they belong to.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx

from akd.deploy.calibration import (
    FLAVOURS,
    CalibrationData,
    calibration_data,
    drift_report,
    quantize,
    shipped_ranges_path,
)
from akd.deploy.exporter import ExportOptions, export
from akd.deploy.graph import read_metadata
from akd.runtime.engine import default_model
from akd.util import atomic_path, sha256_file

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"
METHOD, IMAGES = "entropy", 512


def compute_ranges(fp32_path: Path, config: dict, input_format: str, work: Path) -> dict:
    """onnxruntime's TensorsData JSON for the fp32 graph, reduced to each tensor's range."""
    data = calibration_data(str(SHARED), IMAGES)
    quantize(str(fp32_path), str(work / "int8.onnx"), data, config, input_format, "tensorrt", METHOD, work / "cache")
    cache = json.loads(next((work / "cache").glob("*.json")).read_text())
    cache["data"] = {name: {key: entry[key] for key in ("CLS", "lowest", "highest")}
                     for name, entry in cache["data"].items()}
    return cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ship", action="store_true", help="write the ranges into the package")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"needs {SHARED}", file=sys.stderr)
        return 2
    checkpoint = default_model()
    with tempfile.TemporaryDirectory(prefix="akd-ranges-") as folder:
        work = Path(folder)
        fp32_path = work / "surrogate.onnx"
        export(ExportOptions(checkpoint, str(fp32_path), precision="fp32", verify=False))
        fp32 = onnx.load(str(fp32_path))
        metadata = read_metadata(fp32)
        config, input_format = json.loads(metadata["akd_config"]), metadata["akd_input_format"]
        ranges = compute_ranges(fp32_path, config, input_format, work)
        ranges["akd"] = {"checkpoint_sha256": sha256_file(checkpoint), "method": METHOD,
                         "images": f"{IMAGES} images of the ImageNet sample (akd-calibrate's default draw, seed 0)",
                         "command": "python benchmarks/int8_ranges_imagenet_sample.py --ship"}
        target = shipped_ranges_path() if args.ship else work / "ranges.json"
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(ranges, indent=0, sort_keys=True) + "\n")
        print(f"ranges of {len(ranges['data'])} tensors -> {target} ({target.stat().st_size / 1e3:.0f} kB)")
        heldout = calibration_data(str(SHARED), IMAGES)
        shipped = CalibrationData([], [], "shipped", ranges=target)
        print("flavour   | judged on                        | saliency Pearson | top-20% IoU | class agreement | drift")
        for flavour in FLAVOURS:
            quantize(str(fp32_path), str(work / f"{flavour}.onnx"), shipped, config, input_format, flavour, METHOD,
                     None)
            int8 = onnx.load(str(work / f"{flavour}.onnx"))
            for name, data in (("bundled sample photos (no data)", shipped), ("128 held-out ImageNet", heldout)):
                drift = drift_report(fp32.SerializeToString(), int8.SerializeToString(), config, input_format, data,
                                     None, flavour)
                print(f"{flavour:9} | {name:32} | {drift['saliency_pearson']:16.4f} | {drift['top20_iou']:11.4f} | "
                      f"{drift['class_agreement']:15.4f} | {drift['drift']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
