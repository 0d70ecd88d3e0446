"""Shared fixtures: a tiny target network saved in each file format and small generated datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGENET_SAMPLE = SHARED / "data" / "imagenet-sample"
MOBILENET_ONNX = SHARED / "models" / "mobilenet_v2_1.0_224.onnx"
NUM_CLASSES = 4
SIZE = 32


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
