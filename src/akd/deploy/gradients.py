"""Gradients written as forward operations, so a map that differentiates inside the surrogate (LayerCAM) is one
ONNX graph. The ONNX exporters do not trace ``torch.autograd.grad``. ``make_fx`` does: it records the backward
pass as ATen operations, and with eval batch norm folded to its affine form and the backward of the elementwise
operations decomposed, one backward operation is left, ``convolution_backward``. Of it only the input gradient is
used, which is itself a convolution: at stride 1 with the kernel flipped (and transposed across channels), after
spreading a strided gradient out with zeros. What make_fx records has the example's batch size in its shapes, so
the module is traced at two batch sizes and every number that differs becomes a multiple of the input's batch.
Written for onnxruntime's CPU kernels (measured, docs/BENCHMARKS.md): 0/1 masks multiplied, not Where, made by
clamped depthwise 1x1 convolutions (which stay in onnxruntime's blocked NCHWc layout, as comparisons do not);
ReLU6's masks read its output, so the ReLU6 stays fused into its convolution; batch norm's scale inside the
kernels."""

from __future__ import annotations

import operator

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


def _hardtanh_backward(grad, x, low, high):
    """The gradient times a 0/1 mask (not the Where with a scalar branch of torch's own decomposition, which
    onnxruntime runs about 3x slower); in float32 the mask becomes convolutions, ``_masks_as_convolutions``."""
    return grad * torch.logical_and(x > low, x < high).to(grad.dtype)


def _threshold_backward(grad, x, threshold):
    return grad * (x > threshold).to(grad.dtype)


def _avg_pool2d_backward(grad, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Average pooling's input gradient as a transposed depthwise convolution by a constant 1 / (kh kw) kernel
    (torch has no decomposition of it; a converted ONNX graph's AveragePool needs one). Exact where every window
    divides by its full size: no padding, or padding counted."""
    if ceil_mode or divisor_override or (any(padding) and not count_include_pad):
        return aten.avg_pool2d_backward.default(grad, x, kernel, stride, padding, ceil_mode, count_include_pad,
                                                divisor_override)
    kernel_h, kernel_w = kernel
    stride_h, stride_w = stride or kernel
    pad_h, pad_w = padding if len(padding) == 2 else (padding[0], padding[0])
    channels = x.shape[1]
    weight = torch.full((channels, 1, kernel_h, kernel_w), 1.0 / (kernel_h * kernel_w), dtype=grad.dtype)
    extra = [x.shape[2] - ((grad.shape[2] - 1) * stride_h - 2 * pad_h + kernel_h),
             x.shape[3] - ((grad.shape[3] - 1) * stride_w - 2 * pad_w + kernel_w)]
    return torch.nn.functional.conv_transpose2d(grad, weight, None, (stride_h, stride_w), (pad_h, pad_w), extra,
                                                channels)


def _slice_backward(grad, input_sizes, dim, start, end, step):
    """A unit-step slice's gradient as zero padding (torch's decomposition writes a slice_scatter, which has no
    ONNX export); e.g. a converted graph's logits without their 'background' class."""
    size = input_sizes[dim]
    start, end = (min(max(v + size if v < 0 else v, 0), size) for v in (start, end))
    if step != 1:
        from torch._decomp import decomposition_table

        return decomposition_table[aten.slice_backward.default](grad, input_sizes, dim, start, end, step)
    pad = [0, 0] * (len(input_sizes) - 1 - dim % len(input_sizes)) + [start, size - end]
    return aten.constant_pad_nd.default(grad, pad, 0.0)


def _decompositions() -> dict:
    from torch._decomp import get_decompositions

    table = get_decompositions([aten.sigmoid_backward,
                                aten._log_softmax_backward_data, aten._softmax_backward_data, aten.silu_backward,
                                aten.gelu_backward, aten.hardswish_backward, aten.hardsigmoid_backward,
                                aten.leaky_relu_backward, aten.max_pool2d_with_indices_backward,
                                aten._batch_norm_no_update,
                                aten._batch_norm_with_update, aten.native_batch_norm_backward])
    table[aten.hardtanh_backward.default] = _hardtanh_backward
    table[aten.threshold_backward.default] = _threshold_backward
    table[aten.avg_pool2d_backward.default] = _avg_pool2d_backward
    table[aten.slice_backward.default] = _slice_backward
    table[aten.native_batch_norm.default] = _batch_norm_eval
    table[aten._native_batch_norm_legit_no_training.default] = (
        lambda x, w, b, m, v, momentum, eps: _batch_norm_eval(x, w, b, m, v, False, momentum, eps))
    return table


_PUBLIC = {aten._softmax.default: aten.softmax.int, aten._log_softmax.default: aten.log_softmax.int}


def _trace(module: torch.nn.Module, example: torch.Tensor) -> fx.GraphModule:
    from torch.fx.experimental.proxy_tensor import make_fx

    with torch.no_grad():
        traced = make_fx(module, tracing_mode="real", decomposition_table=_decompositions())(example)
    _masks_from_outputs(traced.graph)
    _masks_as_convolutions(traced, example)
    input_gradients_as_convolutions(traced, example)
    for node in list(traced.graph.nodes):  # the public form of ops the ONNX exporter knows only by their public name
        if node.target in _PUBLIC:
            node.target, node.args = _PUBLIC[node.target], node.args[:2]
        elif node.target == aten.upsample_bilinear2d.default:  # to the overload with a symbolic: sizes, no scales
            node.target, node.args = aten.upsample_bilinear2d.vec, (*node.args[:3], None)
        elif node.target == aten._to_copy.default and set(node.kwargs) <= {"dtype", "device", "layout"}:
            node.target, node.args, node.kwargs = torch.Tensor.to, (node.args[0], node.kwargs.get("dtype")), {}
        elif node.target == aten.constant_pad_nd.default and max(node.args[1]) <= 0:  # a crop (a padding's
            _as_slices(traced.graph, node)  # gradient): Slice, which onnxruntime runs several times faster than Pad
    traced.recompile()
    left = sorted({str(node.target) for node in traced.graph.nodes if "backward" in str(node.target)})
    if left:
        raise AkdError(f"cannot write the map's gradient as forward operations: {', '.join(left)} has no rewrite")
    return traced


def _masks_from_outputs(graph: fx.Graph) -> None:
    """Compare ReLU6's output, not its saved input, with the bounds (the same mask: clamp(x) > 0 iff x > 0): then
    the input is read by ReLU6 alone and onnxruntime fuses it into the convolution before."""
    for node in graph.nodes:
        if node.target not in (aten.gt.Scalar, aten.lt.Scalar):
            continue
        saved = node.args[0]  # a clone when the forward clamps in place
        source = saved.args[0] if saved.target == aten.clone.default else saved
        bound = 1 if node.target == aten.gt.Scalar else 2
        clamped = [user for user in source.users if user.target in (aten.hardtanh_.default, aten.hardtanh.default)
                   and user.args[bound] == node.args[1]]
        if clamped:
            node.replace_input_with(saved, clamped[0])


MASK_SCALE = 2.0 ** 122  # x * 2^122 is exact, and 6 * 2^122 stays finite in float32


def _masks_as_convolutions(module: fx.GraphModule, example: torch.Tensor) -> None:
    """Write each 0/1 mask the backward multiplies by (``x > low``, and ``x < high`` for ReLU6) as
    clamp(x * s - low * s, 0, 1) with s = 2^122, a depthwise 1x1 convolution with the clamp fused into it. Both
    products are exact and one rounding keeps the difference's sign, so the mask is the comparison's wherever
    |x - bound| >= 2^-122 (below, a fraction of 1); an overflow to +-inf still clamps to 1 or 0."""
    ShapeProp(module).propagate(example)
    graph, index = module.graph, 0
    for node in list(graph.nodes):
        if node.target != aten._to_copy.default or not all(user.target == aten.mul.Tensor for user in node.users):
            continue
        source = node.args[0]
        comparisons = (source.args if source.target == aten.logical_and.default else (source,))
        if not all(isinstance(c, fx.Node) and c.target in (aten.gt.Scalar, aten.lt.Scalar) for c in comparisons):
            continue
        meta = comparisons[0].args[0].meta.get("tensor_meta")
        if meta is None or len(meta.shape) != 4 or meta.dtype != torch.float32:  # 2^122 overflows fp16
            continue
        with graph.inserting_before(node):
            masks = [_clamped_scale(module, comparison, meta, f"{index}_{side}")
                     for side, comparison in enumerate(comparisons)]
            index += 1
            mask = masks[0] if len(masks) == 1 else graph.call_function(aten.mul.Tensor, tuple(masks))
        node.replace_all_uses_with(mask)
        for dead in dict.fromkeys((node, source, *comparisons)):
            if not dead.users:
                graph.erase_node(dead)
    for node in graph.nodes:
        node.meta.pop("tensor_meta", None)
    graph.lint()
    module.recompile()


def _clamped_scale(module: fx.GraphModule, comparison: fx.Node, meta, key: str) -> fx.Node:
    x, bound = comparison.args
    channels, sign = meta.shape[1], 1.0 if comparison.target == aten.gt.Scalar else -1.0
    weight, bias = f"_mask_weight_{key}", f"_mask_bias_{key}"
    module.register_buffer(weight, torch.full((channels, 1, 1, 1), sign * MASK_SCALE, dtype=meta.dtype))
    module.register_buffer(bias, torch.full((channels,), -sign * bound * MASK_SCALE, dtype=meta.dtype))
    graph = module.graph
    scaled = graph.call_function(aten.convolution.default, (x, graph.get_attr(weight), graph.get_attr(bias),
                                                            [1, 1], [0, 0], [1, 1], False, [0, 0], channels))
    return graph.call_function(aten.clamp.default, (scaled, 0.0, 1.0))


def _channel_scale(node: fx.Node, dtype: torch.dtype) -> tuple[fx.Node, fx.Node] | None:
    """(g, s) when ``node`` is g * s with s a constant (1, C, 1, 1) (batch norm's scale, in the backward) and
    every dtype ``dtype``."""
    if node.target != aten.mul.Tensor or not all(isinstance(arg, fx.Node) for arg in node.args):
        return None
    metas = [arg.meta.get("tensor_meta") for arg in (node, *node.args)]
    if any(meta is None or meta.dtype != dtype for meta in metas):
        return None
    for (tensor, scale), shape in zip((node.args, node.args[::-1]), (metas[2].shape, metas[1].shape), strict=True):
        if len(shape) == 4 and shape[0] == shape[2] == shape[3] == 1 and _constant(scale):
            return tensor, scale
    return None


def _constant(node: fx.Node, depth: int = 8) -> bool:
    """Computed from parameters and buffers only (within ``depth`` operations)."""
    if node.op == "get_attr":
        return True
    return (depth > 0 and node.op == "call_function"
            and all(_constant(source, depth - 1) for source in node.all_input_nodes))


def _as_slices(graph: fx.Graph, node: fx.Node) -> None:
    """Replace ``constant_pad_nd`` with only negative or zero pads (last axis first) by slices."""
    cropped = node.args[0]
    pads = node.args[1]
    with graph.inserting_before(node):
        for axis, (start, end) in enumerate(zip(pads[::2], pads[1::2], strict=True)):
            if start or end:
                cropped = graph.call_function(aten.slice.Tensor, (cropped, -1 - axis, -start, end or None))
    node.replace_all_uses_with(cropped)
    graph.erase_node(node)


def input_gradients_as_convolutions(module: fx.GraphModule, example: torch.Tensor) -> int:
    """Replace every convolution_backward (only its input gradient is used) by forward convolutions: the kernel
    flipped (and, across channels, transposed) at stride 1 with padding k - 1 - p, after spreading a strided
    gradient out with zeros (nearest upsampling times a 0/1 grid). A crop right after (the gradient of a "same"
    padding) becomes part of that padding. Where the padding would be negative, a transposed convolution with the
    same weights (onnxruntime runs the grouped one about 5x slower)."""
    ShapeProp(module).propagate(example)
    graph = module.graph
    found = [(node, *(node.args[i].meta["tensor_meta"] for i in (1, 0, 2)))
             for node in graph.nodes if node.target == aten.convolution_backward.default]  # shapes before rewriting
    for index, (node, input_meta, output_meta, weight_meta) in enumerate(found):
        grad_out, _, weight, _, stride, padding, dilation, _, _, groups, _ = node.args
        weight_shape = tuple(weight_meta.shape)
        depthwise = groups > 1 and weight_shape[1] == 1 and weight_shape[0] == groups
        if list(dilation) != [1, 1] or not (groups == 1 or depthwise):
            raise AkdError(f"a convolution (groups {groups}, dilation {list(dilation)}) whose gradient has no "
                           "rewrite lies between the tap and the logits")
        users = {user.args[1]: user for user in node.users}
        if set(users) - {0} and any(users[i].users for i in set(users) - {0}):
            raise AkdError("a weight or bias gradient is used: only input gradients can be exported")
        if 0 not in users:
            continue  # nothing read: dead code, removed below
        crop = _only_crop(users[0])
        sizes = list(zip(input_meta.shape[2:], output_meta.shape[2:], stride, padding, weight_shape[2:], strict=True))
        before = [k - 1 - p - start for (_, _, _, p, k), start in zip(sizes, crop[2::-2], strict=True)]
        after = [n - s * o + p - end for (n, o, s, p, _), end in zip(sizes, crop[3::-2], strict=True)]
        with graph.inserting_before(node):
            if min(before + after) >= 0:
                scaled = _channel_scale(grad_out, weight_meta.dtype)
                if scaled:  # the scale goes into the kernel: onnxruntime folds the product once
                    grad_out, scale = scaled
                    weight = graph.call_function(aten.mul.Tensor, (weight, graph.call_function(
                        aten.permute.default, (scale, [1, 0, 2, 3]))))
                if list(stride) != [1, 1]:
                    grad_out = _spread_out(module, grad_out, output_meta, stride, f"_gradient_grid_{index}")
                if before != after:  # a zero Pad, which onnxruntime folds into the convolution
                    grad_out = graph.call_function(aten.constant_pad_nd.default,
                                                   (grad_out, [before[1], after[1], before[0], after[0]], 0.0))
                    before = [0, 0]
                flipped = graph.call_function(aten.flip.default, (weight, [2, 3]))
                if not depthwise:
                    flipped = graph.call_function(aten.permute.default, (flipped, [1, 0, 2, 3]))
                args = (grad_out, flipped, None, [1, 1], before, [1, 1], False, [0, 0], groups)
                replaced = next(iter(users[0].users)) if any(crop) else users[0]
            else:
                extra = [n - ((o - 1) * s - 2 * p + k) for n, o, s, p, k in sizes]
                args = (grad_out, weight, None, stride, padding, [1, 1], True, extra, groups)
                replaced = users[0]
            replaced.replace_all_uses_with(graph.call_function(aten.convolution.default, args))
        for dead in [*(users[0].users if replaced is not users[0] else ()), *users.values(), node]:
            graph.erase_node(dead)
    for node in graph.nodes:
        node.meta.pop("tensor_meta", None)
    graph.eliminate_dead_code()
    graph.lint()
    module.recompile()
    return len(found)


def _only_crop(gradient: fx.Node) -> list[int]:
    """The (negated) pads, last axis first, of the crop that is the only reader of ``gradient``; zeros if none."""
    readers = list(gradient.users)
    if len(readers) == 1 and readers[0].target == aten.constant_pad_nd.default and len(readers[0].args[1]) == 4:
        pads = readers[0].args[1]
        if max(pads) <= 0:
            return [-pad for pad in pads]
    return [0, 0, 0, 0]


def _spread_out(module: fx.GraphModule, grad: fx.Node, meta, stride, name: str) -> fx.Node:
    """``grad`` with stride - 1 zeros after each value along each spatial axis (the gradient of a strided
    convolution's output as seen at its input's resolution)."""
    height, width = (size * step for size, step in zip(meta.shape[2:], stride, strict=True))
    grid = torch.zeros(1, 1, height, width, dtype=meta.dtype)
    grid[..., :: stride[0], :: stride[1]] = 1
    module.register_buffer(name, grid)
    graph = module.graph
    upsampled = graph.call_function(aten.upsample_nearest2d.vec, (grad, [height, width], None))
    return graph.call_function(aten.mul.Tensor, (upsampled, graph.get_attr(name)))


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
                return batch if scale == 1 else graph.call_function(operator.mul, (batch, scale))
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

