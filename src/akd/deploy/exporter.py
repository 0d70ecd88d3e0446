"""``akd-export``: checkpoint -> fused graph at a precision -> (optionally) TensorRT engine and serving files.

Order of work: everything is built and verified in memory or a private temp folder first; artifacts are written
(atomically) only after every check passed, so a failed parity check or an interrupted export writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from akd import contract
from akd.deploy import parity
from akd.deploy.calibration import DEFAULT_MAX_DRIFT
from akd.deploy.formats import FORMATS, PRECISIONS, ServingInputs
from akd.deploy.graph import (
    artifact_metadata,
    export_onnx,
    read_metadata,
    refuse_overwrite,
    save_model,
)
from akd.deploy.int8 import calibrate
from akd.deploy.serving import TritonOptions, triton_config, validate_triton_config
from akd.deploy.tensorrt import EngineOptions
from akd.models.deployable import DeployableSurrogate
from akd.util import AkdError, atomic_path, sha256_file


@dataclass
class ExportOptions:
    checkpoint: str
    out: str | None = None
    precision: str = "fp32"
    format: str = "onnx"
    input_format: str = "float-nchw"
    include_target: bool = False
    layercam: bool = True  # False: drop the LayerCAM terms from the map (config layercam*_weight), forward-only graph
    verify: bool = True
    parity_data: str | None = None
    calib_data: str | None = None
    num_images: int = 512
    calibration_method: str = "entropy"
    int8_target: str | None = None
    max_drift: float = DEFAULT_MAX_DRIFT
    cache_dir: str | None = None
    engine: EngineOptions = field(default_factory=EngineOptions)  # TensorRT build settings
    triton: TritonOptions = field(default_factory=TritonOptions)  # --format triton
    force: bool = False
    # the target's own explanation (akd.models.target_explanation), built after the checks before any work;
    # ``checkpoint`` then names it: the graph is written as <checkpoint>.onnx (folder: --out or its parent)
    target_surrogate: Callable[[], Any] | None = None

    @property
    def wants_engine(self) -> bool:
        return FORMATS[self.format].builds_engine(self)


def _target_module(config: dict[str, Any]):
    """The surrogate's own target as a torch module, checked against the sha256 recorded at distillation."""
    from akd.data.preprocessing import Preprocessing
    from akd.models.teachers import load_teacher

    identity = config["target"]
    if identity.get("kind") == "onnx":
        raise AkdError("--include-target needs a torch target; this surrogate was distilled from an ONNX black box")
    if identity.get("kind") == "module":
        raise AkdError("--include-target cannot re-create a target that was distilled from an in-memory module; "
                       "distil from a torchvision/timm name or file to fuse it")
    if identity.get("kind") == "torchscript":
        raise AkdError("--include-target cannot trace a TorchScript target into the graph; distil from the "
                       "torchvision/timm name (with --teacher-weights) to fuse it")
    spec = identity.get("path") or identity["name"]
    teacher = load_teacher(spec, identity.get("weights"), Preprocessing.from_config(config))
    if identity.get("sha256") and teacher.identity.get("sha256") != identity["sha256"]:
        raise AkdError(f"--include-target: {spec} is not the file this surrogate was distilled from (sha256 differs)")
    return teacher.module


def export(options: ExportOptions, on_report: Callable[[dict[str, Any]], None] | None = None) -> list[Path]:
    """Run ``akd-export``; returns the paths written. ``on_report`` receives the parity/drift checks' numbers
    (the CLI prints them) before any file is written."""
    from akd.models.surrogate import load_surrogate

    _check_before_work(options)
    chosen = FORMATS[options.format]
    onnx_path, engine_path = chosen.paths(options)
    planned = [onnx_path] + ([engine_path, engine_path.with_suffix(".engine.json")] if options.wants_engine else [])
    serving = chosen.serving_files(options, onnx_path)
    refuse_overwrite(planned + list(serving), options.force)

    surrogate = (options.target_surrogate() if options.target_surrogate is not None
                 else load_surrogate(options.checkpoint))
    config = surrogate.config
    if not options.layercam:  # the graph's metadata then says what it computes
        config["layercam_weight"] = config["layercam8_weight"] = 0.0
        surrogate.explainer.layercam_weights = (0.0, 0.0)
    triton_text = None
    if options.format == "triton":  # validated before any work, so a bad config never costs an export
        triton_text = triton_config(config, options.input_format, options.triton.platform, options.triton,
                                    options.precision)
        validate_triton_config(triton_text)
    target = _target_module(config) if options.include_target else None
    reference = DeployableSurrogate(surrogate, options.input_format, target).eval()
    model, report = _graph_at_precision(reference, config, options, _source_sha256(options, surrogate))
    if "white_box" in config["target"]:
        report = {"white-box target": config["target"]["white_box"], **report}
    save_model(model, onnx_path)
    written = [onnx_path]
    if on_report is not None:
        on_report(report)
    if options.wants_engine:
        from akd.deploy.tensorrt import build_engine

        written += build_engine(onnx_path, engine_path, replace(
            options.engine, precision=options.precision, calib_data=options.calib_data,
            num_images=options.num_images))
    metadata = read_metadata(model)
    texts = chosen.serving_texts(options, ServingInputs(metadata, config, onnx_path, triton_text))
    for path, text in zip(serving, texts, strict=True):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        written.append(path)
    return written


def _check_before_work(options: ExportOptions) -> None:
    """Everything that can refuse the export without loading a model: one line, before any work."""
    if options.precision not in PRECISIONS:
        raise AkdError(f"--precision must be one of {', '.join(PRECISIONS)}, not '{options.precision}'")
    if options.format not in FORMATS:
        raise AkdError(f"--format must be one of {', '.join(FORMATS)}, not '{options.format}'")
    if options.target_surrogate is not None and options.include_target:
        raise AkdError("--include-target: a target's own explanation already is the target's graph")
    if options.target_surrogate is not None and options.precision == "int8" and not options.calib_data:
        raise AkdError("--precision int8 of a target's explanation needs --calib-data (images of its domain)")
    if options.precision == "int8" and not options.calib_data:  # only the shipped surrogate's ranges ship
        from akd.deploy.calibration import shipped_ranges

        shipped_ranges(sha256_file(options.checkpoint))
    if FORMATS[options.format].needs_out and not options.out:
        raise AkdError(f"--format {options.format} needs --out (where it writes: {FORMATS[options.format].writes})")
    if options.wants_engine:
        from akd.runtime.backends.tensorrt import require_tensorrt

        require_tensorrt()  # without TensorRT nothing is written


def _source_sha256(options: ExportOptions, surrogate) -> str:
    """The checkpoint file's hash, or for a target's explanation the content hash of its tensors."""
    if options.target_surrogate is None:
        return sha256_file(options.checkpoint)
    from akd.models.surrogate import tensors_sha256

    return tensors_sha256(surrogate.state_dict())


def _graph_at_precision(reference: DeployableSurrogate, config: dict[str, Any], options: ExportOptions,
                        source_sha: str):
    """(the graph at ``options.precision``, its parity/drift report): fp32 exported and checked first, then
    fp16 traced again or int8 quantized from it."""
    extra = {"include_target": options.include_target}
    fp32 = export_onnx(reference, config, options.input_format,
                       artifact_metadata(config, source_sha, "fp32", options.input_format, **extra))
    report: dict[str, Any] = {}
    images = parity.parity_images(config, options.parity_data) if options.verify else None
    if images is not None:
        report["fp32"] = _verify_against_torch(reference, fp32, config, options, "fp32", images)
    if options.precision == "fp32":
        return fp32, report
    if options.precision == "fp16":
        model = export_onnx(reference, config, options.input_format,
                            artifact_metadata(config, source_sha, "fp16", options.input_format, **extra), fp16=True)
        if images is not None:
            report["fp16"] = _verify_against_torch(reference, model, config, options, "fp16", images)
        return model, report
    flavour = options.int8_target or ("tensorrt" if options.wants_engine else "cpu")
    model, report["int8"] = calibrate(fp32, config, options.input_format, options.calib_data, flavour,
                                      options.calibration_method, options.num_images, options.max_drift,
                                      options.cache_dir, verify=options.verify, fallback_data=options.parity_data)
    return model, report


def _verify_against_torch(reference, model, config, options: ExportOptions, precision: str,
                          images: parity.ParityImages) -> dict[str, float]:
    inputs = contract.to_input(images.images, config, options.input_format)
    metrics = parity.compare(parity.run_torch(reference, inputs), parity.run_onnx(model.SerializeToString(), inputs),
                             images.real)
    parity.gate(metrics, parity.limits_for(precision, config), f"{options.checkpoint}")
    return metrics


def summarize(paths: list[Path]) -> str:
    return ", ".join(f"{p} ({p.stat().st_size / 1e6:.1f} MB)" for p in paths if p.exists())

