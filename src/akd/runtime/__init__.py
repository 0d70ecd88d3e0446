"""Real-time saliency: ``SaliencyEngine`` over onnxruntime, TensorRT or torch backends, plus video helpers."""

from akd.runtime.engine import Result, SaliencyEngine

__all__ = ["Result", "SaliencyEngine"]
