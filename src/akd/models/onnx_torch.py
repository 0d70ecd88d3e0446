"""An ONNX classifier as a differentiable torch module, when it converts exactly - then akd can explain the file
itself (``akd-export --target model.onnx``) instead of treating it as a black box.

onnx2torch converts the graph after four rewrites of it: a final Softmax (and any quantize/dequantize after
it) is cut, so the module returns the logits a gradient map needs; quantize -> dequantize pairs on constant
weights are folded into the float weights they stand for; on activations each pair becomes one fake-quantization
node whose gradient passes straight through (rounding's own gradient is zero everywhere, which would leave no
map); a Reshape to a constant shape becomes a static one, which the exporter's tracing can follow. The module is
then checked against onnxruntime running the same cut graph with its graph optimisations off - the operations
as written - and refused beyond ``CONVERSION_TOLERANCE`` plus the spread between onnxruntime's own optimised and
unoptimised runs: in a quantized graph float rounding moves activations across quantization levels, and
onnxruntime's fused integer kernels move the logits by whole output levels themselves (docs/BENCHMARKS.md,
"Targets as users have them").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from akd.util import AkdError

CONVERSION_TOLERANCE = 1e-4  # max |logit difference| to onnxruntime for the module to stand for the file
AKD_DOMAIN = "akd"  # the private ONNX domain of the nodes akd rewrites before onnx2torch
PASS_THROUGH = {"QuantizeLinear", "DequantizeLinear", "Identity", "Flatten", "Reshape", "Squeeze"}


@dataclass
class Conversion:
    """What the conversion did, for the command to say which path it took."""

    module: nn.Module
    softmax_cut: bool
    fake_quantized: int  # activation quantize -> dequantize pairs kept as straight-through fake quantization
    max_difference: float  # max |logit| difference to onnxruntime (graph as written) on the check images
    onnxruntime_spread: float  # the same between onnxruntime's optimised and unoptimised runs
    input_size: int  # the graph's own, where it fixes one


class StraightThroughFakeQuant(nn.Module):
    """ONNX QuantizeLinear then DequantizeLinear with one scale and zero point, per tensor; the forward value is
    the quantized one, the gradient the identity's (the straight-through estimator)."""

    def __init__(self, scale: float, zero_point: int, low: int, high: int):
        super().__init__()
        self.scale, self.zero_point, self.low, self.high = scale, zero_point, low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = torch.clamp(torch.round(x / self.scale) + self.zero_point, self.low, self.high)
        return x + ((levels - self.zero_point) * self.scale - x).detach()


class StaticReshape(nn.Module):
    """ONNX Reshape to a constant shape (0: the input's dimension there). onnx2torch's own Reshape reads the shape
    as a tensor and branches on its values, which make_fx (the exporter's gradient pass) cannot trace."""

    def __init__(self, shape: list[int]):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape([x.shape[index] if size == 0 else size for index, size in enumerate(self.shape)])


def _register_converters() -> None:
    """Converters for the two nodes of akd's private domain (FakeQuant, StaticReshape)."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    if OperationDescription(AKD_DOMAIN, "FakeQuant", 1) in _CONVERTER_REGISTRY:
        return

    @add_converter(operation_type="FakeQuant", version=1, domain=AKD_DOMAIN)
    def _fake_quant(node, graph):  # noqa: ARG001 - onnx2torch's converter signature
        attributes = node.attributes
        module = StraightThroughFakeQuant(float(attributes["scale"]), int(attributes["zero_point"]),
                                          int(attributes["low"]), int(attributes["high"]))
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))

    @add_converter(operation_type="StaticReshape", version=1, domain=AKD_DOMAIN)
    def _static_reshape(node, graph):  # noqa: ARG001
        from onnx2torch.utils.common import OnnxMapping

        return OperationConverterResult(torch_module=StaticReshape(list(node.attributes["shape"])),
                                        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],),
                                                                 outputs=node.output_values))


def _static_reshapes(model) -> None:
    """Reshapes to a constant shape as StaticReshape nodes."""
    from onnx import helper

    constants = _constants(model)
    for index, node in enumerate(model.graph.node):
        allow_zero = any(attr.name == "allowzero" and attr.i for attr in node.attribute)
        if node.op_type == "Reshape" and node.input[1] in constants and not allow_zero:
            replacement = helper.make_node("StaticReshape", [node.input[0]], list(node.output), domain=AKD_DOMAIN,
                                           name=f"static_reshape_{index}",
                                           shape=[int(v) for v in constants[node.input[1]].reshape(-1)])
            node.CopyFrom(replacement)


def _producers(model) -> dict[str, object]:
    return {output: node for node in model.graph.node for output in node.output}


def _final_softmax(model):
    """The Softmax/LogSoftmax node the graph's output comes from (through quantize/dequantize and reshapes)."""
    producers, current = _producers(model), model.graph.output[0].name
    while current in producers:
        node = producers[current]
        if node.op_type in ("Softmax", "LogSoftmax"):
            return node
        if node.op_type not in PASS_THROUGH:
            break
        current = node.input[0]
    return None


def _logits_output(model) -> tuple[str, bool]:
    """The tensor to differentiate: the input of a final Softmax/LogSoftmax, else the output itself."""
    final = _final_softmax(model)
    return (final.input[0], True) if final is not None else (model.graph.output[0].name, False)


def softmax_output(model) -> bool:
    """Whether the graph's output is a Softmax's: probabilities, whatever its rows sum to."""
    final = _final_softmax(model)
    return final is not None and final.op_type == "Softmax"


def _constants(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _along(values: np.ndarray, like: np.ndarray, axis: int) -> np.ndarray:
    """A per-tensor or per-axis quantization parameter as float32, shaped to broadcast over ``like``."""
    shape = [1] * like.ndim
    if values.ndim == 1 and like.ndim > 1:
        shape[axis] = -1
    return values.astype(np.float32).reshape(shape)


def _dequantized(levels: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    return (levels.astype(np.float32) - _along(zero_point, levels, axis)) * _along(scale, levels, axis)


def _quantized(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    info = np.iinfo(zero_point.dtype)
    levels = np.rint(values / _along(scale, values, axis)) + _along(zero_point, values, axis)
    return np.clip(levels, info.min, info.max)


def _axis(node) -> int:
    return next((attr.i for attr in node.attribute if attr.name == "axis"), 1)


def _rewrite_quantization(model) -> int:
    """Fold constant quantize -> dequantize (and dequantize of constant levels) into float initializers; fuse
    each remaining activation pair into one FakeQuant node. Returns the number of fused pairs."""
    from onnx import helper, numpy_helper

    constants, producers = _constants(model), _producers(model)
    kept, fused = [], 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            kept.append(node)
            continue
        scale, zero_point = constants.get(node.input[1]), constants.get(node.input[2]) if len(node.input) > 2 else None
        if scale is None or zero_point is None:
            raise AkdError("a DequantizeLinear node has a computed scale or zero point")
        source = producers.get(node.input[0])
        if node.input[0] in constants:  # levels stored as a constant
            value = _dequantized(constants[node.input[0]], scale, zero_point, _axis(node))
        elif source is not None and source.op_type == "QuantizeLinear" and source.input[0] in constants:
            value = _dequantized(_quantized(constants[source.input[0]], scale, zero_point, _axis(source)),
                                 scale, zero_point, _axis(node))
        elif source is not None and source.op_type == "QuantizeLinear" and scale.size == 1:
            info = np.iinfo(zero_point.dtype)
            kept.append(helper.make_node("FakeQuant", [source.input[0]], [node.output[0]], domain=AKD_DOMAIN,
                                         name=f"fake_quant_{fused}", scale=float(scale.reshape(())),
                                         zero_point=int(zero_point.reshape(())), low=int(info.min),
                                         high=int(info.max)))
            fused += 1
            continue
        else:
            raise AkdError("a DequantizeLinear node follows no QuantizeLinear of the same tensor")
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(node for node in kept if node.op_type != "QuantizeLinear")
    left = {node.output[0] for node in kept if node.op_type == "QuantizeLinear"}
    if any(name in left for node in model.graph.node for name in node.input):
        raise AkdError("a QuantizeLinear output is read by something other than a DequantizeLinear")
    return fused


def _free_batch(model) -> None:
    """A graph fixed at batch 1 made batch-free: its input's first dimension symbolic, and every constant
    Reshape target whose first entry is that 1 made 0 (ONNX: copy the input's dimension)."""
    from onnx import numpy_helper

    dims = model.graph.input[0].type.tensor_type.shape.dim
    if not dims or dims[0].dim_value != 1:
        return
    dims[0].dim_param = "batch"
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        shape = initializers.get(node.input[1]) if node.op_type == "Reshape" else None
        if shape is not None and numpy_helper.to_array(shape).reshape(-1)[:1].tolist() == [1]:
            value = numpy_helper.to_array(shape).copy()
            value[0] = 0
            shape.CopyFrom(numpy_helper.from_array(value, shape.name))
    del model.graph.value_info[:]
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")


def _cut(model, output: str):
    """The graph computing ``output`` alone (the Softmax and what follows it removed)."""
    from onnx import TensorProto, helper

    producers, needed, stack = _producers(model), set(), [output]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(node.input)
    kept = [node for node in model.graph.node if id(node) in needed]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, None))
    return model


def _onnxruntime_logits(cut_model, images: np.ndarray, optimised: bool) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimised:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(cut_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images})[0].reshape(len(images), -1)


def convert_onnx(path: str, input_size: int, seed: int = 0) -> Conversion:
    """The ONNX file at ``path`` as a torch module returning logits (N, C), batch-free, checked on four seeded
    random images in normalised space at the graph's own input size (``input_size`` where the graph leaves it
    open). An ``AkdError`` names what does not convert."""
    import onnx

    try:
        import onnx2torch
    except ImportError:
        raise AkdError(f"{path}: converting an ONNX target to torch needs onnx2torch: "
                       "pip install 'akd[train]'") from None
    try:
        model = onnx.load(path)
    except Exception as exc:  # noqa: BLE001 - protobuf's decode errors have no common public type
        raise AkdError(f"{path}: cannot load ONNX model ({str(exc).splitlines()[0]})") from None
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise AkdError(f"{path}: expected one NCHW image input, got {len(dims)} dimensions")
    input_size = dims[2].dim_value or input_size
    output, softmax_cut = _logits_output(model)
    if softmax_cut or output != model.graph.output[0].name:
        model = _cut(model, output)
    _free_batch(model)
    model = onnx.shape_inference.infer_shapes(model)  # before the FakeQuant nodes, which it cannot see through
    reference_model = onnx.ModelProto()
    reference_model.CopyFrom(model)
    fused = _rewrite_quantization(model)
    _static_reshapes(model)
    model.opset_import.append(onnx.helper.make_opsetid(AKD_DOMAIN, 1))
    _register_converters()
    try:
        module = onnx2torch.convert(model).eval()
    except (NotImplementedError, ValueError, RuntimeError) as exc:
        raise AkdError(f"{path}: onnx2torch cannot convert it ({str(exc).splitlines()[0]})") from None
    images = torch.randn(4, 3, input_size, input_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        mine = module(images).reshape(len(images), -1).numpy()
    as_written = _onnxruntime_logits(reference_model, images.numpy(), optimised=False)
    spread = float(np.abs(_onnxruntime_logits(reference_model, images.numpy(), optimised=True) - as_written).max())
    difference = float(np.abs(mine - as_written).max()) if mine.shape == as_written.shape else float("inf")
    if not difference <= CONVERSION_TOLERANCE + spread:
        raise AkdError(f"{path}: the converted module differs from onnxruntime by {difference:.3g} (limit "
                       f"{CONVERSION_TOLERANCE:g} + onnxruntime's own spread {spread:.3g})")
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return Conversion(module, softmax_cut, fused, difference, spread, input_size)
