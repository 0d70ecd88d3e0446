"""Serving artifacts generated from an exported graph: a Triton model repository and a DeepStream nvinfer config.

Both are derived from the graph's own metadata (``akd.contract``: the config with input size, normalisation and
class names; input format; precision) so Triton, DeepStream and the Python runtime cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from akd import contract
from akd.util import AkdError

TRITON_PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan", "python")  # python: the graph run by onnxruntime in model.py
TRITON_KINDS = ("gpu", "cpu")  # instance_group kinds, KIND_GPU / KIND_CPU
ORT_TENSORRT_PRECISIONS = ("FP32", "FP16", "INT8")  # onnxruntime's TensorRT accelerator in Triton


@dataclass
class TritonOptions:
    name: str = "akd_surrogate"
    platform: str = "onnxruntime_onnx"  # one of TRITON_PLATFORMS
    max_batch: int = 32
    preferred_batches: tuple[int, ...] = (8, 32)
    queue_delay_us: int = 500
    instances: int = 1
    kind: str = "KIND_GPU"  # KIND_GPU | KIND_CPU
    ort_tensorrt: str | None = None  # onnxruntime's TensorRT accelerator: None | FP32 | FP16 | INT8


TRITON_TYPES = {np.dtype(np.float32): "TYPE_FP32", np.dtype(np.int32): "TYPE_INT32", np.dtype(np.uint8): "TYPE_UINT8"}


def graph_signature(config: dict[str, Any], input_format: str) -> dict[str, tuple[str, list[int]]]:
    """Tensor name -> (Triton data type, per-sample dims) of the fused graph (``akd.contract``); per-sample
    scalars get dims [1], reshaped to [] by the config."""
    specs = {contract.INPUT: contract.input_spec(config, input_format), **contract.output_specs(config)}
    return {name: (TRITON_TYPES[np.dtype(dtype)], list(shape) or [1]) for name, (dtype, shape) in specs.items()}


def triton_config(config: dict[str, Any], input_format: str, platform: str, options: TritonOptions,
                  precision: str = "fp32") -> str:
    """config.pbtxt text. class_id and score are (N) tensors: dims [1] reshaped to scalars per sample."""
    signature = graph_signature(config, input_format)

    def tensor(name: str, extra: str = "") -> str:
        dtype, dims = signature[name]
        shape = ", ".join(map(str, dims))
        return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {shape} ]\n{extra}  }}'

    scalar = "    reshape: { shape: [ ] }\n"
    outputs = [tensor(contract.SALIENCY), tensor(contract.LOGITS, '    label_filename: "labels.txt"\n'),
               tensor(contract.CLASS_ID, scalar), tensor(contract.SCORE, scalar)]
    preferred = sorted({b for b in options.preferred_batches if b <= options.max_batch})
    joined = ",\n".join(outputs)
    runner = 'backend: "python"' if platform == "python" else f'platform: "{platform}"'
    lines = [f'name: "{options.name}"', runner, f"max_batch_size: {options.max_batch}",
             f"input [\n{tensor(contract.INPUT)}\n]", f"output [\n{joined}\n]",
             "dynamic_batching {", f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
             f"  max_queue_delay_microseconds: {options.queue_delay_us}", "}",
             f"instance_group [\n  {{\n    count: {options.instances}\n    kind: {options.kind}\n  }}\n]"]
    if options.ort_tensorrt:
        if platform != "onnxruntime_onnx":
            raise AkdError("--triton-ort-tensorrt applies to the onnxruntime_onnx platform only")
        lines.append('optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" '
                     f'parameters {{ key: "precision_mode" value: "{options.ort_tensorrt}" }} }} ] }} }}')
    for key, value in ((contract.INPUT_FORMAT_KEY, input_format), (contract.PRECISION_KEY, precision),
                       (contract.CONFIG_KEY, json.dumps(config))):
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: {_quoted(value)} }} }}')
    return "\n".join(lines) + "\n"


# model.py of --triton-platform python: the fused graph through onnxruntime inside Triton's Python backend, for
# servers without the onnxruntime backend (such as the one bundled in the nvidia-pytriton wheel). Triton batches
# requests itself (dynamic batching); each request is one run of the graph.
PYTHON_BACKEND_MODEL = f'''"""akd surrogate for Triton's Python backend: model.onnx beside this file, run by
onnxruntime."""

import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

OUTPUTS = {contract.OUTPUTS!r}


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        gpu = args["model_instance_kind"] == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, providers=providers)

    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, {contract.INPUT!r}).as_numpy()
            outputs = self.session.run(list(OUTPUTS), {{{contract.INPUT!r}: images}})
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in zip(OUTPUTS, outputs)]))
        return responses
'''


def _quoted(text: str) -> str:
    """A protobuf text-format string literal (json.dumps keeps it ASCII; only backslash and quote need escapes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def validate_triton_config(text: str) -> Any:
    """Parse into Triton's own ModelConfig protobuf (tritonclient's model_config_pb2); raise on any error."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise AkdError("validating a Triton config needs tritonclient: pip install 'akd[serve]'") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise AkdError(f"generated Triton config does not parse as ModelConfig ({exc}); this is an akd bug") from None


NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}


def deepstream_config(metadata: dict[str, str], onnx_file: str, engine_file: str | None, batch: int,
                      labels_file: str | None = None) -> str:
    """An nvinfer [property] section for the raw-tensor path: network-type=100 (other), output-tensor-meta=1 so
    a pad probe gets ``saliency``/``class_id``/``score`` as NvDsInferTensorMeta. nvinfer computes
    ``net-scale-factor * (pixel - offset)`` with one scale for all channels: exact for targets with one std
    (EfficientNet-Lite0: (x - 127) / 128), the mean of the three otherwise (a warning line says so)."""
    config = contract.config_of(metadata)
    if metadata.get(contract.INPUT_FORMAT_KEY) != "float-nchw":
        raise AkdError("DeepStream feeds float NCHW tensors: export with --input-format float-nchw")
    pre = config["preprocessing"]
    std = [float(v) for v in pre["std"]]
    scale = 1.0 / (255.0 * sum(std) / 3)
    offsets = ";".join(f"{255.0 * float(m):.4f}" for m in pre["mean"])
    height, width = (int(v) for v in config["input_size"])
    lines = ["# generated by akd-export from the graph metadata; see the README (Serve beyond Python)"]
    if max(std) - min(std) > 0.01 * max(std):
        lines.append(f"# note: per-channel std {std} approximated by their mean (nvinfer has one scale factor)")
    lines += ["[property]", "gpu-id=0", f"net-scale-factor={scale:.10f}", f"offsets={offsets}",
              "model-color-format=0", f"onnx-file={onnx_file}"]
    if engine_file:
        lines.append(f"model-engine-file={engine_file}")
    if labels_file:
        lines.append(f"labelfile-path={labels_file}")
    lines += [f"infer-dims=3;{height};{width}", f"batch-size={batch}",
              f"network-mode={NETWORK_MODES[metadata.get(contract.PRECISION_KEY, 'fp32')]}",
              "network-type=100", "output-tensor-meta=1", "process-mode=1", "maintain-aspect-ratio=1",
              "symmetric-padding=1", "gie-unique-id=1", "output-blob-names=saliency;class_id;score"]
    return "\n".join(lines) + "\n"


def parse_deepstream_config(text: str) -> dict[str, str]:
    """The [property] keys of an nvinfer config (GLib key-file syntax: ``key=value``, ``#`` comments)."""
    values: dict[str, str] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "property":
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values
