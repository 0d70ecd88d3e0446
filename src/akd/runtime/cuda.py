"""The pinned-memory / CUDA-stream pipeline shared by the GPU backends (TensorRT and torch).

A *slot* owns page-locked host buffers, device buffers, one CUDA stream and four events. ``SlotPipeline.run``
keeps up to ``len(slots)`` batches in flight: for each batch it fills a slot's pinned input, enqueues
H2D copy -> compute -> D2H copy on that slot's stream and only then waits for the oldest slot, so one slot's
copies overlap another's compute. Backends supply just the compute step.

Three bindings implement the few CUDA calls needed: cuda-python (``cuda.bindings``, what NVIDIA's TensorRT samples
use), pycuda (accepted when cuda-python is absent), and torch (for the torch backend, whose tensors already live in
torch's allocator). All imports are lazy.
"""

from __future__ import annotations

import ctypes
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from akd import contract
from akd.util import AkdError


class CudaPython:
    """cuda-python runtime API (``cuda.bindings.runtime``); every call returns (error, value...)."""

    name = "cuda-python"

    def __init__(self):
        from cuda.bindings import runtime

        self.rt = runtime

    def _check(self, result):
        error, *values = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            raise AkdError(f"CUDA error {self.rt.cudaGetErrorString(error)[1]!r}")
        return values[0] if len(values) == 1 else values

    def pinned(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        pointer = self._check(self.rt.cudaMallocHost(nbytes))
        raw = (ctypes.c_byte * nbytes).from_address(int(pointer))
        return np.frombuffer(raw, dtype=dtype).reshape(shape)  # lives as long as the process (runners are long-lived)

    def device(self, nbytes: int):
        return self._check(self.rt.cudaMalloc(nbytes))

    def pointer(self, buffer) -> int:
        return int(buffer)

    def stream(self):
        return self._check(self.rt.cudaStreamCreate())

    def stream_handle(self, stream) -> int:
        return int(stream)

    def h2d(self, device, host: np.ndarray, stream) -> None:
        self._check(self.rt.cudaMemcpyAsync(int(device), host.ctypes.data, host.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def d2h(self, host: np.ndarray, device, stream) -> None:
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, int(device), host.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def event(self):
        return self._check(self.rt.cudaEventCreate())

    def record(self, event, stream) -> None:
        self._check(self.rt.cudaEventRecord(event, stream))

    def synchronize(self, stream) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream))

    def elapsed_ms(self, start, end) -> float:
        return float(self._check(self.rt.cudaEventElapsedTime(start, end)))


class PyCuda:
    """pycuda's driver API, for machines that have pycuda and not cuda-python."""

    name = "pycuda"

    def __init__(self):
        import pycuda.autoinit  # noqa: F401 - creates the context
        import pycuda.driver as driver

        self.driver = driver

    def pinned(self, shape, dtype) -> np.ndarray:
        return self.driver.pagelocked_empty(shape, dtype)

    def device(self, nbytes: int):
        return self.driver.mem_alloc(nbytes)

    def pointer(self, buffer) -> int:
        return int(buffer)

    def stream(self):
        return self.driver.Stream()

    def stream_handle(self, stream) -> int:
        return int(stream.handle)

    def h2d(self, device, host, stream) -> None:
        self.driver.memcpy_htod_async(device, host, stream)

    def d2h(self, host, device, stream) -> None:
        self.driver.memcpy_dtoh_async(host, device, stream)

    def event(self):
        return self.driver.Event()

    def record(self, event, stream) -> None:
        event.record(stream)

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def elapsed_ms(self, start, end) -> float:
        return float(end.time_since(start))


class TorchCuda:
    """torch's CUDA allocator, streams and events; device buffers are flat uint8 tensors."""

    name = "torch"

    def __init__(self, device: int = 0):
        import torch

        self.torch = torch
        self.device_index = device

    def pinned(self, shape, dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        tensor = self.torch.empty(nbytes, dtype=self.torch.uint8).pin_memory()
        return tensor.numpy().view(dtype).reshape(shape)

    def device(self, nbytes: int):
        return self.torch.empty(nbytes, dtype=self.torch.uint8, device=f"cuda:{self.device_index}")

    def pointer(self, buffer) -> int:
        return int(buffer.data_ptr())

    def stream(self):
        return self.torch.cuda.Stream(device=self.device_index)

    def stream_handle(self, stream) -> int:
        return int(stream.cuda_stream)

    def h2d(self, device, host, stream) -> None:
        with self.torch.cuda.stream(stream):
            device[: host.nbytes].copy_(self.torch.from_numpy(host.reshape(-1).view(np.uint8)), non_blocking=True)

    def d2h(self, host, device, stream) -> None:
        with self.torch.cuda.stream(stream):
            self.torch.from_numpy(host.reshape(-1).view(np.uint8)).copy_(device[: host.nbytes], non_blocking=True)

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, event, stream) -> None:
        event.record(stream)

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def elapsed_ms(self, start, end) -> float:
        return float(start.elapsed_time(end))


def cuda_api(prefer: str = "auto"):
    """cuda-python first, then pycuda; ``prefer='torch'`` for the torch backend."""
    if prefer == "torch":
        return TorchCuda()
    errors = []
    for binding in (CudaPython, PyCuda):
        try:
            return binding()
        except ImportError as exc:
            errors.append(f"{binding.name}: {exc}")
    raise AkdError("the TensorRT backend needs cuda-python ('pip install cuda-python') or pycuda; "
                   + "; ".join(errors))


@dataclass
class Slot:
    host_in: np.ndarray
    device_in: Any
    host_out: dict[str, np.ndarray]
    device_out: dict[str, Any]
    stream: Any
    events: list[Any]
    state: dict[str, Any] = field(default_factory=dict)  # backend-owned (e.g. a TensorRT execution context)


@dataclass
class OutputSpec:
    shape: tuple[int, ...]  # per sample
    dtype: Any


def contract_outputs(config: dict[str, Any]) -> dict[str, OutputSpec]:
    """Per-sample shapes and dtypes of the fused graph's outputs (``akd.contract``), for sizing pinned and device
    buffers."""
    return {name: OutputSpec(shape, dtype) for name, (dtype, shape) in contract.output_specs(config).items()}


class SlotPipeline:
    """Batches in flight over ``slots`` slots. ``compute(slot, n)`` enqueues the model on ``slot.stream`` reading
    ``slot.device_in`` and writing ``slot.device_out`` for the first ``n`` samples."""

    def __init__(self, api, max_batch: int, input_shape: tuple[int, ...], input_dtype,
                 outputs: dict[str, OutputSpec], compute: Callable[[Slot, int], None], slots: int = 2,
                 prepare: Callable[[Slot], None] | None = None):
        if slots < 1:
            raise AkdError("the pipeline needs at least one slot")
        self.api, self.max_batch, self.compute = api, max_batch, compute
        self.input_shape, self.input_dtype, self.outputs = input_shape, np.dtype(input_dtype), outputs
        self.slots = [self._make_slot() for _ in range(slots)]
        for slot in self.slots:
            if prepare is not None:
                prepare(slot)
        self.lock = threading.Lock()

    def _make_slot(self) -> Slot:
        api = self.api
        host_in = api.pinned((self.max_batch, *self.input_shape), self.input_dtype)
        host_out = {name: api.pinned((self.max_batch, *spec.shape), spec.dtype) for name, spec in self.outputs.items()}
        return Slot(host_in, api.device(host_in.nbytes), host_out,
                    {name: api.device(array.nbytes) for name, array in host_out.items()},
                    api.stream(), [api.event() for _ in range(4)])

    def _enqueue(self, slot: Slot, batch: np.ndarray) -> int:
        n = len(batch)
        if n > self.max_batch:
            raise AkdError(f"batch of {n} exceeds the pipeline's maximum {self.max_batch}")
        api = self.api
        slot.host_in[:n] = batch
        start, copied_in, computed, copied_out = slot.events
        api.record(start, slot.stream)
        api.h2d(slot.device_in, slot.host_in[:n], slot.stream)
        api.record(copied_in, slot.stream)
        self.compute(slot, n)
        api.record(computed, slot.stream)
        for name, host in slot.host_out.items():
            api.d2h(host[:n], slot.device_out[name], slot.stream)
        api.record(copied_out, slot.stream)
        return n

    def _collect(self, slot: Slot, n: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """(the batch's outputs, its stage times from the slot's CUDA events)."""
        api = self.api
        api.synchronize(slot.stream)
        start, copied_in, computed, copied_out = slot.events
        stage_ms = {"h2d": api.elapsed_ms(start, copied_in), "compute": api.elapsed_ms(copied_in, computed),
                    "d2h": api.elapsed_ms(computed, copied_out)}
        return {name: host[:n].copy() for name, host in slot.host_out.items()}, stage_ms

    def run(self, batches: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Results in input order; at most ``len(slots)`` batches in flight."""
        with self.lock:
            pending: deque[tuple[Slot, int]] = deque()
            for index, batch in enumerate(batches):
                slot = self.slots[index % len(self.slots)]
                if len(pending) == len(self.slots):
                    yield self._collect(*pending.popleft())[0]
                pending.append((slot, self._enqueue(slot, batch)))
            while pending:
                yield self._collect(*pending.popleft())[0]

    def infer(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        with self.lock:
            slot = self.slots[0]
            return self._collect(slot, self._enqueue(slot, batch))
