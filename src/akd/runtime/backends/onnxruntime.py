"""onnxruntime backend: CPU here; TensorRT and CUDA execution providers with IO binding when onnxruntime-gpu is
installed. ``InferenceSession.run`` is thread-safe, so one runner serves many threads."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from akd import contract
from akd.runtime.backends import Inference, ModelInfo, Runner
from akd.util import AkdError

ENGINE_CACHE = Path(os.environ.get("AKD_TRT_CACHE_DIR", Path.home() / ".cache" / "akd" / "onnxruntime-tensorrt"))


def providers_for(available: list[str], device: str, precision: str, cache_dir: Path = ENGINE_CACHE) -> list:
    """onnxruntime's providers, best first. The TensorRT provider keeps its engines and timing cache in
    ``cache_dir`` (a second process loads the engine instead of building it for minutes) and builds fp16 kernels
    for an fp16 graph and int8 ones for a Q/DQ graph."""
    providers: list = []
    if device != "cpu" and "TensorrtExecutionProvider" in available:
        providers.append(("TensorrtExecutionProvider", {
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache_dir),
            "trt_fp16_enable": precision == "fp16", "trt_int8_enable": precision == "int8"}))
    if device != "cpu" and "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    return [*providers, "CPUExecutionProvider"]


def _session(path: str, providers: list, threads: int | None, batch: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if batch is not None:
        options.add_free_dimension_override_by_name(contract.BATCH, batch)
    return ort.InferenceSession(path, options, providers=providers)


class OnnxRuntimeRunner(Runner):
    def __init__(self, path: str, device: str = "auto", max_batch: int = 32, threads: int | None = None):
        import onnxruntime as ort

        try:  # the graph's precision decides the TensorRT provider's kernels, before the session exists
            precision = contract.read_metadata(path).get(contract.PRECISION_KEY, "fp32")
        except (OSError, ValueError, IndexError, UnicodeDecodeError):
            precision = "fp32"  # not an ONNX file: the session below says so in one line
        providers = providers_for(ort.get_available_providers(), device, precision)
        if isinstance(providers[0], tuple):  # the TensorRT provider writes its engine cache there
            ENGINE_CACHE.mkdir(parents=True, exist_ok=True)
        if device == "cuda" and len(providers) == 1:
            raise AkdError("device cuda requested but onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        try:
            self.session = _session(path, providers, threads)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise AkdError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0]})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map  # the graph is parsed once, by onnxruntime
        if contract.CONFIG_KEY not in metadata:
            raise AkdError(f"{path}: not an akd graph (no {contract.CONFIG_KEY} metadata); export it with akd-export")
        missing = set(contract.OUTPUTS) - {o.name for o in self.session.get_outputs()}
        if missing:
            raise AkdError(f"{path}: the graph lacks the outputs {', '.join(sorted(missing))} of the akd contract")
        self.providers = self.session.get_providers()
        self.on_gpu = self.providers[0] != "CPUExecutionProvider"
        # On the CPU, frames one at a time (live video) get a session with the batch fixed at 1: onnxruntime can
        # then prove the backward's tensors the same shape as their masks and keeps the two multiplied in its
        # blocked NCHWc layout instead of reordering both (measured in docs/BENCHMARKS.md).
        dynamic = self.session.get_inputs()[0].shape[0] == contract.BATCH
        self.single = _session(path, providers, threads, batch=1) if dynamic and not self.on_gpu else None
        self.output_names = list(contract.OUTPUTS)
        self.info = ModelInfo(contract.config_of(metadata), metadata.get(contract.INPUT_FORMAT_KEY, "float-nchw"),
                              max_batch, metadata.get(contract.PRECISION_KEY, "fp32"), path,
                              {"backend": "onnxruntime", "providers": self.providers,
                               "int8_flavour": metadata.get(contract.INT8_FLAVOUR_KEY)})
        self._worker = None  # the thread that runs the session, started on the first submit

    def _infer(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        started = time.perf_counter()
        if self.on_gpu:  # IO binding: one host->device copy in, outputs copied back once
            binding = self.session.io_binding()
            binding.bind_cpu_input(contract.INPUT, np.ascontiguousarray(batch))
            for name in self.output_names:
                binding.bind_output(name)
            self.session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            session = self.single if self.single is not None and len(batch) == 1 else self.session
            values = session.run(self.output_names, {contract.INPUT: batch})
        stage_ms = {"compute": (time.perf_counter() - started) * 1e3}
        return dict(zip(self.output_names, values, strict=True)), stage_ms

    # one worker thread runs the session (onnxruntime releases the GIL), so a stream's next batch is preprocessed
    # while this one computes: SaliencyEngine.explain_batches keeps two in flight
    in_flight = 2

    def infer(self, batch: np.ndarray) -> Inference:
        """One batch on the calling thread: with nothing to overlap, a hand-off to the worker only adds latency."""
        self.check_active()
        self.check_input(batch)
        return Inference(*self._infer(batch))

    def _submit(self, batch: np.ndarray):
        from concurrent.futures import ThreadPoolExecutor

        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="akd-onnxruntime")
        return self._worker.submit(self._infer, batch)

    def _collect(self, future) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        return future.result()

    def _release(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        self.session = self.single = None
