"""Export formats as one table, like Ultralytics' ``export_formats()``: each entry says where it writes the graph
(and engine), which options it reads, whether it builds a TensorRT engine and which serving files it adds. Adding
a format is one ``Format`` entry plus its writer; the exporter and the CLI read everything else from here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from akd.deploy.serving import PYTHON_BACKEND_MODEL, deepstream_config

if TYPE_CHECKING:
    from akd.deploy.exporter import ExportOptions

PRECISIONS = ("fp32", "fp16", "int8")
# options (argparse names) that only some formats/precisions read: one given where it is not read is refused
ENGINE_OPTIONS = frozenset({"batch", "workspace", "timing_cache", "dla_core", "version_compatible",
                            "hardware_compatibility"})
TRITON_OPTIONS = frozenset({"batch", "triton_name", "triton_platform", "triton_instances", "triton_kind",
                            "triton_queue_delay_us", "triton_ort_tensorrt"})
INT8_OPTIONS = frozenset({"calib_data", "int8_target", "calibration_method", "num_images", "max_drift", "cache_dir"})
PARITY_OPTIONS = frozenset({"parity_data"})
SELECTIVE_OPTIONS = ENGINE_OPTIONS | TRITON_OPTIONS | INT8_OPTIONS | PARITY_OPTIONS


@dataclass(frozen=True)
class ServingInputs:
    """What serving files are written from, known only once the graph exists."""

    metadata: dict[str, str]
    config: dict[str, Any]
    graph: Path
    triton_config: str | None


def _beside_checkpoint(options: ExportOptions) -> tuple[Path, Path]:
    """``surrogate.onnx`` / ``surrogate.fp16.onnx`` / ``surrogate.int8.onnx`` next to the checkpoint or under
    ``--out`` (or ``--out`` itself when it names a .onnx file); the engine beside the graph."""
    suffix = "" if options.precision == "fp32" else f".{options.precision}"
    checkpoint = Path(options.checkpoint)
    if options.out and options.out.endswith(".onnx"):
        graph = Path(options.out)
    else:
        folder = Path(options.out) if options.out else checkpoint.parent
        graph = folder / f"{checkpoint.name.removesuffix('.safetensors')}{suffix}.onnx"
    return graph, graph.with_suffix(".engine")


def _no_files(options: ExportOptions, graph: Path) -> list[Path]:
    return []


def _no_texts(options: ExportOptions, inputs: ServingInputs) -> list[str]:
    return []


def _labels(config: dict[str, Any]) -> str:
    return "\n".join(config["classes"]) + "\n"


def _triton_paths(options: ExportOptions) -> tuple[Path, Path]:
    """REPO/<name>/1/model.onnx, or for tensorrt_plan the plan there and its source graph beside the version."""
    folder = Path(options.out) / options.triton.name
    if options.triton.platform == "tensorrt_plan":
        return folder / "model.onnx", folder / "1" / "model.plan"
    return folder / "1" / "model.onnx", folder / "model.engine"


def _triton_files(options: ExportOptions, graph: Path) -> list[Path]:
    folder = Path(options.out) / options.triton.name
    python = [folder / "1" / "model.py"] if options.triton.platform == "python" else []
    return [folder / "config.pbtxt", folder / "labels.txt", *python]


def _triton_texts(options: ExportOptions, inputs: ServingInputs) -> list[str]:
    python = [PYTHON_BACKEND_MODEL] if options.triton.platform == "python" else []
    return [inputs.triton_config or "", _labels(inputs.config), *python]


def _triton_reads(options: ExportOptions) -> frozenset[str]:
    engine = ENGINE_OPTIONS if options.triton.platform == "tensorrt_plan" else frozenset()
    ort = frozenset() if options.triton.platform == "onnxruntime_onnx" else {"triton_ort_tensorrt"}
    return (TRITON_OPTIONS - ort) | engine


def _deepstream_files(options: ExportOptions, graph: Path) -> list[Path]:
    return [graph.with_suffix(".nvinfer.txt"), graph.with_suffix(".labels.txt")]


def _deepstream_texts(options: ExportOptions, inputs: ServingInputs) -> list[str]:
    batch = options.engine.batch[1]
    # nvinfer builds the engine from the graph on first run and serialises it under this (its own) name
    engine = f"{inputs.graph.name}_b{batch}_gpu0_{options.precision}.engine"
    labels = inputs.graph.with_suffix(".labels.txt").name
    return [deepstream_config(inputs.metadata, inputs.graph.name, engine, batch, labels), _labels(inputs.config)]


@dataclass(frozen=True)
class Format:
    name: str
    writes: str  # for --help
    reads: Callable[[ExportOptions], frozenset[str]]  # the selective options this export takes
    builds_engine: Callable[[ExportOptions], bool]
    paths: Callable[[ExportOptions], tuple[Path, Path]] = _beside_checkpoint  # (graph, engine)
    serving_files: Callable[[ExportOptions, Path], list[Path]] = _no_files  # checked before any work
    serving_texts: Callable[[ExportOptions, ServingInputs], list[str]] = _no_texts  # in serving_files' order
    needs_out: bool = False


FORMATS = {entry.name: entry for entry in (
    Format("onnx", "the fused graph", lambda o: frozenset(), lambda o: False),
    Format("engine", "the graph and a TensorRT engine (+ .engine.json)", lambda o: ENGINE_OPTIONS, lambda o: True),
    Format("all", "the same as engine: the graph and the engine", lambda o: ENGINE_OPTIONS, lambda o: True),
    Format("triton", "a Triton model repository (the folder --out)", _triton_reads,
           lambda o: o.triton.platform == "tensorrt_plan", _triton_paths, _triton_files, _triton_texts, True),
    Format("deepstream", "the graph + an nvinfer config and labels", lambda o: frozenset({"batch"}),
           lambda o: False, serving_files=_deepstream_files, serving_texts=_deepstream_texts),
)}


def ignored_options(given: set[str], options: ExportOptions) -> list[str]:
    """Which of the options ``given`` this export would not read, so a --dla-core with --format onnx is refused
    rather than dropped."""
    takes = set(FORMATS[options.format].reads(options))
    if options.precision == "int8":
        takes |= INT8_OPTIONS
    if options.verify:
        takes |= PARITY_OPTIONS
    return sorted(given & SELECTIVE_OPTIONS - takes)
