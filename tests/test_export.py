import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from akd.cli import calibrate_main, export_main
from akd.deploy import parity
from akd.deploy.exporter import ExportOptions, export
from akd.util import AkdError


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _meta(path) -> dict:
    return {p.key: p.value for p in onnx.load_model(str(path)).metadata_props}


@pytest.mark.parametrize("input_format", ["float-nchw", "uint8-nhwc"])
def test_fused_graph_contract(tiny_checkpoint, photo_folder, tmp_path, input_format):
    out = tmp_path / "m.onnx"
    export(ExportOptions(str(tiny_checkpoint), str(out), precision="fp32", input_format=input_format,
                         parity_data=str(photo_folder)))
    model = onnx.load_model(str(out))
    assert model.opset_import[0].version >= 17
    onnx.checker.check_model(model, full_check=True)
    session = _session(out)
    (image_input,) = session.get_inputs()
    assert image_input.name == "images"
    if input_format == "uint8-nhwc":
        assert image_input.type == "tensor(uint8)" and image_input.shape[1:] == [64, 64, 3]
    else:
        assert image_input.type == "tensor(float)" and image_input.shape[1:] == [3, 64, 64]
    outputs = {o.name: o for o in session.get_outputs()}
    assert list(outputs) == ["saliency", "logits", "class_id", "score"]
    assert [outputs[n].type for n in outputs] == ["tensor(float)", "tensor(float)", "tensor(int32)", "tensor(float)"]
    for batch in (1, 5, 16):  # dynamic batch
        shape = (batch, 64, 64, 3) if input_format == "uint8-nhwc" else (batch, 3, 64, 64)
        feed = np.random.default_rng(0).integers(0, 255, shape).astype(
            np.uint8 if input_format == "uint8-nhwc" else np.float32)
        saliency, logits, class_id, score = session.run(None, {"images": feed})
        assert saliency.shape == (batch, 1, 64, 64) and logits.shape == (batch, 10)
        assert class_id.shape == (batch,) and score.shape == (batch,)
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        np.testing.assert_allclose(score, probabilities.max(1), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(class_id, logits.argmax(1))
    metadata = _meta(out)
    config = json.loads(metadata["akd_config"])
    assert config["student"] == "resnet18_cbam" and metadata["akd_precision"] == "fp32"
    assert metadata["akd_input_format"] == input_format and len(metadata["akd_source_sha256"]) == 64
    assert metadata["akd_version"]


def test_fp16_graph_has_fp16_weights_and_fp32_io(stable_checkpoint, photo_folder, tmp_path):
    """The graph's form; the stable fixture, since fp16 rounding flips the random features' near-tied classes."""
    out = tmp_path / "m.fp16.onnx"
    export(ExportOptions(str(stable_checkpoint), str(out), precision="fp16", parity_data=str(photo_folder)))
    model = onnx.load_model(str(out))
    kernels = [init for init in model.graph.initializer if len(init.dims) == 4]
    half = sum(int(np.prod(k.dims)) for k in kernels if k.data_type == onnx.TensorProto.FLOAT16)
    assert half / sum(int(np.prod(k.dims)) for k in kernels) > 0.9  # the student's convolutions are all fp16
    session = _session(out)
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_outputs()[0].type == "tensor(float)"
    sigmoid_inputs = {n.input[0] for n in model.graph.node if n.op_type == "Sigmoid"}
    cast_targets = {n.output[0]: n.attribute[0].i for n in model.graph.node if n.op_type == "Cast"}
    # every sigmoid gate reads fp32: it is fed by a Cast to float or by an fp32 op chain
    assert any(cast_targets.get(name) == onnx.TensorProto.FLOAT for name in sigmoid_inputs)


@pytest.mark.parametrize("flavour", ["cpu", "tensorrt"])
def test_int8_flavours_and_cache(stable_checkpoint, photo_folder, tmp_path, flavour):
    cache = tmp_path / "cache"
    out = tmp_path / f"m.{flavour}.int8.onnx"
    options = ExportOptions(str(stable_checkpoint), str(out), precision="int8", calib_data=str(photo_folder),
                            num_images=32, int8_target=flavour, cache_dir=str(cache), max_drift=0.05,
                            parity_data=str(photo_folder))
    export(options)
    model = onnx.load_model(str(out))
    quant = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quant, "explicit Q/DQ nodes expected"
    activation_zero_points = {init.data_type for init in model.graph.initializer
                              if init.name in {q.input[2] for q in quant}}
    if flavour == "tensorrt":
        assert activation_zero_points == {onnx.TensorProto.INT8}
        assert not any(n.op_type == "DequantizeLinear" and "bias" in n.input[0] for n in model.graph.node)
    else:
        assert onnx.TensorProto.UINT8 in activation_zero_points
    metadata = _meta(out)
    assert metadata["akd_precision"] == "int8" and metadata["akd_int8_flavour"] == flavour
    drift = json.loads(metadata["akd_drift"])
    assert drift["saliency_pearson"] >= 0.98  # classes: the fixture's bias decides them whatever the precision
    assert drift["evaluated_on"] == "16 held-out images of the calibration data"
    cache_files = list(cache.iterdir())
    assert len(cache_files) == 1 and flavour in cache_files[0].name
    # same model, data and method: the cache is reused; other data: a new key, the stale file is left alone
    options.force = True
    info_hit = _calibration_info(out, options)
    assert info_hit["cache_hit"]
    options.num_images = 16
    info_miss = _calibration_info(out, options)
    assert not info_miss["cache_hit"] and len(list(cache.iterdir())) == 2


def _calibration_info(out, options):
    export(options)
    return json.loads(_meta(out)["akd_calibration"])


def test_drift_gate_refuses_broken_calibration(stable_checkpoint, photo_folder, tmp_path):
    black = tmp_path / "black"
    black.mkdir()
    from PIL import Image

    for index in range(4):
        Image.new("RGB", (80, 80), (128, 128, 128)).save(black / f"{index}.png")
    out = tmp_path / "broken.int8.onnx"
    with pytest.raises(AkdError, match="drifts too far") as error:
        export(ExportOptions(str(stable_checkpoint), str(out), precision="int8", calib_data=str(black),
                             calibration_method="minmax", cache_dir=str(tmp_path / "cache"),
                             parity_data=str(photo_folder)))
    assert "saliency_pearson" in str(error.value) and not out.exists()
    # a --max-drift above the default replaces the limits, knowingly: the same model is then written
    export(ExportOptions(str(stable_checkpoint), str(out), precision="int8", calib_data=str(black),
                         calibration_method="minmax", cache_dir=str(tmp_path / "cache"), max_drift=1.0,
                         parity_data=str(photo_folder)))
    assert out.exists()
    out.unlink()
    # histogram methods may not even build ranges from flat images: either way a clear error, nothing written
    with pytest.raises(AkdError, match="calibration failed with the percentile method|drifts too far"):
        export(ExportOptions(str(stable_checkpoint), str(out), precision="int8", calib_data=str(black),
                             calibration_method="percentile", cache_dir=str(tmp_path / "cache"),
                             parity_data=str(photo_folder)))
    assert not out.exists()


def test_parity_failure_writes_nothing_and_prints_table(tiny_checkpoint, tmp_path, monkeypatch):
    def broken_compare(reference, candidate, real):
        metrics = {"saliency_max_abs": 0.5, "saliency_pearson": 0.1, "top20_iou": 0.1, "class_agreement": 0.5,
                   "images": 4, "real_images": 4}
        return metrics

    monkeypatch.setattr(parity, "compare", broken_compare)
    out = tmp_path / "m.onnx"
    with pytest.raises(AkdError, match="parity check failed") as error:
        export(ExportOptions(str(tiny_checkpoint), str(out), precision="fp32"))
    assert "FAIL" in str(error.value) and not out.exists()


def test_interrupted_write_leaves_no_artifact(tiny_checkpoint, tmp_path, monkeypatch):
    import akd.deploy.graph as graph

    def crash(model, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(graph.onnx if hasattr(graph, "onnx") else onnx, "save_model", crash)
    out = tmp_path / "m.onnx"
    with pytest.raises(KeyboardInterrupt):
        export(ExportOptions(str(tiny_checkpoint), str(out), precision="fp32", verify=False))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    code = export_main([str(tiny_checkpoint), "--precision", "fp32", "--out", str(out)])
    assert code == 2 and "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


def test_engine_without_tensorrt_says_what_to_install(tiny_checkpoint, tmp_path, capsys):
    try:
        import tensorrt

        if hasattr(tensorrt, "Builder"):
            pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    code = export_main([str(tiny_checkpoint), "--format", "engine", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "TensorRT is not installed" in err and "pip install tensorrt" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,fragment", [
    (["missing.safetensors"], "checkpoint not found"),
    (["{ckpt}", "--precision", "fp8"], "invalid choice"),
    (["{ckpt}", "--precision", "int8"], "INT8 needs calibration images (--data / --calib-data DIR)"),
    (["{corrupt}"], "not a readable safetensors checkpoint"),
    (["{ckpt}", "--batch", "8,4,2"], "MIN <= OPT <= MAX"),
])
def test_export_cli_errors(tiny_checkpoint, tmp_path, capsys, argv, fragment):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    argv = [a.format(ckpt=tiny_checkpoint, corrupt=corrupt) for a in argv]
    code = export_main([*argv, "--out", str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err


def test_calibrate_command(stable_checkpoint, photo_folder, tmp_path, capsys, caplog):
    fp32 = tmp_path / "m.onnx"
    export(ExportOptions(str(stable_checkpoint), str(fp32), precision="fp32", verify=False))
    out = tmp_path / "m.int8.onnx"
    code = calibrate_main([str(fp32), "--data", str(photo_folder), "--out", str(out), "--num-images", "32",
                           "--cache-dir", str(tmp_path / "cache"), "--max-drift", "0.05"])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 0, err
    assert "akd-calibrate: int8 check: " in err and "akd-export" not in err
    assert "Collecting tensor data" not in captured.out and "Finding optimal threshold" not in captured.out
    noise = caplog.text  # onnxruntime's quantizer logs through the root logger: filtered, counted once
    assert "out-of-range" not in noise and "pre-processing before quantization" not in noise
    assert _meta(out)["akd_int8_flavour"] == "cpu"
    assert calibrate_main([str(out), "--data", str(photo_folder), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "calibrate the fp32 graph" in capsys.readouterr().err


def test_include_target_fuses_the_target_decision(tmp_path):
    import torch
    import torchvision
    from safetensors.torch import save_file

    from akd.models.surrogate import Surrogate, save_checkpoint
    from akd.util import sha256_file

    from conftest import tiny_surrogate_config

    torch.manual_seed(0)
    target = torchvision.models.resnet18(num_classes=1000).eval()
    weights = tmp_path / "r18.safetensors"
    save_file(target.state_dict(), str(weights))
    config = tiny_surrogate_config()
    config["target"] = {"name": "torchvision:resnet18", "kind": "torchvision", "weights": str(weights),
                        "sha256": sha256_file(weights)}
    checkpoint = tmp_path / "with_target.safetensors"
    save_checkpoint(checkpoint, Surrogate(config).eval())
    out = tmp_path / "fused.onnx"
    export(ExportOptions(str(checkpoint), str(out), precision="fp32", verify=False, include_target=True))
    images = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    _, logits, class_id, score = _session(out).run(None, {"images": images})
    with torch.no_grad():
        expected = torch.softmax(target(torch.from_numpy(images)), 1)
    np.testing.assert_array_equal(class_id, expected.argmax(1).numpy())
    np.testing.assert_allclose(score, expected.max(1).values.numpy(), atol=1e-5)
    assert logits.shape == (3, 10) and json.loads(_meta(out)["akd_include_target"]) is True

    for kind, message in (("onnx", "ONNX black box"), ("torchscript", "TorchScript")):
        config["target"] = {"name": "m", "kind": kind, "path": "m", "sha256": "0" * 64}
        save_checkpoint(checkpoint, Surrogate(config).eval())
        with pytest.raises(AkdError, match=message):
            export(ExportOptions(str(checkpoint), str(tmp_path / "x.onnx"), precision="fp32", include_target=True))


def test_histogram_calibration_survives_a_near_constant_gate(photo_folder, tmp_path):
    """A channel gate that barely moves (a CBAM gate at its identity value sigmoid(5)) cannot be binned by
    onnxruntime's float32 histograms; akd gives it its observed min/max and calibrates the rest by percentile."""
    import torch

    from akd.data.sources import discover
    from akd.deploy.calibration import CalibrationData, ImageCalibrationReader, near_constant_tensors, quantize

    from conftest import tiny_surrogate_config

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            features = self.conv(x)
            gate = torch.sigmoid(5 + 1e-6 * features.mean(dim=(2, 3), keepdim=True))
            return features * gate

    path = tmp_path / "gated.onnx"
    torch.manual_seed(0)
    torch.onnx.export(Gated().eval(), (torch.randn(1, 3, 64, 64),), str(path), input_names=["images"],
                      output_names=["out"], opset_version=17, dynamo=False)
    config = tiny_surrogate_config()
    samples = discover(str(photo_folder), "test").samples[:16]
    reader = ImageCalibrationReader(samples, config, "float-nchw")
    constant = near_constant_tensors(str(path), reader)
    assert constant and all(0.99 < low <= high < 0.995 for name, (low, high) in constant.items()
                            if "Sigmoid" in name)
    info = quantize(str(path), str(tmp_path / "gated.int8.onnx"), CalibrationData(samples, [], "fp"), config,
                    "float-nchw", "cpu", "percentile", None)
    assert info["near_constant_tensors"] == len(constant)
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "gated.int8.onnx")).graph.node)


def test_parity_measures_directly():
    """Pearson, top-20% IoU and class agreement on hand-made maps with known answers."""
    ramp = np.arange(100, dtype=np.float64)
    assert parity._pearson(ramp, 2 * ramp + 1) == pytest.approx(1.0)
    assert parity._pearson(ramp, -ramp) == pytest.approx(-1.0)
    assert parity._pearson(np.ones(5), np.ones(5)) == 1.0 and parity._pearson(np.ones(5), np.arange(5.0)) == 0.0
    assert parity.top_iou(ramp, ramp) == 1.0 and parity.top_iou(ramp, -ramp) == 0.0
    shifted = np.roll(ramp, 10)  # top 20: 80..99 vs the positions now holding 70..89 -> 10 shared of 30
    assert parity.top_iou(ramp, shifted) == pytest.approx(10 / 30)
    maps = np.stack([ramp, ramp])[:, None].reshape(2, 1, 10, 10)
    logits = np.array([[0.0, 5.0, 1.0, 0.0], [0.0, 1.0, 5.0, 0.0]])
    reference = {"saliency": maps, "class_id": np.array([1, 2]), "logits": logits}
    candidate = {"saliency": maps + 0.5, "class_id": np.array([1, 3]), "logits": logits}
    metrics = parity.compare(reference, candidate, real=np.array([True, False]))
    assert metrics["saliency_max_abs"] == pytest.approx(0.5) and metrics["saliency_pearson"] == pytest.approx(1.0)
    assert metrics["class_agreement"] == 1.0 and metrics["real_images"] == 1  # the generated image's class is free
    metrics = parity.compare(reference, candidate, real=np.array([False, False]))
    assert metrics["class_agreement"] == 0.5  # no real image: judged on all


def test_fp16_is_judged_on_decided_real_photos_with_a_looser_limit_for_generated_images():
    """fp16's primary limit reads the real photos; generated images (where half precision rounds most) get a
    looser one; near-ties (top two logits < NEAR_TIE apart, where the map blends two classes) are reported, not
    judged; a graph broken on any decided image is still refused, and so is one left with too few decided."""
    maps = np.zeros((4, 1, 4, 4))
    clear, tied = [0.0, 0.0, 9.0, 0.0, 0.0], [0.0, 0.0, 4.00, 3.99, 0.0]
    reference = {"saliency": maps, "class_id": np.array([1, 2, 3, 3]), "logits": np.array([clear, clear, clear, tied])}
    real = np.array([False, True, True, True])

    def fp16_metrics(generated: float, real_error: float, tie_error: float = 0.0, classes=(1, 2, 3, 3)) -> dict:
        errors = np.array([generated, real_error, 0.0, tie_error])[:, None, None, None]
        candidate = {"saliency": maps + errors, "class_id": np.array(classes), "logits": reference["logits"]}
        return parity.compare(reference, candidate, real)

    def fp16_failures(*args, **kwargs) -> list[str]:
        return parity.failures(fp16_metrics(*args, **kwargs), "fp16")

    assert fp16_failures(0.0126, 0.008) == []  # the shipped surrogate's numbers before the calibrated map
    assert fp16_failures(0.0126, 0.012) == ["saliency_max_abs_real_decided"]
    assert fp16_failures(0.05, 0.001) == ["saliency_max_abs_generated_decided"]
    assert fp16_failures(0.0, 0.0, classes=(1, 2, 4, 3)) == ["class_agreement_decided"]
    assert fp16_failures(0.0, np.nan) == ["saliency_max_abs_real_decided"]
    near_tie = fp16_metrics(0.0, 0.0, tie_error=0.2, classes=(1, 2, 3, 4))  # the tie moved and flipped
    assert parity.failures(near_tie, "fp16") == [] and near_tie["near_ties"] == 1
    assert near_tie["saliency_max_abs_near_ties"] == pytest.approx(0.2) and near_tie["class_agreement"] < 1
    assert parity.failures(near_tie, "fp32") == ["saliency_max_abs", "class_agreement"]  # fp32 judges every image
    mostly_tied = dict(reference, logits=np.array([clear, tied, tied, tied]))
    candidate = {"saliency": maps + 0.3, "class_id": np.array([1, 2, 3, 3]), "logits": mostly_tied["logits"]}
    assert "decided_share_real" in parity.failures(parity.compare(mostly_tied, candidate, real), "fp16")


@pytest.mark.parametrize("fmt", ["engine", "all"])
def test_engine_formats_stop_before_any_work_without_tensorrt(tiny_checkpoint, tmp_path, capsys, fmt):
    """Up to the point TensorRT is needed: refused with the install hint, nothing written."""
    from akd.cli import export_main

    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        if hasattr(tensorrt, "Builder"):
            pytest.skip("TensorRT is installed: the real build is tested on GPU machines")
    except ImportError:
        pass
    code = export_main([str(tiny_checkpoint), "--format", fmt, "--out", str(tmp_path / "m.onnx")])
    assert code == 2 and "TensorRT is not installed" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_shipped_ranges_quantize_the_shipped_surrogate_without_images(shipped_onnx, tmp_path):
    """No data: the ranges shipped in the package reach the quantizer (the scales are the shipped ranges'),
    no image is read, nothing is cached."""
    from akd.deploy.calibration import quantize, shipped_ranges, shipped_ranges_path

    metadata = _meta(shipped_onnx)
    data = shipped_ranges(metadata["akd_source_sha256"])
    assert data.samples == [] and data.ranges == shipped_ranges_path()
    out = tmp_path / "int8.onnx"
    info = quantize(str(shipped_onnx), str(out), data, json.loads(metadata["akd_config"]),
                    metadata["akd_input_format"], "tensorrt", "entropy", tmp_path / "cache")
    assert info["ranges"] == "shipped" and info["images"] == 0 and not (tmp_path / "cache").exists()
    graph = onnx.load(str(out)).graph
    ranges = json.loads(shipped_ranges_path().read_text())["data"]
    quantized = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in ranges]
    assert len(quantized) > 50  # the early stages stay float; the rest of the student is int8
    def takes_its_shipped_range(node) -> bool:
        scale = next(onnx.numpy_helper.to_array(t) for t in graph.initializer if t.name == node.input[1])
        shipped = ranges[node.input[0]]
        return float(scale) == pytest.approx(max(abs(shipped["lowest"]), abs(shipped["highest"])) / 127, rel=1e-6)

    # the first int8 tensor (where the float stages hand over), and most others: onnxruntime shares some scales
    assert takes_its_shipped_range(quantized[0])
    assert sum(map(takes_its_shipped_range, quantized)) > len(quantized) / 2
    with pytest.raises(AkdError, match="computed with the entropy method"):
        quantize(str(shipped_onnx), str(out), data, json.loads(metadata["akd_config"]),
                 metadata["akd_input_format"], "tensorrt", "minmax", None)


def test_int8_without_data_is_only_for_the_shipped_surrogate(tiny_checkpoint, tmp_path, capsys):
    from akd.cli import calibrate_main
    from akd.deploy.calibration import CalibrationData, quantize, shipped_ranges_path

    from conftest import tiny_surrogate_config

    graph = tmp_path / "tiny.onnx"
    export(ExportOptions(str(tiny_checkpoint), str(graph), verify=False))
    code = calibrate_main([str(graph), "--out", str(tmp_path / "tiny.int8.onnx")])
    assert code == 2 and "ranges ship only for the surrogate shipped with akd" in capsys.readouterr().err
    assert not (tmp_path / "tiny.int8.onnx").exists()
    # and ranges that name another graph's tensors are refused, not half-applied
    with pytest.raises(AkdError, match="do not fit this graph"):
        quantize(str(graph), str(tmp_path / "x.onnx"), CalibrationData([], [], "", ranges=shipped_ranges_path()),
                 tiny_surrogate_config(), "float-nchw", "tensorrt", "entropy", None)


def test_calibrate_cli_without_data_on_the_shipped_surrogate(shipped_onnx, tmp_path, capsys):
    """The gate stays honest without data: judged on the bundled photos (which the target does not recognise) the
    default limits refuse and say why; a knowingly looser --max-drift writes the graph."""
    out = tmp_path / "lite0.int8.onnx"
    code = calibrate_main([str(shipped_onnx), "--out", str(out), "--int8-target", "tensorrt"])
    err = capsys.readouterr().err
    assert code == 2 and "sample-photos (shipped ranges)" in err and "pass --data DIR" in err and not out.exists()
    assert calibrate_main([str(shipped_onnx), "--out", str(out), "--int8-target", "tensorrt", "--max-drift", "1"]) == 0
    assert "the shipped ranges" in capsys.readouterr().out
    metadata = _meta(out)
    assert metadata["akd_precision"] == "int8" and json.loads(metadata["akd_calibration"])["ranges"] == "shipped"
    assert metadata["akd_source_sha256"] == _meta(shipped_onnx)["akd_source_sha256"]
    assert len(metadata["akd_fp32_sha256"]) == 64


def test_export_keeps_the_tracers_expected_notes_to_itself(tiny_checkpoint, tmp_path):
    """torch's TracerWarnings about shape arithmetic that is constant at the fixed input size (and the
    instance_norm training-flag note) are expected for this graph; a user must not see a wall of them."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export(ExportOptions(str(tiny_checkpoint), str(tmp_path / "m.onnx"), verify=False))
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert not [w for w in caught if "TrainingMode.EVAL" in str(w.message)]
