"""How a target wants its pixels, and the decoded, preprocessed tensors every stage feeds it: training,
export parity, calibration and evaluation all read images through here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from akd.data.sources import Sample, discover, read_rgb, sampled

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# per-sample augmentation seeds: primes, so (seed, epoch, index) triples never collide in practice
SEED_PRIME, EPOCH_PRIME = 1_000_003, 10_007

@dataclass
class Preprocessing:
    """How the target wants its input: RGB, resize the short side to size/crop_pct, centre-crop, normalise."""

    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Preprocessing:
        """The preprocessing recorded in a surrogate config (the inverse of ``to_config``)."""
        pre = config["preprocessing"]
        return cls(int(config["input_size"][0]), tuple(pre["mean"]), tuple(pre["std"]), pre["crop_pct"])

    def to_config(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
                "crop_pct": self.crop_pct, "color": "RGB"}


class SampleDataset(torch.utils.data.Dataset):
    """Samples -> (image tensor, label). Augmentation is seeded by (seed, epoch, index), so a resumed run and
    any number of loader workers see exactly the same pixels as an uninterrupted one."""

    def __init__(self, samples: list[Sample], transform, seed: int = 0):
        self.samples, self.transform, self.seed = samples, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image = read_rgb(self.samples[index])
        if image is None:
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * SEED_PRIME + self.epoch * EPOCH_PRIME + index) % (2**63))
            tensor = self.transform(image)
        return tensor, self.samples[index].label


def collate(batch):
    """Drop samples that failed to decode; report how many were dropped."""
    kept = [item for item in batch if item is not None]
    if not kept:
        return None, None, len(batch)
    images = torch.stack([image for image, _ in kept])
    labels = torch.tensor([label for _, label in kept], dtype=torch.long)
    return images, labels, len(batch) - len(kept)


def transforms_for(preprocessing, train: bool):
    from torchvision import transforms as T

    size = preprocessing.input_size
    normalize = [T.ToTensor(), T.Normalize(preprocessing.mean, preprocessing.std)]
    if train:
        return T.Compose([T.RandomResizedCrop(size, scale=(0.25, 1.0)), T.RandomHorizontalFlip(), *normalize])
    return T.Compose([T.Resize(int(round(size / preprocessing.crop_pct))), T.CenterCrop(size), *normalize])


def images_of(samples: list, config: dict) -> np.ndarray:
    """Decode and preprocess samples the way the surrogate expects (resize, centre-crop, normalise)."""
    dataset = SampleDataset(samples, transforms_for(Preprocessing.from_config(config), train=False))
    images, _, _ = collate([dataset[i] for i in range(len(dataset))]) if samples else (None, None, 0)
    return images.numpy() if images is not None else np.zeros((0, 3, *config["input_size"]), dtype=np.float32)


def real_images(config: dict, data: str | None, count: int) -> np.ndarray:
    """``count`` photographs from ``data`` (default: scikit-image's bundled photos), deterministically sampled."""
    return images_of(sampled(discover(data or "sample-photos", "test").samples, seed=0)[:count], config)
