"""TensorRT backend: deserialise an engine after checking its ``.engine.json`` sidecar against this machine, then
run it through the shared pinned-memory/stream ``SlotPipeline`` (cuda-python): per slot one execution
context and stream, async H2D -> ``execute_async_v3`` -> async D2H, CUDA events for per-stage times."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from akd import contract
from akd.contract import INPUT, OUTPUTS
from akd.runtime.backends import ModelInfo, Runner
from akd.util import AkdError

INSTALL_HINT = ("TensorRT is not installed. On a machine with an NVIDIA GPU install TensorRT 11 (or 10.x): "
                "'pip install tensorrt' (wheels come from NVIDIA's index), or on Jetson use the JetPack packages "
                "(python3-libnvinfer); then rerun. Without TensorRT use --format onnx.")


class TensorRTRunner(Runner):
    def __init__(self, path: str, slots: int = 2, binding: str = "auto", max_batch: int | None = None):
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


def require_tensorrt() -> str:
    """TensorRT's version, or the install hint as an AkdError (exit code 2 from the CLI)."""
    try:
        import tensorrt
    except ImportError:
        raise AkdError(INSTALL_HINT) from None
    if not hasattr(tensorrt, "Builder"):  # e.g. only the tensorrt-stubs package: a namespace of .pyi files
        raise AkdError(INSTALL_HINT)
    return str(tensorrt.__version__)


def sidecar_for(engine_path: Path) -> Path:
    return engine_path.with_suffix(".engine.json")


def read_sidecar(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AkdError(f"{path}: engine sidecar not found; rebuild with akd-export --format engine")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AkdError(f"{path}: malformed engine sidecar ({exc})") from None
    if data.get("format") != "akd-engine":
        raise AkdError(f"{path}: not an akd engine sidecar")
    return data


def check_sidecar(data: dict[str, Any], tensorrt_version: str, device: dict[str, Any], engine: Path) -> None:
    """Refuse an engine built for another TensorRT or GPU, saying how to rebuild it."""
    rebuild = f"rebuild it on this machine: akd-export {data.get('source_onnx', 'MODEL.onnx')} --format engine"
    if data["tensorrt_version"] != tensorrt_version and not data.get("version_compatible"):
        raise AkdError(f"{engine}: built with TensorRT {data['tensorrt_version']}, this is {tensorrt_version}; "
                       f"{rebuild}")
    built, here = data["compute_capability"], device["compute_capability"]
    level = data.get("hardware_compatibility", "none")
    # ampere-plus engines run on any sm >= 8.0; none and same-compute-capability only on the sm they were built for
    fits = int(here.split(".")[0]) >= 8 if level == "ampere-plus" else built == here
    if not fits:
        raise AkdError(f"{engine}: built for {data['gpu_name']} (sm {built}, hardware compatibility {level}), "
                       f"this is {device['name']} (sm {here}); {rebuild}")


def check_engine_io(engine, expected: dict[str, tuple[Any, tuple[int, ...]]], input_name: str, nptype,
                    input_mode) -> None:
    """Every I/O tensor of a deserialised engine must be what the runtime's buffers hold: the contract's names,
    direction, dtype and per-sample shape (an engine with fp16 I/O would otherwise read and write garbage).
    ``nptype``: TensorRT's dtype -> numpy mapping (``trt.nptype``); ``input_mode``: ``trt.TensorIOMode.INPUT``."""
    found = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    if found != set(expected):
        raise AkdError(f"the engine's tensors {sorted(found)} are not the akd contract's {sorted(expected)}; "
                       "rebuild it from an akd graph")
    for name, (dtype, shape) in expected.items():
        is_input = engine.get_tensor_mode(name) == input_mode
        if is_input != (name == input_name):
            raise AkdError(f"engine tensor '{name}' is an {'input' if is_input else 'output'}; the contract "
                           "says otherwise")
        got_dtype = np.dtype(nptype(engine.get_tensor_dtype(name)))
        got_shape = tuple(int(v) for v in engine.get_tensor_shape(name))[1:]
        if got_dtype != np.dtype(dtype) or got_shape != tuple(shape):
            raise AkdError(f"engine tensor '{name}' is {got_dtype} {got_shape} per sample; the runtime's buffers "
                           f"hold {np.dtype(dtype)} {tuple(shape)} (rebuild the engine from the graph akd exported)")


def cuda_device() -> dict[str, Any]:
    """Name and compute capability of the current GPU, read through cuda-python (a runtime install has no torch)."""
    from akd.runtime.cuda import cuda_api

    return cuda_api().identity()
