import pytest
import torch

from akd.data.preprocessing import Preprocessing
from akd.models.teachers import load_teacher
from akd.util import AkdError

from conftest import IMAGENET_SAMPLE, MOBILENET_ONNX, SIZE


def _export_onnx(module, path, dynamic: bool, softmax: bool = False):
    model = torch.nn.Sequential(module, torch.nn.Softmax(dim=1)) if softmax else module
    kwargs = {"dynamic_axes": {"images": {0: "batch"}}} if dynamic else {}
    torch.onnx.export(model.eval(), torch.zeros(1, 3, SIZE, SIZE), str(path), input_names=["images"],
                      output_names=["out"], dynamo=False, **kwargs)


def test_torchscript_target(torchscript_target, tiny_net):
    teacher = load_teacher(str(torchscript_target), preprocessing=Preprocessing(input_size=SIZE))
    images = torch.randn(3, 3, SIZE, SIZE)
    assert teacher.num_classes == 4 and teacher.differentiable
    torch.testing.assert_close(teacher(images), tiny_net(images))
    assert len(teacher.identity["sha256"]) == 64


@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("softmax", [False, True])
def test_onnx_black_box_target(tmp_path, tiny_net, dynamic, softmax):
    path = tmp_path / "tiny.onnx"
    _export_onnx(tiny_net, path, dynamic, softmax)
    teacher = load_teacher(str(path), preprocessing=Preprocessing())
    assert not teacher.differentiable and teacher.num_classes == 4
    assert teacher.preprocessing.input_size == SIZE  # read from the graph's input shape
    images = torch.randn(5, 3, SIZE, SIZE)  # batch 5 through a fixed batch-1 model: looped
    logits = teacher(images)
    expected = tiny_net(images)
    # probabilities come back as log-probabilities: the same softmax as the original logits
    torch.testing.assert_close(torch.softmax(logits, 1), torch.softmax(expected, 1), atol=1e-5, rtol=1e-4)


def test_target_errors_are_clear(tmp_path):
    with pytest.raises(AkdError, match="not found"):
        load_teacher(str(tmp_path / "missing.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(AkdError, match="cannot load ONNX"):
        load_teacher(str(bad))
    with pytest.raises(AkdError, match="unknown target"):
        load_teacher("no_such_network_anywhere")


def test_torchvision_target_with_weights_file(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=1000).eval()
    weights = tmp_path / "r18.safetensors"
    save_file(reference.state_dict(), str(weights))
    teacher = load_teacher("torchvision:resnet18", weights=str(weights))
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(teacher(images), reference(images))
    assert teacher.identity["student"] == "resnet18_cbam" and teacher.class_names[1] == "goldfish"
    with pytest.raises(AkdError, match="does not fit"):
        load_teacher("torchvision:resnet34", weights=str(weights))


def _imagenet_batch(preprocessing, names):
    from akd.data.preprocessing import transforms_for
    from akd.data.sources import Sample, read_rgb

    transform = transforms_for(preprocessing, train=False)
    return torch.stack([transform(read_rgb(Sample(str(IMAGENET_SAMPLE / n)))) for n in names])


@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason="needs ../shared/data/imagenet-sample")
def test_builtin_efficientnet_lite0_reproduces_imagenet_predictions():
    teacher = load_teacher("efficientnet_lite0")
    names = ["n01443537_goldfish.JPEG", "n01440764_tench.JPEG", "n01484850_great_white_shark.JPEG"]
    with torch.no_grad():
        predictions = teacher(_imagenet_batch(teacher.preprocessing, names)).argmax(1).tolist()
    assert predictions[0] == 1  # goldfish
    assert predictions == [1, 0, 2]
    assert teacher.num_classes == 1000 and teacher.preprocessing.mean[0] == pytest.approx(127 / 255)


@pytest.mark.skipif(not MOBILENET_ONNX.is_file(), reason="needs ../shared/models/mobilenet_v2_1.0_224.onnx")
@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason="needs ../shared/data/imagenet-sample")
def test_shared_mobilenet_onnx_black_box():
    preprocessing = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    teacher = load_teacher(str(MOBILENET_ONNX), preprocessing=preprocessing, skip_classes=1)
    assert teacher.num_classes == 1000 and not teacher.differentiable
    images = _imagenet_batch(teacher.preprocessing, ["n01443537_goldfish.JPEG", "n01440764_tench.JPEG"])
    assert teacher(images).argmax(1).tolist() == [1, 0]




def test_softmax_output_with_a_skipped_class_stays_probabilities(tmp_path, tiny_net):
    """A graph ending in Softmax gives probabilities even when its rows no longer sum to 1 - after a skipped
    'background' class, or quantized: the others are renormalised, not taken for logits."""
    path = tmp_path / "soft.onnx"
    _export_onnx(tiny_net, path, dynamic=True, softmax=True)
    teacher = load_teacher(str(path), preprocessing=Preprocessing(input_size=SIZE), skip_classes=1)
    images = torch.randn(4, 3, SIZE, SIZE)
    full = torch.softmax(tiny_net(images), dim=1).detach()
    expected = full[:, 1:] / full[:, 1:].sum(dim=1, keepdim=True)
    torch.testing.assert_close(torch.softmax(teacher(images), dim=1), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not MOBILENET_ONNX.is_file(), reason="needs ../shared/models/mobilenet_v2_1.0_224.onnx")
def test_quantized_softmax_rows_are_probabilities():
    import numpy as np
    import onnxruntime as ort

    teacher = load_teacher(str(MOBILENET_ONNX), preprocessing=Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3),
                           skip_classes=1)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(MOBILENET_ONNX), providers=["CPUExecutionProvider"])
    raw = np.concatenate([session.run(None, {"input": images[i:i + 1].numpy()})[0] for i in range(2)])
    assert not np.allclose(raw.sum(axis=1), 1.0, atol=1e-3)  # the file's quantized rows
    kept = raw[:, 1:] / raw[:, 1:].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(torch.softmax(teacher(images), dim=1).numpy(), kept, atol=1e-6)
