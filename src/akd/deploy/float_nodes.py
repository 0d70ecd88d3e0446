"""Which nodes of a fused graph stay float in INT8: one data-flow rule for every graph, traced or exported from an
fx graph (whose node names carry no module scope), so no rule reads a name.

Quantized: what computes the logits - the student network (or the target), after its early stages. Float:
every node the logits do not depend on - the class choice (a softmax of CLASS_SHARPNESS x the logits: an int8
step there is a wrong class), CAM, LayerCAM's backward pass, the explanation head and the map - because the map
amplifies any rounding of them, and they are a small part of the graph's time. Also float:
- the early stages (finer than the stride-8 grid): their int8 rounding reaches every later feature;
- a maximum the backward compares with its input (ties share the gradient), with the nodes reading it: a
  quantized copy of the maximum equals no input value, which left no tie and divided by zero;
- a later reader of a weight read twice (the backward reads the classifier's transposed): onnxruntime quantizes
  an initializer once, with its first reader's channel axis.
Why these and not others: docs/BENCHMARKS.md, "Precision on CPU".
"""

from __future__ import annotations

from akd import contract


def float_nodes(fp32_path: str) -> list[str]:
    """Names of the nodes ``akd.deploy.calibration.quantize`` keeps in float."""
    import onnx

    model = onnx.load(fp32_path, load_external_data=False)
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    outputs = [output.name for output in graph.output]
    # a graph without the contract's logits is not a fused akd graph: what its outputs compute is quantized
    needed, pending = set(), [contract.LOGITS] if contract.LOGITS in outputs else outputs
    while pending:
        node = producers.get(pending.pop())
        if node is not None and node.name not in needed:
            needed.add(node.name)
            pending.extend(node.input)
    compared = {name for node in graph.node if node.op_type == "Equal" for name in node.input}
    maxima = compared & {output for node in graph.node if node.op_type in ("ReduceMax", "MaxPool")
                         for output in node.output}
    kept = [node.name for node in graph.node
            if node.name not in needed or maxima & (set(node.output) | set(node.input))]
    kept += [name for name in _early_stage_nodes(model) if name not in kept]
    weights, readers = {tensor.name for tensor in graph.initializer}, set()
    for node in graph.node:
        weight = node.input[1] if len(node.input) > 1 and node.input[1] in weights else None
        if weight is not None and node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            if weight in readers and node.name not in kept:
                kept.append(node.name)
            readers.add(weight)
    return kept


def _early_stage_nodes(model) -> list[str]:
    """Nodes computing on a finer grid than the student's stride-8 stage (stem, stride-2 and -4 stages)."""
    from onnx import shape_inference

    nhwc = {prop.key: prop.value for prop in model.metadata_props}.get(contract.INPUT_FORMAT_KEY) == "uint8-nhwc"
    dims = [dim.dim_value for dim in model.graph.input[0].type.tensor_type.shape.dim]
    size = min(dims[1:3] if nhwc else dims[2:])  # 0: no fixed resolution, no grid to compare with
    shapes = {info.name: [dim.dim_value for dim in info.type.tensor_type.shape.dim]
              for info in shape_inference.infer_shapes(model).graph.value_info}
    fine = {name for name, dims in shapes.items() if size and len(dims) == 4 and min(dims[2:]) * 8 > size}
    return [node.name for node in model.graph.node if fine & set(node.output)]
