"""ImageNet-1k class metadata available offline: wnids from timm's bundled files, names from torchvision."""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in the usual (sorted) class-index order."""
    text = resources.files("timm.data").joinpath("_info/imagenet_synsets.txt").read_text()
    wnids = tuple(sorted(line.strip() for line in text.splitlines() if line.strip()))
    assert len(wnids) == 1000, f"expected 1000 ImageNet wnids, found {len(wnids)}"
    return wnids


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
