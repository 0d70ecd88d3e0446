"""TensorRT backend: deserialise an engine after checking its ``.engine.json`` sidecar against this machine, then
run it through the shared pinned-memory/stream ``SlotPipeline`` (cuda-python, or pycuda): per slot one execution
context and stream, async H2D -> ``execute_async_v3`` -> async D2H, CUDA events for per-stage times."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from akd import contract
from akd.contract import INPUT, OUTPUTS
from akd.runtime.backends import ModelInfo, Runner
from akd.util import AkdError


class TensorRTRunner(Runner):
    def __init__(self, path: str, slots: int = 2, binding: str = "auto", max_batch: int | None = None):
        from akd.deploy.tensorrt import check_engine_io
        from akd.runtime.cuda import SlotPipeline, contract_outputs, cuda_api

        side, version = self._load(path)
        import tensorrt as trt

        config = side["config"]
        profile_max = side["profile"]["max"]
        batch_limit = min(max_batch or profile_max, profile_max)
        self.info = ModelInfo(config, side.get("input_format") or "float-nchw", batch_limit, side["precision"], path,
                              {"backend": "tensorrt", "tensorrt": version, "gpu": side["gpu_name"]})
        specs = contract_outputs(config)
        input_dtype, input_shape = contract.input_spec(config, self.info.input_format)
        expected = {INPUT: (input_dtype, input_shape),
                    **{name: (spec.dtype, spec.shape) for name, spec in specs.items()}}
        try:
            check_engine_io(self.engine, expected, INPUT, trt.nptype, trt.TensorIOMode.INPUT)
        except AkdError as exc:
            raise AkdError(f"{path}: {exc}") from None
        self.api = cuda_api(binding)

        def prepare(slot) -> None:
            context = self.engine.create_execution_context()
            addresses = {INPUT: slot.device_in, **slot.device_out}
            for name in (INPUT, *OUTPUTS):
                if not context.set_tensor_address(name, self.api.pointer(addresses[name])):
                    raise AkdError(f"{path}: TensorRT refused the address of tensor '{name}'")
            slot.state["context"] = context

        def compute(slot, n: int) -> None:
            context = slot.state["context"]
            if not context.set_input_shape(INPUT, (n, *input_shape)):
                raise AkdError(f"{path}: TensorRT refused a batch of {n} (the engine's profile: "
                               f"{side['profile']['min']}..{side['profile']['max']})")
            if not context.execute_async_v3(self.api.stream_handle(slot.stream)):
                raise AkdError(f"{path}: TensorRT execution failed")

        self.pipeline: SlotPipeline | None = SlotPipeline(self.api, batch_limit, input_shape, input_dtype, specs,
                                                          compute, slots=slots, prepare=prepare)
        self.in_flight = slots

    def _load(self, path: str) -> tuple[dict, str]:
        """Check the sidecar against this machine, then deserialise; (sidecar, TensorRT version)."""
        from akd.deploy.tensorrt import check_sidecar, cuda_device, read_sidecar, require_tensorrt, sidecar_for

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
        if side.get("version_compatible"):  # such engines embed the runtime that plans them (lean runtime)
            self.runtime.engine_host_code_allowed = True
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise AkdError(f"{path}: TensorRT could not deserialise the engine; rebuild it with akd-export")
        return side, version

    def _infer(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        assert self.pipeline is not None  # set until _release
        return self.pipeline.infer(batch)

    def _submit(self, batch: np.ndarray):
        assert self.pipeline is not None  # set until _release
        return self.pipeline.submit(batch)

    def _collect(self, ticket) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        assert self.pipeline is not None
        return self.pipeline.collect(ticket)

    def run(self, batches):
        if self.pipeline is None:
            raise AkdError(f"{self.info.source}: this runner was closed")
        yield from self.pipeline.run(batches)

    def _release(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        self.pipeline = None
