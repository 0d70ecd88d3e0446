"""The target's own explanation (no training) and ONNX targets converted to torch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from akd import api, contract
from akd.cli import export_main
from akd.data.preprocessing import Preprocessing
from akd.deploy.gradients import without_autograd
from akd.models.onnx_torch import CONVERSION_TOLERANCE, convert_onnx
from akd.models.target_explanation import target_surrogate
from akd.models.teachers import load_teacher, teacher_from_module
from akd.util import AkdError

from conftest import IMAGENET_SAMPLE, MOBILENET_ONNX

SIZE = 64


class SmallCnn(nn.Module):
    """Maps at strides 8, 16 and 32 of a 64x64 input (blocks end in a residual add), then pool + linear."""

    def __init__(self, classes: int = 5):
        super().__init__()
        def stage(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU6())
        self.stem = nn.Sequential(stage(3, 8), stage(8, 8), stage(8, 16))  # stride 8
        self.mid, self.deep = stage(16, 24), stage(24, 32)  # 16, 32
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))

    def forward(self, x):
        return self.head(self.deep(self.mid(self.stem(x))))


@pytest.fixture(scope="module")
def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = SmallCnn()
    with torch.no_grad():  # non-trivial batch norm statistics
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _onnx_file(module: nn.Module, path, *, softmax: bool = False, fixed_batch: bool = False) -> str:
    model = nn.Sequential(module, nn.Softmax(dim=1)) if softmax else module
    axes = {} if fixed_batch else {"dynamic_axes": {"images": {0: "batch"}, "out": {0: "batch"}}}
    torch.onnx.export(model.eval(), torch.zeros(1, 3, SIZE, SIZE), str(path), input_names=["images"],
                      output_names=["out"], dynamo=False, opset_version=17, **axes)
    return str(path)


def test_taps_found_by_running_the_module(small_cnn):
    surrogate = target_surrogate(teacher_from_module(small_cnn, Preprocessing(input_size=SIZE)))
    assert surrogate.config["taps"] == {"8": "stem", "16": "mid", "32": "deep"}
    assert surrogate.config["cam"] == "grad-cam"  # no timm pool hook: CAM from the gradient at stride 32
    images = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        saliency, logits = surrogate(images)
        torch.testing.assert_close(logits, small_cnn(images))  # the target's own logits, untouched
    assert saliency.shape == (3, 1, SIZE, SIZE) and not saliency.requires_grad
    assert float(saliency.std()) > 0.01


def test_grad_cam_term_equals_exact_cam_for_a_linear_head():
    """Grad-CAM of the contrastive score at the pool's input is CAM up to scale for pool + linear, so a timm CNN
    explained through its feature_info and pool (exact CAM) and through the probe (Grad-CAM) gives one map."""
    import timm

    torch.manual_seed(1)
    network = timm.create_model("resnet10t", pretrained=False, num_classes=7).eval()
    preprocessing = Preprocessing(input_size=SIZE)
    exact = target_surrogate(teacher_from_module(network, preprocessing))
    assert exact.config["cam"] == "exact"
    probed_network = timm.create_model("resnet10t", pretrained=False, num_classes=7).eval()
    probed_network.load_state_dict(network.state_dict())
    del probed_network.feature_info  # falls back to running the module
    probed = target_surrogate(teacher_from_module(probed_network, preprocessing))
    assert probed.config["cam"] == "grad-cam"
    assert [probed.config["taps"][s] for s in ("8", "16", "32")] == ["layer2", "layer3", "layer4"]
    images = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first, second = exact(images)[0], probed(images)[0]
    torch.testing.assert_close(first, second, atol=2e-5, rtol=0)
    assert float(first.std()) > 0.01  # a map with a shape, not a constant


def test_vision_transformers_and_torchscript_refused(tmp_path, small_cnn):
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=SIZE).eval()
    with pytest.raises(AkdError, match="no feature map at stride 8, 32 .*vision transformers"):
        target_surrogate(teacher_from_module(vit, Preprocessing(input_size=SIZE)))
    path = tmp_path / "small.pt"
    torch.jit.script(small_cnn).save(str(path))
    with pytest.raises(AkdError, match="TorchScript module cannot be tapped"):
        target_surrogate(load_teacher(str(path), preprocessing=Preprocessing(input_size=SIZE)))


@pytest.mark.parametrize("fixed_batch", [False, True])
def test_float_onnx_converts_with_its_softmax_cut(tmp_path, small_cnn, fixed_batch):
    path = _onnx_file(small_cnn, tmp_path / "small.onnx", softmax=True, fixed_batch=fixed_batch)
    conversion = convert_onnx(path, SIZE)
    assert conversion.softmax_cut and conversion.fake_quantized == 0
    assert conversion.max_difference < 1e-5
    images = torch.randn(3, 3, SIZE, SIZE)  # batch 3 even from a graph fixed at batch 1
    with torch.no_grad():
        torch.testing.assert_close(conversion.module(images), small_cnn(images), atol=1e-5, rtol=0)


def test_quantized_onnx_converts_with_straight_through_gradients(tmp_path, small_cnn):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    float_path = _onnx_file(small_cnn, tmp_path / "float.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"images": rng.normal(size=(1, 3, SIZE, SIZE)).astype(np.float32)}
                                 for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    quantized = str(tmp_path / "qdq.onnx")
    quantize_static(float_path, quantized, Reader(), quant_format=QuantFormat.QDQ)
    conversion = convert_onnx(quantized, SIZE)
    assert conversion.fake_quantized > 5
    assert conversion.max_difference <= CONVERSION_TOLERANCE + conversion.onnxruntime_spread
    images = torch.randn(2, 3, SIZE, SIZE, requires_grad=True)
    conversion.module(images)[:, 0].sum().backward()
    assert float(images.grad.abs().sum()) > 0  # rounding alone would give exactly zero


def test_export_writes_the_targets_own_explanation(tmp_path, small_cnn):
    import onnxruntime as ort

    written = api.export(target=small_cnn, out=str(tmp_path / "own.onnx"), preprocessing=Preprocessing(SIZE))
    assert written == [tmp_path / "own.onnx"]
    model = onnx.load(str(written[0]))
    config = json.loads({p.key: p.value for p in model.metadata_props}[contract.CONFIG_KEY])
    assert config["student"] == "target" and config["taps"]["16"] == "mid"
    session = ort.InferenceSession(str(written[0]), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(3).normal(size=(3, 3, SIZE, SIZE)).astype(np.float32)
    saliency, logits, class_id, _ = session.run(None, {contract.INPUT: images})
    with torch.no_grad():
        reference = small_cnn(torch.from_numpy(images)).numpy()
        expected, _ = target_surrogate(teacher_from_module(small_cnn, Preprocessing(SIZE)))(torch.from_numpy(images))
    np.testing.assert_allclose(logits, reference, atol=1e-4)
    assert class_id.tolist() == reference.argmax(1).tolist()
    assert np.corrcoef(saliency.ravel(), expected.numpy().ravel())[0, 1] > 0.9999


def test_export_target_one_line_errors(tmp_path, small_cnn, capsys):
    path = _onnx_file(small_cnn, tmp_path / "small.onnx")
    assert export_main([ "--target", path, "--opaque", "--out", str(tmp_path)]) == 2
    assert "black box has no gradients" in capsys.readouterr().err
    assert export_main(["--target", path, "--precision", "int8", "--out", str(tmp_path)]) == 2
    assert "needs --calib-data" in capsys.readouterr().err
    assert export_main(["--target", "timm:resnet10t"]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_gradient_rewrites_for_pooling_and_slices():
    """The input gradients of average pooling and of a slice, written as forward operations, equal autograd's."""

    class Pooled(nn.Module):
        def forward(self, x):
            x = x.requires_grad_() if not x.requires_grad else x
            with torch.enable_grad():
                score = (nn.functional.avg_pool2d(x, 3, stride=2, padding=1)[:, 1:] ** 2).sum()
                return torch.autograd.grad(score, x)[0]

    images = torch.randn(3, 4, 9, 9)
    rewritten = without_autograd(Pooled(), images)
    assert not any("backward" in str(node.target) for node in rewritten.graph.nodes)
    torch.testing.assert_close(rewritten(images), Pooled()(images))


@pytest.mark.slow
@pytest.mark.skipif(not MOBILENET_ONNX.is_file() or not IMAGENET_SAMPLE.is_dir(),
                    reason="needs ../shared/models/mobilenet_v2_1.0_224.onnx and the ImageNet sample")
def test_shared_quantized_mobilenet_explained(tmp_path, capsys):
    """The shared TFLite-quantized MobileNetV2: converted (softmax cut, fake quantization), exported, and its
    graph decides the class the file itself decides."""
    import onnxruntime as ort

    args = ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--target-skip-classes", "1"]
    out = tmp_path / "mobilenet.onnx"
    assert export_main(["--target", str(MOBILENET_ONNX), *args, "--out", str(out),
                        "--parity-data", str(IMAGENET_SAMPLE)]) == 0
    assert "fake-quantized activations" in capsys.readouterr().err
    black_box = load_teacher(str(MOBILENET_ONNX), preprocessing=Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3),
                             skip_classes=1)
    from akd.data.preprocessing import transforms_for
    from akd.data.sources import Sample, read_rgb

    names = ["n01443537_goldfish.JPEG", "n01440764_tench.JPEG"]
    transform = transforms_for(black_box.preprocessing, train=False)
    images = torch.stack([transform(read_rgb(Sample(str(IMAGENET_SAMPLE / name)))) for name in names])
    expected = black_box(images).argmax(1).tolist()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    saliency, _, class_id, _ = session.run(None, {contract.INPUT: images.numpy()})
    assert class_id.tolist() == expected
    assert all(float(saliency[i].std()) > 0.01 for i in range(len(names)))


def test_target_explanation_through_int8_and_triton(tmp_path, small_cnn, flat_folder):
    """A target's explanation takes the surrogate's other paths: INT8 calibrated on given images (its drift
    reported), and a Triton repository whose config matches the graph."""
    from akd.deploy.serving import validate_triton_config

    reports: list[dict] = []
    written = api.export(target=small_cnn, out=str(tmp_path / "own.int8.onnx"), preprocessing=Preprocessing(SIZE),
                         precision="int8", calib_data=str(flat_folder), num_images=8, max_drift=1.0,
                         on_report=reports.append)
    assert written == [tmp_path / "own.int8.onnx"]
    assert reports and "drift" in reports[0]["int8"]["drift"]
    model = onnx.load(str(written[0]))
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    repo = tmp_path / "repo"
    written = api.export(target=small_cnn, out=str(repo), preprocessing=Preprocessing(SIZE), format="triton")
    config = (repo / "akd_surrogate" / "config.pbtxt").read_text()
    validate_triton_config(config)
    assert (repo / "akd_surrogate" / "1" / "model.onnx").is_file() and "max_batch_size: 32" in config
