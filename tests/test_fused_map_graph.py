"""benchmarks/fused_map_graph.py turns a traced input gradient into forward convolutions so one ONNX graph can
carry a LayerCAM. The rewrite must equal autograd on every convolution kind it handles (1x1, depthwise at stride
1, strided), including through batch norm in eval, and the written graph must run in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from conftest import load_benchmark


def test_input_gradients_written_as_convolutions_equal_autograd_and_export(tmp_path):
    bench = load_benchmark("fused_map_graph")
    torch.manual_seed(0)
    head = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU6(),  # 1x1
                         nn.Conv2d(16, 16, 5, padding=2, groups=16), nn.ReLU6(),  # depthwise, stride 1
                         nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16),  # depthwise, strided
                         nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU6())  # full, strided (odd size in)
    classifier = nn.Linear(24, 5)
    head[1].running_mean.uniform_(-1, 1)
    head[1].running_var.uniform_(0.5, 2)
    for module in (head, classifier):
        module.eval().requires_grad_(False)

    def layercam(tapped):
        with torch.enable_grad():
            tapped = tapped.detach().requires_grad_(True)
            log_p = classifier(head(tapped).mean((2, 3))).log_softmax(1)
            (grad,) = torch.autograd.grad(log_p.max(1).values.sum(), tapped)
        return (grad.clamp(min=0) * tapped).sum(1)

    example = torch.randn(1, 8, 13, 13)
    traced = make_fx(layercam, tracing_mode="real", decomposition_table=bench.decompositions())(example)
    assert bench.input_gradients_as_convolutions(traced, example) == 4
    assert not any(node.target == torch.ops.aten.convolution_backward.default for node in traced.graph.nodes)
    other = torch.randn(1, 8, 13, 13)  # the rewrite holds for inputs it was not traced on
    expected = layercam(other).detach()
    assert expected.abs().max() > 0
    torch.testing.assert_close(traced(other), expected, rtol=1e-5, atol=1e-6)

    path = tmp_path / "layercam.onnx"
    bench.export(traced, example, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": other.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
