"""torch backend: the surrogate itself (the reference, and the GPU check vehicle).

CPU: plain eager inference. CUDA: the shared pinned-memory/stream ``SlotPipeline`` with torch as the CUDA binding,
optional fp16 (convolution and linear weights halved once; autocast for the rest, fp32 where the model pins it)
and CUDA graphs (captured per slot and per batch-size bucket - powers of two up to the maximum - on first use, so
a batch of 1 replays a batch-1 graph). The student keeps its attentive differences on its modules during a
forward pass, so enqueueing a forward is serialised with a lock; the GPU work of different slots still overlaps.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from akd.contract import OUTPUTS
from akd.runtime.backends import ModelInfo, Runner
from akd.util import AkdError


def batch_buckets(max_batch: int) -> list[int]:
    """Batch sizes a CUDA graph is captured for: powers of two below ``max_batch``, and ``max_batch``."""
    return sorted({1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch} | {max_batch})


def bucket_for(n: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``n`` samples."""
    return next(bucket for bucket in buckets if bucket >= n)


class TorchRunner(Runner):
    def __init__(self, path: str, device: str = "auto", max_batch: int = 32, fp16: bool = False,
                 cuda_graphs: bool = False, slots: int = 4, channels_last: bool = False):
        """``path``: a .safetensors surrogate. ``slots``: batches in flight on CUDA; a batch-1 forward is hundreds
        of tiny kernels, so one stream leaves the GPU idle and more slots fill it (docs/BENCHMARKS.md, "GPU").
        ``channels_last``: NHWC activations on CUDA, which pay off at large batches and cost at batch 1."""
        import torch

        from akd.models.deployable import DeployableSurrogate
        from akd.models.surrogate import load_surrogate

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise AkdError("device cuda requested but CUDA is not available")
        if (fp16 or cuda_graphs or channels_last) and device != "cuda":
            raise AkdError("fp16, CUDA graphs and channels_last need the torch backend on a CUDA device")
        surrogate = load_surrogate(path)
        module, config = DeployableSurrogate(surrogate, "float-nchw"), surrogate.config
        self.torch, self.device, self.fp16, self.cuda_graphs = torch, torch.device(device), fp16, cuda_graphs
        self.model = module.eval().to(self.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model.to(memory_format=self.memory_format)
        if fp16:  # convolution and linear weights in half once, so autocast never re-casts them per forward;
            # the network through its first tap stays fp32 (see Student.fp32_through_first_tap)
            student = surrogate.student
            height, width = config["input_size"]
            kept = set(student.modules_through_first_tap(torch.zeros(1, 3, height, width, device=self.device)))
            student.fp32_through_first_tap()  # for the runner's life: the model goes when it closes
            for child in self.model.modules():
                if isinstance(child, (torch.nn.Conv2d, torch.nn.Linear)) and child not in kept:
                    child.half()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes per bucket: pick the fastest kernels once
        self.info = ModelInfo(config, "float-nchw", max_batch, "fp16" if fp16 else "fp32", path,
                              {"backend": "torch", "device": str(self.device), "cuda_graphs": cuda_graphs,
                               "channels_last": channels_last})
        self.lock = threading.Lock()
        self.pipeline = self._cuda_pipeline(slots) if self.device.type == "cuda" else None
        self.in_flight = slots if self.pipeline is not None else 1

    def _forward(self, images):
        torch = self.torch
        # no autocast cache: a CUDA graph must not capture casts cached from an earlier forward
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16, cache_enabled=False):
            return self.model(images.contiguous(memory_format=self.memory_format))

    def _cuda_pipeline(self, slots: int):
        from akd.runtime.cuda import SlotPipeline, TorchCuda, contract_outputs

        torch = self.torch
        height, width = self.info.size
        specs = contract_outputs(self.info.config)
        dtypes = {name: torch.from_numpy(np.zeros(0, spec.dtype)).dtype for name, spec in specs.items()}
        max_batch = self.info.max_batch

        def views(slot):
            images = slot.device_in.view(torch.float32).view(max_batch, 3, height, width)
            outs = {name: slot.device_out[name].view(dtypes[name]).view(max_batch, *specs[name].shape)
                    for name in OUTPUTS}
            return images, outs

        buckets = batch_buckets(max_batch)

        def capture(slot, bucket: int):
            """A CUDA graph of the forward at batch ``bucket`` on this slot's buffers (captured on first use)."""
            images, outs = views(slot)
            with torch.cuda.stream(slot.stream):
                for _ in range(2):  # warm up kernels and allocator on the capture stream
                    self._forward(images[:bucket])
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=slot.stream):
                    for name, value in zip(OUTPUTS, self._forward(images[:bucket]), strict=True):
                        outs[name][:bucket].copy_(value)
            return graph

        def prepare(slot) -> None:
            if self.cuda_graphs:
                views(slot)[0].zero_()  # rows past a batch's n are computed in its bucket: keep them finite
                torch.cuda.synchronize()  # zeroed on the current stream before the slot's stream copies in
                slot.state["graphs"] = {}

        def compute(slot, n: int) -> None:
            with self.lock:  # one Python-side forward (or capture) at a time; kernels run async on the stream
                enqueue(slot, n)

        def enqueue(slot, n: int) -> None:
            images, outs = views(slot)
            if self.cuda_graphs:
                bucket = bucket_for(n, buckets)  # batch-1 video replays a batch-1 graph, not a batch-32 one
                graphs = slot.state["graphs"]
                if bucket not in graphs:
                    graphs[bucket] = capture(slot, bucket)
                with torch.cuda.stream(slot.stream):
                    graphs[bucket].replay()  # rows n..bucket are stale inputs; their outputs are never copied back
                return
            with torch.cuda.stream(slot.stream):
                for name, value in zip(OUTPUTS, self._forward(images[:n]), strict=True):
                    outs[name][:n].copy_(value)

        return SlotPipeline(TorchCuda(self.device.index or 0), max_batch, (3, height, width), np.float32, specs,
                            compute, slots=slots, prepare=prepare)

    def _submit(self, batch: np.ndarray):
        if self.pipeline is not None:
            return self.pipeline.submit(np.ascontiguousarray(batch, dtype=np.float32))
        return self._infer(batch)

    def _collect(self, handle) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        return self.pipeline.collect(handle) if self.pipeline is not None else handle

    def _infer(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        started = time.perf_counter()
        with self.lock:
            values = self._forward(self.torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        outputs = {name: value.numpy() for name, value in zip(OUTPUTS, values, strict=True)}
        return outputs, {"compute": (time.perf_counter() - started) * 1e3}

    def run(self, batches):
        """Overlapped stream of results on CUDA (copies of one batch under the compute of another)."""
        if self.pipeline is None:
            yield from (self.infer(batch).outputs for batch in batches)
            return
        yield from self.pipeline.run(np.ascontiguousarray(b, dtype=np.float32) for b in batches)

    def _release(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        self.model = None
        self.pipeline = None
