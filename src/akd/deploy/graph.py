"""The fused ONNX graph: student + explainer (+ optionally the target) behind the graph contract
(``akd.contract``: names, dtypes, metadata keys, normalisation). The batch dimension is dynamic."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

import akd
from akd import contract
from akd.contract import OPSET
from akd.util import AkdError, atomic_path, check_writable


def example_input(config: dict[str, Any], input_format: str, batch: int = 2) -> torch.Tensor:
    height, width = config["input_size"]
    if input_format == "uint8-nhwc":
        return torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8)
    return torch.randn(batch, 3, height, width)


def artifact_metadata(config: dict[str, Any], source_sha256: str, precision: str, input_format: str,
                      **extra: Any) -> dict[str, str]:
    """What every akd artifact records: the surrogate config, akd version, source hash, precision, input format."""
    metadata = {contract.CONFIG_KEY: json.dumps(config), contract.VERSION_KEY: akd.__version__,
                contract.SOURCE_SHA256_KEY: source_sha256, contract.PRECISION_KEY: precision,
                contract.INPUT_FORMAT_KEY: input_format}
    metadata.update({f"akd_{k}": v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return metadata


def set_metadata(model, metadata: dict[str, str]) -> None:
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value


def read_metadata(model) -> dict[str, str]:
    return {prop.key: prop.value for prop in model.metadata_props}


def check_graph(model, what: str):
    """Full onnx checker and strict shape inference; a failure is an akd bug, reported with the artifact name."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise AkdError(f"{what}: exported graph failed the ONNX checker ({str(exc).splitlines()[0]})") from None


def simplify(model):
    """onnxslim: constant folding, dead-node removal, op fusion; metadata is carried over."""
    import onnxslim

    metadata = read_metadata(model)
    slimmed = onnxslim.slim(model)
    set_metadata(slimmed, metadata)
    return slimmed


def export_onnx(module: nn.Module, config: dict[str, Any], input_format: str, metadata: dict[str, str],
                fp16: bool = False):
    """Trace ``module`` (a DeployableSurrogate) into a checked graph, simplified with onnxslim. A map with LayerCAM
    is first rewritten without autograd (``akd.deploy.gradients``).

    ``fp16`` traces under torch autocast: convolutions and matrix products in fp16 with fp16 weights, inputs and
    outputs in fp32, and kept in fp32: the network through its first (stride-8) tap (``fp32_through_first_tap``)
    and the ops the model pins there (attention pooling and gates, the saliency sigmoid, the softmax).
    onnxconverter-common's converter produced invalid graphs for these models (Cast type mismatches around shared
    attention weights), so it is not used. The fp16 graph is not passed through onnxslim, whose Conv+BatchNorm
    fusion writes fp32 weights into fp16 convolutions (onnxslim 0.1.98); onnxruntime and TensorRT fuse BatchNorm
    themselves when they load the graph.
    """
    import contextlib
    import io
    import warnings

    import onnx

    sample = example_input(config, input_format)
    buffer = io.BytesIO()
    batch_axis = {0: contract.BATCH}
    precision = torch.autocast("cpu", dtype=torch.float16) if fp16 else contextlib.nullcontext()
    fp32_prefix = module.surrogate.student.fp32_through_first_tap() if fp16 else []
    module = module.eval()
    if module.surrogate.explainer.layercam_taps:  # the map differentiates: its gradient as forward ops, casts
        from akd.deploy.gradients import without_autograd  # included (traced under autocast, exported without)

        with precision:
            module = without_autograd(module, sample)
        precision = contextlib.nullcontext()
    with torch.no_grad(), precision, warnings.catch_warnings():
        # the tracer's notes on shape arithmetic that is constant at a fixed input size, and on instance_norm's
        # training flag (the map's standardisation has no running statistics): true, expected, not the user's
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="ONNX export mode is set to TrainingMode.EVAL")
        # a gradient's flipped kernels are reversed Slices, which onnxruntime and TensorRT fold when they load
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(module, (sample,), buffer, input_names=[contract.INPUT],
                          output_names=list(contract.OUTPUTS),
                          dynamic_axes={name: batch_axis for name in (contract.INPUT, *contract.OUTPUTS)},
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    for handle in fp32_prefix:
        handle.remove()
    model = onnx.load_from_string(buffer.getvalue())
    set_metadata(model, metadata)
    model = check_graph(model, "fused graph")
    if not fp16:
        model = simplify(model)
        check_graph(model, "simplified graph")
    return model


def save_model(model, path: str | os.PathLike) -> None:
    import onnx

    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))


def refuse_overwrite(paths: list[Path], force: bool) -> None:
    """Before any work: every planned artifact must be writable, and existing ones need --force."""
    for path in paths:
        check_writable(path)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise AkdError(f"{', '.join(existing)} already exists; pass --force to overwrite")
