"""Can the fused map (issue 10) be one forward ONNX graph? The shipped student's LayerCAM at its stride-16 tap
(sum_k relu(dlog p_c/dA_k) A_k, c its top class) needs a gradient, which the ONNX exporters do not trace. Here:
``make_fx`` with PyTorch's core ATen decompositions leaves one backward operation, ``convolution_backward``; each
use (input gradient only) becomes a forward convolution - 1x1: weight transposed; depthwise at stride 1: kernel
flipped; strided: a transposed convolution - and the TorchScript exporter writes the graph. Prints its largest
difference from autograd and its speed beside the student's forward and the shipped surrogate graph (onnxruntime
CPU, batch 1, interleaved rounds). A prototype for the surrogate's graph, not part of it.

    python benchmarks/fused_map_graph.py [--surrogate-graph runs/quickstart/surrogate.onnx] [--out runs/fused-map]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch._decomp import core_aten_decompositions
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.shape_prop import ShapeProp

from akd.models.surrogate import load_surrogate
from akd.runtime.engine import default_model

aten = torch.ops.aten


def batch_norm_eval(x, weight, bias, mean, var, training, momentum, eps):
    """Eval batch norm as x * scale + shift with constant scale/shift, which onnxruntime folds into the conv."""
    scale = torch.rsqrt(var + eps) * weight
    shape = (1, -1, 1, 1)
    return x * scale.view(shape) + (bias - mean * scale).view(shape), mean[:0], var[:0]


def decompositions() -> dict:
    """PyTorch's core ATen decompositions, with eval batch norm as its folded affine form."""
    table = dict(core_aten_decompositions())
    table[aten.native_batch_norm.default] = batch_norm_eval
    table[aten._native_batch_norm_legit_no_training.default] = (
        lambda x, w, b, m, v, momentum, eps: batch_norm_eval(x, w, b, m, v, False, momentum, eps))
    return table


def layercam_at_tap(network: torch.nn.Module, tap: int):
    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            h = network.bn1(network.conv_stem(x))
            for index, block in enumerate(network.blocks):
                if index == tap + 1:
                    h = h.detach().requires_grad_(True)
                    tapped = h
                h = block(h)
            log_p = network.classifier(network.global_pool(network.bn2(network.conv_head(h)))).log_softmax(1)
            (grad,) = torch.autograd.grad(log_p.max(1).values.sum(), tapped)
        return (grad.clamp(min=0) * tapped).sum(1).clamp(min=0)
    return forward


def input_gradients_as_convolutions(module: torch.fx.GraphModule, example: torch.Tensor) -> int:
    """Replace every convolution_backward (only its input gradient is used) by a forward convolution."""
    ShapeProp(module).propagate(example)
    graph = module.graph
    found = [(node, *(tuple(node.args[i].meta["tensor_meta"].shape[-2:]) for i in (1, 0, 2)))
             for node in graph.nodes if node.target == aten.convolution_backward.default]  # shapes before rewriting
    for node, size, out_size, kernel in found:
        grad_out, _, weight, _, stride, padding, dilation, _, _, groups, _ = node.args
        with graph.inserting_before(node):
            if kernel == (1, 1) and list(stride) == [1, 1] and groups == 1:
                args = (grad_out, graph.call_function(aten.permute.default, (weight, [1, 0, 2, 3])), None, [1, 1],
                        [0, 0], [1, 1], False, [0, 0], 1)
            elif groups > 1 and list(stride) == [1, 1] and list(dilation) == [1, 1]:
                args = (grad_out, graph.call_function(aten.flip.default, (weight, [2, 3])), None, [1, 1],
                        [k - 1 - p for k, p in zip(kernel, padding, strict=True)], [1, 1], False, [0, 0], groups)
            else:
                extra = [n - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
                         for n, o, s, p, d, k in zip(size, out_size, stride, padding, dilation, kernel, strict=True)]
                args = (grad_out, weight, None, stride, padding, dilation, True, extra, groups)
            gradient = graph.call_function(aten.convolution.default, args)
        for user in list(node.users):
            if user.args[1] == 0:
                user.replace_all_uses_with(gradient)
            assert not user.users, "a weight or bias gradient is used"
            graph.erase_node(user)
        graph.erase_node(node)
    for node in graph.nodes:
        node.meta.pop("tensor_meta", None)
    graph.eliminate_dead_code()
    graph.lint()
    module.recompile()
    return len(found)


def export(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(module, (example,), str(path), input_names=["images"], opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    for node in model.graph.node:  # a sum over all dims is exported with float empty axes; ONNX wants int64
        for attribute in node.attribute:
            tensor = attribute.t
            if node.op_type == "Constant" and tensor.data_type == onnx.TensorProto.FLOAT and list(tensor.dims) == [0]:
                tensor.data_type = onnx.TensorProto.INT64
    onnx.save(model, str(path))


def rate(session: ort.InferenceSession, images: np.ndarray, count: int = 40) -> float:
    for _ in range(5):
        session.run(None, {"images": images})
    started = time.perf_counter()
    for _ in range(count):
        session.run(None, {"images": images})
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--surrogate-graph", default="runs/quickstart/surrogate.onnx")
    parser.add_argument("--out", default="runs/fused-map")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not Path(args.surrogate_graph).is_file():
        print(f"{args.surrogate_graph} not found: run scripts/quickstart.sh first (or pass --surrogate-graph)",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    network = load_surrogate(default_model()).eval().student.network
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    example = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    reference = layercam_at_tap(network, tap=4)
    traced = make_fx(reference, tracing_mode="real", decomposition_table=decompositions())(example)
    replaced = input_gradients_as_convolutions(traced, example)
    export(traced, example, out / "fused_map.onnx")
    export(network, example, out / "student.onnx")
    sessions = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for name, path in (
        ("student forward", out / "student.onnx"), ("LayerCAM graph (forward + gradient)", out / "fused_map.onnx"),
        ("shipped surrogate graph", Path(args.surrogate_graph)))}
    images = example.numpy()
    expected = reference(example).detach().numpy()
    got = sessions["LayerCAM graph (forward + gradient)"].run(None, {"images": images})[0]
    nodes = len(onnx.load(str(out / "fused_map.onnx")).graph.node)
    print(f"{replaced} convolution gradients written as convolutions; {nodes} nodes; "
          f"max abs vs autograd {np.abs(got - expected).max():.2e} (map max {expected.max():.3g})")
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            rates[name].append(rate(session, images))
    base = float(np.median(rates["student forward"]))
    for name, values in rates.items():
        print(f"{name:38s} {np.median(values):6.1f} images/s ({np.median(values) / base:.2f}x the forward)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
