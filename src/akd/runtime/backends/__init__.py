"""Backends behind one interface (Polygraphy's runner idea): ``infer(batch) -> {output name: array}`` on a batch
already in the model's input format, plus ``info`` and ``close()``. Heavy imports live in each backend module."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from akd.util import AkdError

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch", "triton")
TRAIN_STACK = frozenset({"torch", "torchvision", "timm", "safetensors", "scipy", "skimage", "PIL", "yaml"})


@dataclass
class ModelInfo:
    config: dict[str, Any]
    input_format: str  # float-nchw | uint8-nhwc
    max_batch: int
    precision: str
    source: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def execution_path(self) -> str:
        """Where inference really runs, so a silent CPU fallback is visible: the backend and its provider/device."""
        details = self.details
        if "providers" in details:
            return f"onnxruntime, {details['providers'][0]}"
        if details.get("backend") == "tensorrt":
            return f"TensorRT {details.get('tensorrt')} on {details.get('gpu')}"
        if details.get("backend") == "torch":
            return f"torch on {details.get('device')}" + (", CUDA graphs" if details.get("cuda_graphs") else "")
        return f"Triton server ({details.get('platform')})" if "platform" in details else str(details)

    @property
    def size(self) -> tuple[int, int]:
        height, width = self.config["input_size"]
        return int(height), int(width)


class Runner(Protocol):
    info: ModelInfo
    last_stage_ms: dict[str, float]

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def open_runner(path: str, backend: str = "auto", device: str = "auto", **options: Any) -> Runner:
    """Pick the backend from the file type unless told: .onnx -> onnxruntime, .engine -> tensorrt,
    .safetensors -> torch; a grpc://HOST:PORT/MODEL address -> a Triton server."""
    if backend not in BACKENDS:
        raise AkdError(f"backend must be one of {', '.join(BACKENDS)}, not '{backend}'")
    if path.startswith("grpc://") or backend == "triton":
        from akd.runtime.backends.triton import TritonRunner

        return TritonRunner(path, **options)
    suffix = Path(path).suffix.lower()
    natural = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".safetensors": "torch"}.get(suffix)
    if natural is None:
        raise AkdError(f"{path}: unknown model type (expected .onnx, .engine or .safetensors)")
    chosen = natural if backend == "auto" else backend
    if chosen != natural:
        raise AkdError(f"{path}: the {chosen} backend cannot load a {suffix} file (it needs the {natural} backend)")
    if not Path(path).is_file():
        raise AkdError(f"{path}: model not found")
    if chosen == "onnxruntime":
        from akd.runtime.backends.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, device, **options)
    if chosen == "tensorrt":
        from akd.runtime.backends.tensorrt import TensorRTRunner

        return TensorRTRunner(path, **options)
    from akd.runtime.backends.torch import TorchRunner

    try:
        return TorchRunner(path, device, **options)
    except ModuleNotFoundError as exc:  # the runtime-only install: numpy, OpenCV and an inference runtime
        if exc.name not in TRAIN_STACK:
            raise
        raise AkdError(f"{path}: a .safetensors surrogate runs through PyTorch ({exc.name} is not installed): "
                       "pip install 'akd[train]', or give an exported .onnx/.engine graph") from None
