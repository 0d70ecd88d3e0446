"""INT8 orchestration for ``akd-export --precision int8`` and ``akd-calibrate``: quantize an fp32 graph
(``akd.deploy.calibration``), judge its drift on held-out images, refuse it past the gate."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from akd import contract
from akd.data.preprocessing import images_of, real_images
from akd.deploy import parity
from akd.deploy.calibration import DEFAULT_MAX_DRIFT
from akd.deploy.graph import check_graph, read_metadata, refuse_overwrite, save_model, set_metadata
from akd.util import AkdError, sha256_file


def calibrate(fp32_model, config: dict[str, Any], input_format: str, data: str | None, flavour: str, method: str,
              num_images: int, max_drift: float, cache_dir: str | None, verify: bool = True,
              fallback_data: str | None = None):
    """Quantize an fp32 akd graph to QDQ INT8, measure drift on held-out images, refuse if it drifts too far.
    Without ``data``, the ranges shipped for the shipped surrogate (only a graph exported from it takes them)."""
    import onnx

    from akd.deploy.calibration import DEFAULT_CACHE_DIR, calibration_data, drift_report, quantize, shipped_ranges

    metadata, fp32_bytes = read_metadata(fp32_model), fp32_model.SerializeToString()
    data_set = (calibration_data(data, num_images) if data else
                shipped_ranges(metadata.get(contract.SOURCE_SHA256_KEY)))
    probe_images = (images_of(data_set.samples[:2], config) if data_set.samples else
                    real_images(config, fallback_data, 2))
    probe = parity.run_onnx(fp32_bytes, contract.to_input(probe_images, config, input_format))
    if not all(np.isfinite(values).all() for values in probe.values()):  # before onnxruntime's calibrator trips on it
        raise AkdError("the fp32 graph computes NaN or infinity on the calibration images (corrupt weights?); "
                       "nothing calibrated, cached or written")
    with tempfile.TemporaryDirectory(prefix="akd-int8-") as folder:
        fp32_path, int8_path = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        onnx.save_model(fp32_model, str(fp32_path))
        info = quantize(str(fp32_path), str(int8_path), data_set, config, input_format, flavour, method,
                        Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR)
        int8 = onnx.load_model(str(int8_path))
    metadata.update({contract.PRECISION_KEY: "int8", contract.INT8_FLAVOUR_KEY: flavour,
                     contract.CALIBRATION_KEY: json.dumps(info)})
    if verify:
        drift = drift_report(fp32_bytes, int8.SerializeToString(), config, input_format, data_set,
                             fallback_data, flavour)
        metadata[contract.DRIFT_KEY] = json.dumps(drift)
        info["drift"] = drift
        # the default gate is the int8 parity limits; a --max-drift above the default knowingly loosens them
        failed = parity.failures(drift, "int8") if max_drift <= DEFAULT_MAX_DRIFT else []
        if failed or drift["drift"] > max_drift:
            hint = ("\nwithout --data the drift is judged on the bundled sample photos, which the target does not "
                    "recognise (the shipped ranges' drift on held-out ImageNet: docs/BENCHMARKS.md, \"Precision "
                    "on CPU\"): pass --data DIR with images like yours" if data_set.ranges is not None else "")
            raise AkdError(f"int8 ({flavour}) drifts too far from fp32 (drift {drift['drift']:.4f}, --max-drift "
                           f"{max_drift}) on {drift['evaluated_on']}, nothing written{hint}\n"
                           f"{parity.table(drift, 'int8')}")
    set_metadata(int8, metadata)
    return check_graph(int8, "int8 graph"), info


def calibrate_file(model_path: str, data: str | None, out: str, flavour: str, method: str, num_images: int,
                   max_drift: float, cache_dir: str | None, force: bool) -> dict[str, Any]:
    """``akd-calibrate``: an fp32 akd graph on disk -> its INT8 form."""
    import onnx

    path = Path(model_path)
    if not path.is_file():
        raise AkdError(f"{model_path}: model not found")
    try:
        model = onnx.load_model(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors
        raise AkdError(f"{model_path}: not a readable ONNX model ({str(exc).splitlines()[0]})") from None
    metadata = read_metadata(model)
    if contract.CONFIG_KEY not in metadata:
        raise AkdError(f"{model_path}: not an akd graph (no akd_config in its metadata); export it with akd-export")
    if metadata.get(contract.PRECISION_KEY) != "fp32":
        raise AkdError(f"{model_path}: calibrate the fp32 graph, not the {metadata.get(contract.PRECISION_KEY)} one")
    refuse_overwrite([Path(out)], force)
    config = contract.config_of(metadata)
    int8, info = calibrate(model, config, metadata[contract.INPUT_FORMAT_KEY], data, flavour, method, num_images,
                           max_drift, cache_dir)
    metadata_sha = sha256_file(str(path))
    set_metadata(int8, {contract.FP32_SHA256_KEY: metadata_sha})  # akd_source_sha256 stays the checkpoint's
    save_model(int8, out)
    return info
