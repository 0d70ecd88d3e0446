"""The pinned-memory / CUDA-stream pipeline shared by the GPU backends (TensorRT and torch).

A *slot* owns page-locked host buffers, device buffers, one non-blocking CUDA stream and four events.
``SlotPipeline.submit`` takes a free slot, fills its pinned input and enqueues H2D copy -> compute -> D2H copy on
its stream without waiting; ``collect`` waits for that slot alone and frees it. So a caller (``run``, or the
engine's video loop, or several threads) keeps up to ``len(slots)`` batches in flight: one slot's copies and the
host's preprocessing overlap another's compute. No lock is held while a batch is in flight. Backends supply
just the compute step.

Two bindings implement the few CUDA calls needed, both on the device's primary context (the one torch and
TensorRT use, so buffers and streams are valid in every thread): cuda-python (``cuda.bindings``, what NVIDIA's
TensorRT samples use) and torch (for the torch backend, whose tensors already live in torch's allocator). pycuda
is not used: ``pycuda.autoinit`` makes a second context whose buffers other threads and libraries cannot use.
All imports are lazy.
"""

from __future__ import annotations

import ctypes
import queue
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

    def stream(self):  # non-blocking: never serialised behind the legacy default stream
        return self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking))

    def stream_handle(self, stream) -> int:
        return int(stream)

    def release(self, slot: Slot) -> None:
        """Free what ``pinned``/``device``/``stream``/``event`` made for the slot."""
        for array in (slot.host_in, *slot.host_out.values()):
            self._check(self.rt.cudaFreeHost(array.ctypes.data))
        for buffer in (slot.device_in, *slot.device_out.values()):
            self._check(self.rt.cudaFree(buffer))
        for event in slot.events:
            self._check(self.rt.cudaEventDestroy(event))
        self._check(self.rt.cudaStreamDestroy(slot.stream))

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

    def identity(self) -> dict[str, str]:
        """The current GPU's name and compute capability (what an engine's sidecar records)."""
        error, count = self.rt.cudaGetDeviceCount()
        if int(error) != 0 or count == 0:
            raise AkdError("TensorRT engines need an NVIDIA GPU, and CUDA is not available here")
        device = self._check(self.rt.cudaGetDevice())
        properties = self._check(self.rt.cudaGetDeviceProperties(device))
        name = properties.name
        name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
        return {"name": name, "compute_capability": f"{properties.major}.{properties.minor}"}


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

    def release(self, slot: Slot) -> None:  # torch's caching allocator frees tensors when dropped
        pass


def cuda_api(prefer: str = "auto"):
    """cuda-python (its runtime API works on the primary context); ``prefer='torch'`` for the torch backend."""
    if prefer == "torch":
        return TorchCuda()
    try:
        return CudaPython()
    except ImportError as exc:
        raise AkdError(f"the TensorRT backend needs cuda-python: pip install cuda-python ({exc})") from None


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


class Ticket:
    """A batch in flight: its slot and sample count, until ``SlotPipeline.collect`` returns its outputs."""

    def __init__(self, slot: Slot, count: int):
        self.slot, self.count = slot, count


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
        self.slots: list[Slot] = []
        try:
            for _ in range(slots):
                self.slots.append(self._make_slot())
                if prepare is not None:
                    prepare(self.slots[-1])
        except BaseException:
            self.close()
            raise
        self.free: queue.Queue[Slot] = queue.Queue()
        for slot in self.slots:
            self.free.put(slot)

    def _make_slot(self) -> Slot:
        api = self.api
        host_in = api.pinned((self.max_batch, *self.input_shape), self.input_dtype)
        host_out = {name: api.pinned((self.max_batch, *spec.shape), spec.dtype) for name, spec in self.outputs.items()}
        return Slot(host_in, api.device(host_in.nbytes), host_out,
                    {name: api.device(array.nbytes) for name, array in host_out.items()},
                    api.stream(), [api.event() for _ in range(4)])

    def submit(self, batch: np.ndarray) -> Ticket:
        """Enqueue a batch on a free slot (waiting for one when all are in flight) and return at once."""
        n = len(batch)
        if n > self.max_batch:
            raise AkdError(f"batch of {n} exceeds the pipeline's maximum {self.max_batch}")
        slot = self.free.get()
        try:
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
        except BaseException:
            self.free.put(slot)
            raise
        return Ticket(slot, n)

    def collect(self, ticket: Ticket) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Wait for the ticket's slot alone; (its outputs, its stage times from the slot's CUDA events)."""
        slot, api = ticket.slot, self.api
        try:
            api.synchronize(slot.stream)
            start, copied_in, computed, copied_out = slot.events
            stage_ms = {"h2d": api.elapsed_ms(start, copied_in), "compute": api.elapsed_ms(copied_in, computed),
                        "d2h": api.elapsed_ms(computed, copied_out)}
            return {name: host[:ticket.count].copy() for name, host in slot.host_out.items()}, stage_ms
        finally:
            self.free.put(slot)

    def infer(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        return self.collect(self.submit(batch))

    def run(self, batches: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Outputs in input order, up to ``len(slots)`` batches in flight; at each yield one slot is free, so the
        caller may ``infer`` from inside the loop."""
        pending: deque[Ticket] = deque()
        try:
            for batch in batches:
                if len(pending) == len(self.slots):
                    yield self.collect(pending.popleft())[0]
                pending.append(self.submit(batch))
            while pending:
                yield self.collect(pending.popleft())[0]
        finally:
            for ticket in pending:  # an abandoned loop still returns its slots
                self.collect(ticket)

    def close(self) -> None:
        """Free every slot's pinned and device memory, events and stream."""
        for slot in self.slots:
            self.api.release(slot)
        self.slots = []
