"""onnxruntime backend: CPU here; TensorRT and CUDA execution providers with IO binding when onnxruntime-gpu is
installed. ``InferenceSession.run`` is thread-safe, so one runner serves many threads."""

from __future__ import annotations

import time

import numpy as np

from akd import contract
from akd.runtime.backends import ModelInfo, Runner
from akd.util import AkdError

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class OnnxRuntimeRunner(Runner):
    def __init__(self, path: str, device: str = "auto", max_batch: int = 32, threads: int | None = None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = [p for p in GPU_PROVIDERS if p in available and device != "cpu"] + ["CPUExecutionProvider"]
        if device == "cuda" and len(providers) == 1:
            raise AkdError("device cuda requested but onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
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
        self.output_names = list(contract.OUTPUTS)
        self.info = ModelInfo(contract.config_of(metadata), metadata.get(contract.INPUT_FORMAT_KEY, "float-nchw"),
                              max_batch, metadata.get(contract.PRECISION_KEY, "fp32"), path,
                              {"backend": "onnxruntime", "providers": self.providers,
                               "int8_flavour": metadata.get(contract.INT8_FLAVOUR_KEY)})

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
            values = self.session.run(self.output_names, {contract.INPUT: batch})
        stage_ms = {"compute": (time.perf_counter() - started) * 1e3}
        return dict(zip(self.output_names, values, strict=True)), stage_ms

    def _release(self) -> None:
        self.session = None
