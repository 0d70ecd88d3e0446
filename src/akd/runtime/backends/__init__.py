"""Backends behind one interface, with Polygraphy's runner habits: an explicit lifecycle (a runner is active from
construction until ``close()``, also as a context manager; a closed runner refuses with one clear line), inputs
checked against the model's metadata, and each call's stage times returned with its outputs (no shared mutable
state). ``infer(batch) -> Inference(outputs, stage_ms)`` on a batch already in the model's input format. Backends
register by name and file suffix; heavy imports live in each backend module."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from akd import contract
from akd.util import AkdError, Registry

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


class Inference(NamedTuple):
    outputs: dict[str, np.ndarray]  # the contract's outputs for the batch
    stage_ms: dict[str, float]  # this call's own stage times (compute; h2d/compute/d2h on a CUDA pipeline)


class Runner(abc.ABC):
    """Base of every backend: subclasses set ``info`` and implement ``_infer`` (asynchronous ones also override
    ``_submit``/``_collect``; ``_release`` if they hold sessions, contexts or connections)."""

    info: ModelInfo
    active = True
    in_flight = 1  # batches ``submit`` can hold before ``collect``: the CUDA pipelines' slot count

    def infer(self, batch: np.ndarray) -> Inference:
        """One batch, start to finish."""
        return self.collect(self.submit(batch))

    def submit(self, batch: np.ndarray) -> Any:
        """Start a batch and return a handle for ``collect``: the CUDA pipelines return at once (copies and compute
        run on a stream), the onnxruntime runner hands it to its worker thread, the other backends finish here."""
        self.check_active()
        self.check_input(batch)
        return self._submit(batch)

    def collect(self, handle: Any) -> Inference:
        outputs, stage_ms = self._collect(handle)
        return Inference(outputs, stage_ms)

    def _submit(self, batch: np.ndarray) -> Any:
        return self._infer(batch)

    def _collect(self, handle: Any) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        return handle

    def check_active(self) -> None:
        if not self.active:
            raise AkdError(f"{self.info.source}: this runner was closed")

    def check_input(self, batch: np.ndarray) -> None:
        """The batch must be what the graph takes: its dtype, per-sample shape and at most ``max_batch`` samples."""
        dtype, shape = contract.input_spec(self.info.config, self.info.input_format)
        if not isinstance(batch, np.ndarray) or batch.dtype != dtype or tuple(batch.shape[1:]) != shape:
            got = f"{batch.shape} {batch.dtype}" if isinstance(batch, np.ndarray) else type(batch).__name__
            raise AkdError(f"{self.info.source}: expected a batch of {dtype.__name__} (N, "
                           f"{', '.join(map(str, shape))}) ({self.info.input_format}), got {got}")
        if not 1 <= len(batch) <= self.info.max_batch:
            raise AkdError(f"{self.info.source}: a batch of {len(batch)} images; this model takes 1 to "
                           f"{self.info.max_batch}")

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """(outputs, stage times) of one batch, synchronously."""

    def _release(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Free what the backend holds; the default holds nothing."""

    def close(self) -> None:
        if self.active:
            self._release()
            self.active = False

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


RunnerLoader = Callable[..., Runner]  # (path, device, **options) -> an active runner
BACKEND_LOADERS: Registry = Registry()  # the table open_runner picks from
BACKEND_SUFFIXES: dict[str, str] = {}  # file suffix -> the backend that loads it


def register_backend(name: str, suffixes: tuple[str, ...] = ()) -> Callable[[RunnerLoader], RunnerLoader]:
    """Add a backend and the file suffixes it loads."""
    BACKEND_SUFFIXES.update(dict.fromkeys(suffixes, name))
    return BACKEND_LOADERS.register(name)


@register_backend("onnxruntime", (".onnx",))
def _onnxruntime(path: str, device: str, **options: Any) -> Runner:
    from akd.runtime.backends.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, device, **options)


@register_backend("tensorrt", (".engine", ".plan"))
def _tensorrt(path: str, device: str, **options: Any) -> Runner:  # an engine runs on the GPU it was built for
    from akd.runtime.backends.tensorrt import TensorRTRunner

    return TensorRTRunner(path, **options)


@register_backend("torch", (".safetensors",))
def _torch(path: str, device: str, **options: Any) -> Runner:
    try:
        from akd.runtime.backends.torch import TorchRunner

        return TorchRunner(path, device, **options)
    except ModuleNotFoundError as exc:  # the runtime-only install: numpy, OpenCV and an inference runtime
        if exc.name not in TRAIN_STACK:
            raise
        raise AkdError(f"{path}: a .safetensors surrogate runs through PyTorch ({exc.name} is not installed): "
                       "pip install 'akd[train]', or give an exported .onnx/.engine graph") from None


@register_backend("triton")
def _triton(path: str, device: str, **options: Any) -> Runner:  # the server picks its own device
    from akd.runtime.backends.triton import TritonRunner

    return TritonRunner(path, **options)


BACKENDS = ("auto", *BACKEND_LOADERS)


def open_runner(path: str, backend: str = "auto", device: str = "auto", **options: Any) -> Runner:
    """Pick the backend from the file type unless told: .onnx -> onnxruntime, .engine -> tensorrt,
    .safetensors -> torch; a grpc://HOST:PORT/MODEL address -> a Triton server."""
    if backend not in BACKENDS:
        raise AkdError(f"backend must be one of {', '.join(BACKENDS)}, not '{backend}'")
    if path.startswith("grpc://") or backend == "triton":
        return BACKEND_LOADERS["triton"](path, device, **options)
    suffix = Path(path).suffix.lower()
    natural = BACKEND_SUFFIXES.get(suffix)
    if natural is None:
        raise AkdError(f"{path}: unknown model type (expected {', '.join(sorted(BACKEND_SUFFIXES))})")
    chosen = natural if backend == "auto" else backend
    if chosen != natural:
        raise AkdError(f"{path}: the {chosen} backend cannot load a {suffix} file (it needs the {natural} backend)")
    if not Path(path).is_file():
        raise AkdError(f"{path}: model not found")
    return BACKEND_LOADERS[chosen](path, device, **options)
