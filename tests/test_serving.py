"""Triton and DeepStream artifacts: generated from the graph's metadata, validated against Triton's ModelConfig."""

from __future__ import annotations

import json

import onnx
import pytest

from akd.cli import main
from akd.deploy.graph import read_metadata
from akd.deploy.serving import TritonOptions, deepstream_config, graph_signature, parse_deepstream_config, triton_config
from akd.util import AkdError

from conftest import tiny_surrogate_config

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT32: "TYPE_INT32",
                  onnx.TensorProto.UINT8: "TYPE_UINT8"}


def test_triton_repository_parses_as_model_config_and_matches_the_graph(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "repo"
    assert main(["export", str(tiny_checkpoint), "--format", "triton", "--out", str(repo), "--triton-name", "tiny",
                 "--batch", "1,4,16", "--triton-instances", "2", "--no-verify"]) == 0, capsys.readouterr().err
    folder = repo / "tiny"
    model = onnx.load(str(folder / "1" / "model.onnx"))
    metadata = read_metadata(model)
    parsed = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert parsed.name == "tiny" and parsed.platform == "onnxruntime_onnx" and parsed.max_batch_size == 16
    assert list(parsed.dynamic_batching.preferred_batch_size) == [4, 16]
    assert parsed.instance_group[0].count == 2
    assert parsed.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    graph = {value.name: value for value in [*model.graph.input, *model.graph.output]}
    for tensor in [*parsed.input, *parsed.output]:
        value = graph[tensor.name]
        assert model_config_pb2.DataType.Name(tensor.data_type) == ONNX_TO_TRITON[value.type.tensor_type.elem_type]
        graph_dims = [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]  # batch axis excluded
        assert list(tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims) == graph_dims
    labels = (folder / "labels.txt").read_text().splitlines()
    assert labels == json.loads(metadata["akd_config"])["classes"]
    assert main(["export", str(tiny_checkpoint), "--format", "triton", "--out", str(repo), "--triton-name", "tiny",
                 "--no-verify"]) == 2  # existing artifacts are kept unless --force
    assert "--force" in capsys.readouterr().err


def test_deepstream_export_writes_graph_config_and_labels(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", str(tiny_checkpoint), "--format", "deepstream", "--out", str(tmp_path),
                 "--batch", "1,4,8", "--no-verify"]) == 0, capsys.readouterr().err
    values = parse_deepstream_config((tmp_path / "tiny.nvinfer.txt").read_text())
    assert values["onnx-file"] == "tiny.onnx" and (tmp_path / "tiny.onnx").is_file()
    assert values["batch-size"] == "4" and values["labelfile-path"] == "tiny.labels.txt"
    assert values["model-engine-file"] == "tiny.onnx_b4_gpu0_fp32.engine"
    assert len((tmp_path / "tiny.labels.txt").read_text().splitlines()) == 10


def test_triton_plan_platform_and_ort_tensorrt_accelerator():
    pytest.importorskip("tritonclient.grpc")
    from akd.deploy.serving import validate_triton_config

    config = tiny_surrogate_config()
    onnx_text = triton_config(config, "uint8-nhwc", "onnxruntime_onnx", TritonOptions(ort_tensorrt="FP16"))
    parsed = validate_triton_config(onnx_text)
    accelerator = parsed.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert list(parsed.input[0].dims) == [64, 64, 3]
    plan = validate_triton_config(triton_config(config, "float-nchw", "tensorrt_plan", TritonOptions(max_batch=8)))
    assert plan.platform == "tensorrt_plan" and list(plan.input[0].dims) == [3, 64, 64]
    with pytest.raises(AkdError, match="onnxruntime_onnx platform only"):
        triton_config(config, "float-nchw", "tensorrt_plan", TritonOptions(ort_tensorrt="FP16"))


def test_graph_signature_follows_the_config():
    signature = graph_signature(tiny_surrogate_config(classes=7, size=96), "float-nchw")
    assert signature["logits"] == ("TYPE_FP32", [7]) and signature["saliency"] == ("TYPE_FP32", [1, 96, 96])


def test_deepstream_config_values_come_from_the_metadata():
    config = tiny_surrogate_config()  # mean 0.5, std 0.25 on every channel
    metadata = {"akd_config": json.dumps(config), "akd_input_format": "float-nchw", "akd_precision": "int8"}
    values = parse_deepstream_config(deepstream_config(metadata, "tiny.onnx", "tiny.engine", 4))
    assert float(values["net-scale-factor"]) == pytest.approx(1 / (255 * 0.25))
    assert [float(v) for v in values["offsets"].split(";")] == pytest.approx([127.5] * 3)
    assert values["infer-dims"] == "3;64;64" and values["batch-size"] == "4"
    assert values["network-type"] == "100" and values["output-tensor-meta"] == "1"
    assert values["network-mode"] == "1" and values["model-color-format"] == "0"
    assert values["onnx-file"] == "tiny.onnx" and values["model-engine-file"] == "tiny.engine"
    # a pixel normalised by nvinfer equals akd's normalisation
    pixel = 200.0
    assert float(values["net-scale-factor"]) * (pixel - 127.5) == pytest.approx((pixel / 255 - 0.5) / 0.25)


def test_deepstream_refuses_uint8_graphs_and_notes_per_channel_std():
    config = tiny_surrogate_config()
    with pytest.raises(AkdError, match="float NCHW"):
        deepstream_config({"akd_config": json.dumps(config), "akd_input_format": "uint8-nhwc"}, "m.onnx", None, 1)
    config["preprocessing"]["std"] = [0.229, 0.224, 0.225]
    text = deepstream_config({"akd_config": json.dumps(config), "akd_input_format": "float-nchw"}, "m.onnx", None, 1)
    assert "approximated by their mean" in text and "model-engine-file" not in text


def test_examples_build_a_triton_request_and_blend_a_map(tmp_path):
    pytest.importorskip("tritonclient.grpc")
    import importlib.util
    from pathlib import Path

    import cv2
    import numpy as np

    examples = Path(__file__).resolve().parents[1] / "examples"
    modules = {}
    for name in ("triton_client", "deepstream_probe"):
        spec = importlib.util.spec_from_file_location(name, examples / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.full((300, 400, 3), 128, np.uint8))
    mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
    sample = modules["triton_client"].preprocess(str(image), 64, mean, std, uint8=False)
    assert sample.shape == (3, 64, 64) and np.allclose(sample, (128 / 255 - 0.5) / 0.25, atol=1e-6)
    inputs, outputs = modules["triton_client"].build_request(sample[None])
    assert inputs[0].name() == "images" and inputs[0].datatype() == "FP32" and inputs[0].shape() == [1, 3, 64, 64]
    assert [o.name() for o in outputs] == ["saliency", "class_id", "score"]
    frame = np.zeros((72, 128, 4), np.uint8)
    saliency = np.zeros((64, 64), np.float32)
    saliency[:, 32:] = 1.0
    modules["deepstream_probe"].blend(frame, saliency)
    assert frame[:, :, 3].max() == 0  # alpha untouched
    assert not np.array_equal(frame[:, 100, :3], frame[:, 10, :3])  # hot half differs from cold half


class FakeTriton:
    """Stands in for tritonclient's InferenceServerClient: serves one model config and runs the graph with
    onnxruntime, so the Triton runner is tested end to end without a server."""

    def __init__(self, config_text: str, onnx_path):
        import onnxruntime as ort
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2

        parsed = text_format.Parse(config_text, model_config_pb2.ModelConfig())
        self.config = {"config": json_format.MessageToDict(parsed, preserving_proto_field_name=True)}
        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.batches: list[int] = []

    def get_model_config(self, model, as_json=False):
        assert as_json and model == "tiny"
        return self.config

    def infer(self, model, inputs, outputs, client_timeout=None):
        import numpy as np

        dtype = np.uint8 if inputs[0].datatype() == "UINT8" else np.float32
        batch = np.frombuffer(inputs[0]._raw_content, dtype).reshape(inputs[0].shape())
        self.batches.append(len(batch))
        names = [o.name() for o in outputs]
        values = dict(zip(names, self.session.run(names, {"images": batch}), strict=True))

        class Result:
            def as_numpy(self, name):
                return values[name].reshape(len(batch), 1) if name in ("class_id", "score") else values[name]

        return Result()

    def close(self):
        pass


def test_triton_runner_matches_the_local_graph(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc")
    import numpy as np

    from akd.runtime import SaliencyEngine
    from akd.runtime.backends.triton import TritonRunner

    repo = tmp_path / "repo"
    assert main(["export", str(tiny_checkpoint), "--format", "triton", "--out", str(repo), "--triton-name", "tiny",
                 "--batch", "1,2,4", "--no-verify"]) == 0, capsys.readouterr().err
    onnx_path = repo / "tiny" / "1" / "model.onnx"
    fake = FakeTriton((repo / "tiny" / "config.pbtxt").read_text(), onnx_path)
    remote = SaliencyEngine(TritonRunner("grpc://localhost:8001/tiny", client=fake))
    local = SaliencyEngine.load(str(onnx_path))
    assert remote.info.max_batch == 4 and remote.classes == local.classes
    frames = [np.random.default_rng(i).integers(0, 255, (48, 80, 3), dtype=np.uint8) for i in range(6)]
    for got, want in zip(remote.explain(frames), local.explain(frames), strict=True):
        assert got.class_id == want.class_id and np.abs(got.saliency - want.saliency).max() < 1e-5
    assert fake.batches == [4, 2]  # split at the served max_batch_size


@pytest.mark.parametrize("url", ["http://host:8000/m", "grpc://host:8001", "grpc://host:8001/a/b"])
def test_triton_urls_are_checked(url):
    from akd.runtime.backends.triton import parse_url

    with pytest.raises(AkdError, match="grpc://HOST:PORT/MODEL"):
        parse_url(url)


def test_explain_shards_split_the_inputs(tiny_checkpoint, flat_folder, tmp_path):
    from akd.runtime import SaliencyEngine
    from akd.runtime.explain import explain_inputs

    done = []
    with SaliencyEngine.load(str(tiny_checkpoint)) as engine:
        for index in range(3):
            summary = explain_inputs(engine, [str(flat_folder)], str(tmp_path / f"s{index}"), progress=False,
                                     shard=(index, 3))
            done.append({p.name for p in summary.written})
    stems = [{name.removesuffix(".overlay.png") for name in names} for names in done]
    everything = {path.stem for path in flat_folder.iterdir()}
    assert set().union(*stems) == everything and sum(len(s) for s in stems) == len(everything)  # disjoint, cover
