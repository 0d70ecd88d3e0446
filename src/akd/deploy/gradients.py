"""Gradients written as forward operations, so a map that differentiates inside the surrogate (LayerCAM) is one
ONNX graph. The ONNX exporters do not trace ``torch.autograd.grad``. ``make_fx`` does: it records the backward
pass as ATen operations, and with eval batch norm folded to its affine form and the backward of the elementwise
operations decomposed, one backward operation is left, ``convolution_backward``. Of it only the input gradient is
used, which is itself a convolution: at stride 1 with the kernel flipped (and transposed across channels), where
the forward strides a transposed convolution. What make_fx records has the example's batch size in its shapes, so
the module is traced at two batch sizes and every number that differs becomes a multiple of the input's batch."""

from __future__ import annotations

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp

from akd.util import AkdError

aten = torch.ops.aten


def _batch_norm_eval(x, weight, bias, mean, var, training, momentum, eps):
    """Eval batch norm as x * scale + shift with constant scale/shift (onnxruntime folds it into the conv), whose
    backward is a multiplication; batch statistics (instance norm) are written out."""
    if training:
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    scale = torch.rsqrt(var + eps) * (weight if weight is not None else 1)
    shift = (bias if bias is not None else 0) - mean * scale
    shape = (1, -1, 1, 1)
    return x * scale.view(shape) + shift.view(shape), mean[:0], var[:0]


def _decompositions() -> dict:
    from torch._decomp import get_decompositions

    table = get_decompositions([aten.hardtanh_backward, aten.sigmoid_backward, aten.threshold_backward,
                                aten._log_softmax_backward_data, aten._softmax_backward_data, aten.silu_backward,
                                aten.gelu_backward, aten.hardswish_backward, aten.hardsigmoid_backward,
                                aten.leaky_relu_backward, aten.max_pool2d_with_indices_backward,
                                aten.avg_pool2d_backward, aten._batch_norm_no_update,
                                aten._batch_norm_with_update, aten.native_batch_norm_backward])
    table[aten.native_batch_norm.default] = _batch_norm_eval
    table[aten._native_batch_norm_legit_no_training.default] = (
        lambda x, w, b, m, v, momentum, eps: _batch_norm_eval(x, w, b, m, v, False, momentum, eps))
    return table


_PUBLIC = {aten._softmax.default: aten.softmax.int, aten._log_softmax.default: aten.log_softmax.int}


def _trace(module: torch.nn.Module, example: torch.Tensor) -> fx.GraphModule:
    from torch.fx.experimental.proxy_tensor import make_fx

    with torch.no_grad():
        traced = make_fx(module, tracing_mode="real", decomposition_table=_decompositions())(example)
    input_gradients_as_convolutions(traced, example)
    for node in traced.graph.nodes:  # the public form of ops the ONNX exporter knows only by their public name
        if node.target in _PUBLIC:
            node.target, node.args = _PUBLIC[node.target], node.args[:2]
        elif node.target == aten.upsample_bilinear2d.default:  # to the overload with a symbolic: sizes, no scales
            node.target, node.args = aten.upsample_bilinear2d.vec, (*node.args[:3], None)
        elif node.target == aten._to_copy.default and set(node.kwargs) <= {"dtype", "device", "layout"}:
            node.target, node.args, node.kwargs = torch.Tensor.to, (node.args[0], node.kwargs.get("dtype")), {}
    traced.recompile()
    left = sorted({str(node.target) for node in traced.graph.nodes if "backward" in str(node.target)})
    if left:
        raise AkdError(f"cannot write the map's gradient as forward operations: {', '.join(left)} has no rewrite")
    return traced


def input_gradients_as_convolutions(module: fx.GraphModule, example: torch.Tensor) -> int:
    """Replace every convolution_backward (only its input gradient is used) by a forward convolution: at stride 1
    the kernel flipped (and, across channels, transposed) with padding k - 1 - p; strided, a transposed
    convolution with the same weights."""
    ShapeProp(module).propagate(example)
    graph = module.graph
    found = [(node, *(tuple(node.args[i].meta["tensor_meta"].shape) for i in (1, 0, 2)))
             for node in graph.nodes if node.target == aten.convolution_backward.default]  # shapes before rewriting
    for node, in_shape, out_shape, weight_shape in found:
        grad_out, _, weight, _, stride, padding, dilation, _, _, groups, _ = node.args
        depthwise = groups > 1 and weight_shape[1] == 1 and weight_shape[0] == groups
        if list(dilation) != [1, 1] or not (groups == 1 or depthwise):
            raise AkdError(f"a convolution (groups {groups}, dilation {list(dilation)}) whose gradient has no "
                           "rewrite lies between the tap and the logits")
        kernel = weight_shape[2:]
        with graph.inserting_before(node):
            if list(stride) == [1, 1]:
                flipped = graph.call_function(aten.flip.default, (weight, [2, 3]))
                if not depthwise:
                    flipped = graph.call_function(aten.permute.default, (flipped, [1, 0, 2, 3]))
                args = (grad_out, flipped, None, [1, 1], [k - 1 - p for k, p in zip(kernel, padding, strict=True)],
                        [1, 1], False, [0, 0], groups)
            else:
                extra = [n - ((o - 1) * s - 2 * p + k)
                         for n, o, s, p, k in zip(in_shape[2:], out_shape[2:], stride, padding, kernel, strict=True)]
                args = (grad_out, weight, None, stride, padding, [1, 1], True, extra, groups)
            gradient = graph.call_function(aten.convolution.default, args)
        for user in list(node.users):
            if user.args[1] == 0:
                user.replace_all_uses_with(gradient)
            if user.users:
                raise AkdError("a weight or bias gradient is used: only input gradients can be exported")
            graph.erase_node(user)
        graph.erase_node(node)
    for node in graph.nodes:
        node.meta.pop("tensor_meta", None)
    graph.eliminate_dead_code()
    graph.lint()
    module.recompile()
    return len(found)


def without_autograd(module: torch.nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """``module`` as an fx graph of forward ATen operations whose batch size follows its input's (``example``
    gives every other size). Traced at batch 2 and 3: a number that differs between the two traces is k x batch."""
    pair = [_trace(module, example[:1].expand(batch, *example.shape[1:]).contiguous()) for batch in (2, 3)]
    nodes = [list(traced.graph.nodes) for traced in pair]
    if len(nodes[0]) != len(nodes[1]) or any(a.target != b.target for a, b in zip(*nodes, strict=True)):
        raise AkdError("the map's graph changes with the batch size; it cannot be exported with a dynamic batch")
    traced, graph = pair[1], pair[1].graph
    images = nodes[1][0]
    with graph.inserting_after(images):
        batch = graph.call_method("size", (images, 0))

    def follow(two, three):
        if isinstance(two, (list, tuple)):
            return type(three)(follow(a, b) for a, b in zip(two, three, strict=True))
        if isinstance(two, int) and not isinstance(two, bool) and two != three:
            if three - two <= 0 or two != 2 * (three - two):
                raise AkdError(f"a size in the map's graph is not a multiple of the batch ({two} at batch 2, "
                               f"{three} at 3)")
            scale = three - two
            with graph.inserting_after(batch):
                return batch if scale == 1 else graph.call_function(_multiply, (batch, scale))
        return three

    for two, three in zip(*nodes, strict=True):
        if two.op == "call_function":
            args = tuple(follow(a, b) for a, b in zip(two.args, three.args, strict=True))
            if args != three.args:
                if three.target not in _SHAPED:
                    raise AkdError(f"{three.target} in the map's graph takes a batch-dependent size")
                three.target = _SHAPED[three.target]
            three.args = args
    graph.lint()
    traced.recompile()
    return traced


# the Tensor methods take sizes the TorchScript tracer follows (the ATen overloads freeze them to numbers)
_SHAPED = {aten.view.default: torch.Tensor.reshape, aten._unsafe_view.default: torch.Tensor.reshape,
           aten.reshape.default: torch.Tensor.reshape, aten.expand.default: torch.Tensor.expand}


def _multiply(size, factor: int):
    return size * factor
