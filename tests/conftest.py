"""Shared fixtures: a tiny target network saved in each file format and small generated datasets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGENET_SAMPLE = SHARED / "data" / "imagenet-sample"
MOBILENET_ONNX = SHARED / "models" / "mobilenet_v2_1.0_224.onnx"
NUM_CLASSES = 4
SIZE = 32


def load_benchmark(name: str):
    """A benchmark script as a module (they are scripts, not a package), to test the parts that run here."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyNet(nn.Module):
    """A small CNN target whose prediction depends on where a bright square sits."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@pytest.fixture(scope="session")
def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="session")
def torchscript_target(tmp_path_factory, tiny_net) -> Path:
    path = tmp_path_factory.mktemp("targets") / "tiny.pt"
    torch.jit.script(tiny_net).save(str(path))
    return path


def quadrant_image(label: int, rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """Noise with a bright square in quadrant ``label`` (0..3)."""
    pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    half = size // 2
    y, x = divmod(label, 2)
    pixels[y * half + 2:(y + 1) * half - 2, x * half + 2:(x + 1) * half - 2] = 230
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def imagefolder(tmp_path_factory) -> Path:
    """ImageFolder layout: 4 classes x 4 images (16 in all)."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for label in range(NUM_CLASSES):
        folder = root / f"class_{label}"
        folder.mkdir()
        for index in range(4):
            quadrant_image(label, rng).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="session")
def flat_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flat")
    rng = np.random.default_rng(1)
    for index in range(8):
        quadrant_image(index % NUM_CLASSES, rng).save(root / f"{index}.jpg")
    return root


def tiny_surrogate_config(classes: int = 10, size: int = 64) -> dict:
    return {"student": "resnet18_cbam", "classes": [f"c{i}" for i in range(classes)], "explainer_width": 32,
            "input_size": [size, size], "preprocessing": {"input_size": size, "mean": [0.5, 0.5, 0.5],
                                                          "std": [0.25, 0.25, 0.25], "crop_pct": 0.875,
                                                          "color": "RGB"},
            "target": {"name": "torchvision:resnet18", "kind": "torchvision", "sha256": None}}


def _tiny_surrogate(tmp_path_factory, name: str, adjust) -> Path:
    from akd.models.surrogate import Surrogate, save_checkpoint

    torch.manual_seed(0)
    model = Surrogate(tiny_surrogate_config()).eval()
    with torch.no_grad():
        adjust(model.student.network.fc)
    path = tmp_path_factory.mktemp("checkpoint") / f"{name}.safetensors"
    save_checkpoint(path, model)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A resnet18_cbam surrogate at 64x64 whose predicted class varies with the input (several classes over the
    tests' frames, checked in test_runtime), with classifier weights scaled up so the top two logits stand clear
    of float rounding: class checks on it (export parity, runtime, serving) can fail."""
    return _tiny_surrogate(tmp_path_factory, "tiny", lambda fc: fc.weight.mul_(50.0))


@pytest.fixture(scope="session")
def stable_checkpoint(tmp_path_factory) -> Path:
    """The same surrogate with a strong bias on class 0, for INT8 tests of the quantization *mechanism*: random
    features put classes within a few percent of each other, which any 8-bit step flips (real-model drift is
    measured on ImageNet photos by benchmarks/precision_cpu.py). Class checks on it are deliberately vacuous."""
    return _tiny_surrogate(tmp_path_factory, "stable", lambda fc: fc.bias.__setitem__(0, fc.bias[0] + 50.0))


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """48 varied colour images (gradients, blobs and noise) for calibration and parity."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:80, 0:80] / 80.0
    for index in range(48):
        base = np.stack([np.sin(rng.uniform(2, 9) * xx + rng.uniform(0, 3)) * np.cos(rng.uniform(2, 9) * yy)
                         for _ in range(3)], axis=-1)
        pixels = ((base * 0.5 + 0.5) * 255 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{index:02d}.png")
    return root


@pytest.fixture(scope="session")
def shipped_onnx(tmp_path_factory) -> Path:
    """The shipped EfficientNet-Lite0 surrogate as the fp32 graph: ReLU6 makes opset-17 Clip nodes, which the C++
    runtime rewrites for OpenCV DNN in memory; its INT8 ranges ship with it."""
    from akd.deploy.exporter import ExportOptions, export
    from akd.runtime.engine import default_model

    out = tmp_path_factory.mktemp("shipped") / "lite0.onnx"
    export(ExportOptions(default_model(), str(out), verify=False))
    return out


@pytest.fixture(scope="session")
def shipped_onnx_forward_only(tmp_path_factory) -> Path:
    """The shipped surrogate exported with --no-layercam (CAM's map, no gradient): what OpenCV DNN can run."""
    from akd.deploy.exporter import ExportOptions, export
    from akd.runtime.engine import default_model

    out = tmp_path_factory.mktemp("shipped") / "lite0-forward.onnx"
    export(ExportOptions(default_model(), str(out), layercam=False, verify=False))
    return out


def tiny_eval_target(checkpoint: Path):
    """A small conv classifier as akd-evaluate's target, with the tiny surrogate's preprocessing (seeded)."""
    import json

    from akd.data.preprocessing import Preprocessing
    from akd.models.surrogate import read_checkpoint
    from akd.models.teachers import _module_teacher

    _, header = read_checkpoint(checkpoint)
    pre = json.loads(header["config"])["preprocessing"]
    torch.manual_seed(0)
    target = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(8, 10))
    return _module_teacher(target, Preprocessing(64, tuple(pre["mean"]), tuple(pre["std"])), {"name": "tiny"})
