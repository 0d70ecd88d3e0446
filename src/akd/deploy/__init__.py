"""Deployment artifacts: the fused ONNX graph, its fp16 form, parity checks and TensorRT engines."""
