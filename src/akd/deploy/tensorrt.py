"""TensorRT engines from the precision-annotated graph, plus the ``.engine.json`` sidecar the runtime checks.

TensorRT 11 networks are always strongly typed: precision comes from the graph (fp16 weights, Q/DQ nodes) and the
FP16/INT8 builder flags and calibrator hook no longer exist. TensorRT 10.x is the fallback: a weakly typed network
with FP16/INT8 builder flags and, for an int8 build from a graph without Q/DQ nodes, an IInt8EntropyCalibrator2
fed by the same image reader akd-calibrate uses. ``tensorrt`` is imported only inside these functions.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import akd
from akd import contract
from akd.runtime.backends.tensorrt import cuda_device, require_tensorrt, sidecar_for
from akd.util import AkdError, atomic_path, sha256_file

log = logging.getLogger(__name__)

HARDWARE_LEVELS = {"none": "NONE", "ampere-plus": "AMPERE_PLUS", "same-compute-capability": "SAME_COMPUTE_CAPABILITY"}
# ONNX ops the TensorRT 10/11 ONNX parser is known to import; anything else in a graph draws a warning.
TENSORRT_ONNX_OPS = frozenset("""
Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape Conv
ConvTranspose DequantizeLinear Div Einsum Elu Equal Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gelu
Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GroupNormalization HardSigmoid HardSwish Identity If
InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax MatMul Max MaxPool Mean Min Mod
Mul Neg Not Or Pad Pow PRelu QuantizeLinear Range Reciprocal ReduceL1 ReduceL2 ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize Round ScatterElements ScatterND Selu Shape Sigmoid
Sign Sin Size Slice Softmax Softplus Softsign Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Trilu Unsqueeze
Where Xor
""".split())


@dataclass
class EngineOptions:
    precision: str = "fp16"
    batch: tuple[int, int, int] = (1, 8, 32)
    workspace_mb: int = 2048
    timing_cache: str | None = None
    dla_core: int | None = None
    version_compatible: bool = False
    hardware_compatibility: str = "none"
    calib_data: str | None = None
    num_images: int = 512


@dataclass
class BuildPlan:
    """What the builder must be told for a TensorRT major version, precision and graph."""

    strongly_typed: bool
    flags: list[str] = field(default_factory=list)
    use_calibrator: bool = False


def tensorrt_major(version: str) -> int:
    return int(version.split(".")[0])


def plan_build(major: int, precision: str, has_qdq: bool, options: EngineOptions) -> BuildPlan:
    """TensorRT 11: strongly typed, no precision flags. TensorRT 10: builder flags; a calibrator only for an int8
    build from a graph without Q/DQ nodes (implicit quantization, deprecated in 10 and gone in 11)."""
    if major < 10:
        raise AkdError(f"TensorRT {major}.x is too old: akd builds with TensorRT 10.x or 11.x")
    extra = []
    if options.dla_core is not None:
        extra.append("GPU_FALLBACK")
    if options.version_compatible:
        extra.append("VERSION_COMPATIBLE")
    if major >= 11:
        if precision == "int8" and not has_qdq:
            raise AkdError("TensorRT 11 needs INT8 as Q/DQ nodes in the graph: export with --precision int8")
        return BuildPlan(strongly_typed=True, flags=extra)
    flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]
    use_calibrator = precision == "int8" and not has_qdq
    if use_calibrator and not options.calib_data:
        raise AkdError("an INT8 TensorRT 10 build from a graph without Q/DQ nodes needs --calib-data")
    return BuildPlan(strongly_typed=False, flags=flags + extra, use_calibrator=use_calibrator)


def check_operators(model) -> list[str]:
    """Op types in the graph that TensorRT's ONNX parser is not known to support (warned, not fatal)."""
    unknown = sorted({node.op_type for node in model.graph.node} - TENSORRT_ONNX_OPS)
    for op in unknown:
        log.warning("op %s is not in TensorRT's ONNX operator support list; the engine build may fail", op)
    return unknown


def sidecar(onnx_path: Path, options: EngineOptions, tensorrt_version: str, device: dict[str, Any],
            metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "format": "akd-engine", contract.VERSION_KEY: akd.__version__, "tensorrt_version": tensorrt_version,
        "gpu_name": device["name"], "compute_capability": device["compute_capability"],
        "precision": options.precision, "int8_flavour": metadata.get(contract.INT8_FLAVOUR_KEY),
        "input_format": metadata.get(contract.INPUT_FORMAT_KEY),
        "profile": {"min": options.batch[0], "opt": options.batch[1], "max": options.batch[2]},
        "source_onnx": str(onnx_path), "source_sha256": sha256_file(onnx_path),
        "dla_core": options.dla_core, "version_compatible": options.version_compatible,
        "hardware_compatibility": options.hardware_compatibility,
        "config": contract.config_of(metadata) if contract.CONFIG_KEY in metadata else None,
    }


def build_engine(onnx_path: Path, engine_path: Path, options: EngineOptions) -> list[Path]:
    """Parse, configure, build, serialise; engine and sidecar are written atomically. Returns the paths."""
    import onnx

    require_tensorrt()
    import tensorrt as trt

    device = cuda_device()
    model = onnx.load_model(str(onnx_path), load_external_data=False)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    check_operators(model)
    has_qdq = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    plan = plan_build(tensorrt_major(trt.__version__), options.precision, has_qdq, options)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    creation_flags = 0
    if plan.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        creation_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(creation_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise AkdError(f"{onnx_path}: TensorRT could not parse the graph: {errors}")

    config, profile = _builder_config(trt, builder, network, plan, options)
    if plan.use_calibrator:
        config.set_calibration_profile(profile)
        config.int8_calibrator = entropy_calibrator(onnx_path, metadata, options)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise AkdError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    side = sidecar_for(engine_path)
    with atomic_path(side) as tmp:
        tmp.write_text(json.dumps(sidecar(onnx_path, options, trt.__version__, device, metadata), indent=2))
    written = [engine_path, side]
    if options.timing_cache:
        with atomic_path(options.timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        written.append(Path(options.timing_cache))
    print(f"akd-export: TensorRT {trt.__version__} engine for {device['name']}: {engine_path}", file=sys.stderr)
    return written


def _batch_profile(builder, network, options: EngineOptions):
    """The optimisation profile over the batch dimension (``--batch MIN,OPT,MAX``)."""
    profile = builder.create_optimization_profile()
    image_input = network.get_input(0)
    sample_shape = tuple(image_input.shape)[1:]
    low, opt, high = options.batch
    profile.set_shape(image_input.name, (low, *sample_shape), (opt, *sample_shape), (high, *sample_shape))
    return profile


def _builder_config(trt, builder, network, plan: BuildPlan, options: EngineOptions):
    """(builder config, its batch profile): workspace, precision flags, the profile, DLA, hardware compatibility,
    the timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = _batch_profile(builder, network, options)
    config.add_optimization_profile(profile)
    if options.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
    level = HARDWARE_LEVELS.get(options.hardware_compatibility)
    if level is None:
        raise AkdError(f"--hardware-compatibility must be one of {', '.join(HARDWARE_LEVELS)}")
    if not hasattr(trt.HardwareCompatibilityLevel, level):  # SAME_COMPUTE_CAPABILITY arrived in TensorRT 10.9
        raise AkdError(f"--hardware-compatibility {options.hardware_compatibility} needs a newer TensorRT than "
                       f"{trt.__version__}")
    config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)
    cache_bytes = Path(options.timing_cache).read_bytes() if options.timing_cache and \
        os.path.isfile(options.timing_cache) else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    return config, profile


def entropy_calibrator(onnx_path: Path, metadata: dict[str, str], options: EngineOptions):
    """TensorRT 10.x implicit INT8: an IInt8EntropyCalibrator2 over akd's calibration image reader, with a cache
    file next to the engine so rebuilds skip calibration."""
    import numpy as np
    import tensorrt as trt
    import torch

    from akd.deploy.calibration import ImageCalibrationReader, calibration_data

    assert options.calib_data is not None  # plan_build requires it for this path
    config = contract.config_of(metadata)
    data = calibration_data(options.calib_data, options.num_images)
    reader = ImageCalibrationReader(data.samples, config, metadata.get(contract.INPUT_FORMAT_KEY, "float-nchw"))
    cache_path = Path(str(onnx_path) + f".{data.fingerprint[:16]}.calib")
    batch_size = options.batch[1]  # TensorRT calibrates at the calibration profile's OPT shape, exactly

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.device_batch: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            images: list[np.ndarray] = []
            while len(images) < batch_size and (item := reader.get_next()) is not None:
                images.append(item[contract.INPUT])
            if len(images) < batch_size:  # a partial last batch would not match the profile: calibration ends
                return None
            batch = np.concatenate(images)
            self.device_batch = torch.from_numpy(batch).cuda()
            return [int(self.device_batch.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: memoryview) -> None:
            with atomic_path(cache_path) as tmp:
                tmp.write_bytes(bytes(cache))

    return Calibrator()
