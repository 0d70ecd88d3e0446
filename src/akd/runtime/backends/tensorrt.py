"""TensorRT backend: deserialise an engine after checking its ``.engine.json`` sidecar against this machine, then
run it through the shared pinned-memory/stream ``SlotPipeline`` (cuda-python, or pycuda): per slot one execution
context and stream, async H2D -> ``execute_async_v3`` -> async D2H, CUDA events for per-stage times."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from akd.runtime.backends import ModelInfo
from akd.runtime.cuda import OUTPUT_NAMES
from akd.util import AkdError


class TensorRTRunner:
    def __init__(self, path: str, slots: int = 2, binding: str = "auto", max_batch: int | None = None):
        from akd.export.tensorrt import check_sidecar, cuda_device, read_sidecar, require_tensorrt, sidecar_for
        from akd.runtime.cuda import SlotPipeline, contract_outputs, cuda_api

        try:
            version = require_tensorrt()
        except AkdError as exc:
            raise AkdError(f"{path}: cannot load this engine: {exc}") from None
        import tensorrt as trt

        engine_path = Path(path)
        side = read_sidecar(sidecar_for(engine_path))
        check_sidecar(side, version, cuda_device(), engine_path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise AkdError(f"{path}: TensorRT could not deserialise the engine; rebuild it with akd-export")
        config = side["config"]
        profile_max = side["profile"]["max"]
        batch_limit = min(max_batch or profile_max, profile_max)
        self.info = ModelInfo(config, side.get("input_format") or "float-nchw", batch_limit, side["precision"], path,
                              {"backend": "tensorrt", "tensorrt": version, "gpu": side["gpu_name"]})
        height, width = self.info.size
        classes = len(config["classes"])
        specs = contract_outputs(height, width, classes)
        uint8 = self.info.input_format == "uint8-nhwc"
        input_shape = (height, width, 3) if uint8 else (3, height, width)
        self.api = cuda_api(binding)

        def prepare(slot) -> None:
            context = self.engine.create_execution_context()
            context.set_tensor_address("images", self.api.pointer(slot.device_in))
            for name in OUTPUT_NAMES:
                context.set_tensor_address(name, self.api.pointer(slot.device_out[name]))
            slot.state["context"] = context

        def compute(slot, n: int) -> None:
            context = slot.state["context"]
            context.set_input_shape("images", (n, *input_shape))
            if not context.execute_async_v3(self.api.stream_handle(slot.stream)):
                raise AkdError(f"{path}: TensorRT execution failed")

        input_dtype = np.uint8 if uint8 else np.float32
        self.pipeline: SlotPipeline | None = SlotPipeline(self.api, batch_limit, input_shape, input_dtype, specs,
                                                          compute, slots=slots, prepare=prepare)
        self.last_stage_ms: dict[str, float] = {}

    def _pipeline(self):
        if self.pipeline is None:
            raise AkdError(f"{self.info.source}: the engine was closed")
        return self.pipeline

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        pipeline = self._pipeline()
        outputs = pipeline.infer(batch)
        self.last_stage_ms = dict(pipeline.last_stage_ms)
        return outputs

    def run(self, batches):
        yield from self._pipeline().run(batches)

    def close(self) -> None:
        self.pipeline = None
