"""Everything around the TensorRT build that needs no TensorRT: build plans, sidecars, operator checks, cache keys."""

import json
from pathlib import Path

import onnx
import pytest
from onnx import helper

from akd.deploy.calibration import cache_file
from akd.deploy.tensorrt import EngineOptions, check_operators, plan_build, sidecar, tensorrt_major
from akd.runtime.backends.tensorrt import check_sidecar, read_sidecar, sidecar_for
from akd.util import AkdError


def test_tensorrt_11_is_strongly_typed_without_precision_flags():
    for precision in ("fp32", "fp16"):
        plan = plan_build(11, precision, has_qdq=False, options=EngineOptions(precision=precision))
        assert plan.strongly_typed and plan.flags == [] and not plan.use_calibrator
    plan = plan_build(11, "int8", has_qdq=True, options=EngineOptions(precision="int8"))
    assert plan.strongly_typed and not plan.use_calibrator
    with pytest.raises(AkdError, match="Q/DQ"):
        plan_build(11, "int8", has_qdq=False, options=EngineOptions(precision="int8"))


def test_tensorrt_10_uses_builder_flags_and_calibrator_fallback():
    assert plan_build(10, "fp16", False, EngineOptions()).flags == ["FP16"]
    explicit = plan_build(10, "int8", True, EngineOptions(precision="int8"))
    assert not explicit.strongly_typed and "INT8" in explicit.flags and not explicit.use_calibrator
    implicit = plan_build(10, "int8", False, EngineOptions(precision="int8", calib_data="/data"))
    assert implicit.use_calibrator
    with pytest.raises(AkdError, match="--calib-data"):
        plan_build(10, "int8", False, EngineOptions(precision="int8"))
    with pytest.raises(AkdError, match="too old"):
        plan_build(8, "fp16", False, EngineOptions())


def test_dla_and_version_compatibility_flags():
    plan = plan_build(10, "fp16", False, EngineOptions(dla_core=0, version_compatible=True))
    assert "GPU_FALLBACK" in plan.flags and "VERSION_COMPATIBLE" in plan.flags
    assert plan_build(11, "fp16", False, EngineOptions(dla_core=1)).flags == ["GPU_FALLBACK"]


def test_version_parsing():
    assert tensorrt_major("10.13.0.35") == 10 and tensorrt_major("11.4.1") == 11


def test_sidecar_round_trip_and_mismatch_messages(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"graph bytes")
    device = {"name": "NVIDIA H200", "compute_capability": "9.0"}
    metadata = {"akd_config": json.dumps({"student": "resnet18_cbam"}), "akd_input_format": "uint8-nhwc"}
    data = sidecar(onnx_path, EngineOptions(precision="fp16", batch=(1, 4, 16)), "11.4.1", device, metadata)
    path = sidecar_for(tmp_path / "m.engine")
    assert path.name == "m.engine.json"
    path.write_text(json.dumps(data))
    loaded = read_sidecar(path)
    assert loaded["profile"] == {"min": 1, "opt": 4, "max": 16} and loaded["input_format"] == "uint8-nhwc"
    assert len(loaded["source_sha256"]) == 64 and loaded["config"]["student"] == "resnet18_cbam"
    check_sidecar(loaded, "11.4.1", device, Path("m.engine"))  # same machine: fine
    with pytest.raises(AkdError, match="built with TensorRT 11.4.1, this is 10.13.0.*rebuild"):
        check_sidecar(loaded, "10.13.0", device, Path("m.engine"))
    with pytest.raises(AkdError, match="built for NVIDIA H200 .*rebuild"):
        check_sidecar(loaded, "11.4.1", {"name": "Orin", "compute_capability": "8.7"}, Path("m.engine"))
    loaded["hardware_compatibility"] = "ampere-plus"
    check_sidecar(loaded, "11.4.1", {"name": "A100", "compute_capability": "8.0"}, Path("m.engine"))
    with pytest.raises(AkdError, match="hardware compatibility ampere-plus.*sm 7.5"):
        check_sidecar(loaded, "11.4.1", {"name": "T4", "compute_capability": "7.5"}, Path("m.engine"))
    loaded["hardware_compatibility"] = "same-compute-capability"  # not "any GPU": the sm it was built for
    with pytest.raises(AkdError, match="built for NVIDIA H200"):
        check_sidecar(loaded, "11.4.1", {"name": "A100", "compute_capability": "8.0"}, Path("m.engine"))
    check_sidecar(loaded, "11.4.1", {"name": "H100", "compute_capability": "9.0"}, Path("m.engine"))


class _FakeEngine:
    """The ICudaEngine calls check_engine_io makes, over a table of (mode, dtype, shape)."""

    def __init__(self, tensors: dict):
        self.tensors = tensors
        self.num_io_tensors = len(tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> str:
        return self.tensors[name][0]

    def get_tensor_dtype(self, name: str):
        return self.tensors[name][1]

    def get_tensor_shape(self, name: str) -> tuple:
        return self.tensors[name][2]


def test_engine_io_is_checked_against_the_runtime_buffers():
    import numpy as np

    from akd import contract
    from akd.runtime.backends.tensorrt import check_engine_io

    config = {"input_size": [32, 32], "classes": ["a", "b", "c"]}
    expected = {contract.INPUT: contract.input_spec(config, "float-nchw"), **contract.output_specs(config)}
    good = {contract.INPUT: ("in", np.float32, (-1, 3, 32, 32)), "saliency": ("out", np.float32, (-1, 1, 32, 32)),
            "logits": ("out", np.float32, (-1, 3)), "class_id": ("out", np.int32, (-1,)),
            "score": ("out", np.float32, (-1,))}

    def check(tensors):
        check_engine_io(_FakeEngine(tensors), expected, contract.INPUT, lambda dtype: dtype, "in")

    check(good)
    with pytest.raises(AkdError, match="'saliency' is float16 .*hold float32"):
        check({**good, "saliency": ("out", np.float16, (-1, 1, 32, 32))})  # fp16 I/O: garbage if unchecked
    with pytest.raises(AkdError, match="'logits' is float32 \\(5,\\)"):
        check({**good, "logits": ("out", np.float32, (-1, 5))})
    with pytest.raises(AkdError, match="not the akd contract's"):
        check({name: value for name, value in good.items() if name != "score"})
    with pytest.raises(AkdError, match="'class_id' is an input"):
        check({**good, "class_id": ("in", np.int32, (-1,))})


def test_read_sidecar_errors(tmp_path):
    with pytest.raises(AkdError, match="not found"):
        read_sidecar(tmp_path / "x.engine.json")
    bad = tmp_path / "bad.engine.json"
    bad.write_text("{")
    with pytest.raises(AkdError, match="malformed"):
        read_sidecar(bad)


def test_operator_support_check(caplog):
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Sigmoid", ["y"], ["z"]),
             helper.make_node("StringNormalizer", ["z"], ["s"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [1])])
    assert check_operators(helper.make_model(graph)) == ["StringNormalizer"]
    assert "StringNormalizer" in caplog.text


def test_exported_graphs_use_only_tensorrt_ops(tiny_checkpoint, tmp_path):
    from akd.deploy.exporter import ExportOptions, export

    for precision in ("fp32", "fp16"):
        out = tmp_path / f"m.{precision}.onnx"
        export(ExportOptions(str(tiny_checkpoint), str(out), precision=precision, verify=False))
        assert check_operators(onnx.load_model(str(out))) == []


def test_calibration_cache_key_changes_with_each_input(tmp_path):
    base = cache_file(tmp_path, "a" * 64, "b" * 64, "minmax", "cpu")
    assert base != cache_file(tmp_path, "c" * 64, "b" * 64, "minmax", "cpu")
    assert base != cache_file(tmp_path, "a" * 64, "d" * 64, "minmax", "cpu")
    assert base != cache_file(tmp_path, "a" * 64, "b" * 64, "entropy", "cpu")
    assert base != cache_file(tmp_path, "a" * 64, "b" * 64, "minmax", "tensorrt")
