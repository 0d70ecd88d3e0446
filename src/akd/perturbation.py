"""RISE's perturbations, shared by the metrics, the RISE baseline and the losses and caches that train for them:
the blur the insertion metric starts from, and RISE's random masks with its saliency estimate."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F


def rise_kernel(size: int = 11, sigma: float = 5.0) -> np.ndarray:
    """RISE's blur kernel: scipy's gaussian_filter applied to a centred delta (truncated at size, so nearly a box)."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    return gaussian_filter(delta, sigma).astype(np.float32)


def rise_blur(images: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Each channel blurred on its own with ``rise_kernel``, zero padding (RISE's conv2d with a diagonal kernel)."""
    kernel = torch.from_numpy(rise_kernel(size, sigma)).to(images)
    channels = images.shape[1]
    weight = kernel.expand(channels, 1, size, size).contiguous()
    return F.conv2d(images, weight, padding=size // 2, groups=channels)


def rise_masks(count: int, height: int, width: int, cells: int = 7, keep: float = 0.5, batch_size: int = 100,
               seed: int = 0) -> Iterator[torch.Tensor]:
    """RISE's masks (Petsiuk et al. 2018) in batches of (n, 1, H, W): an s x s Bernoulli(keep) grid, bilinearly
    upsampled to (s + 1) * cell and randomly shifted by up to one cell. The seed and ``batch_size`` (the draws
    interleave per batch) give the same masks on any device, so maps built on a GPU are the CPU baseline's."""
    generator = torch.Generator().manual_seed(seed)
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    for start in range(0, count, batch_size):
        n = min(batch_size, count - start)
        grid = (torch.rand(n, 1, cells, cells, generator=generator) < keep).float()
        up = F.interpolate(grid, size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear",
                           align_corners=False)
        shifts = torch.randint(0, cell_h, (n,), generator=generator), torch.randint(0, cell_w, (n,),
                                                                                    generator=generator)
        yield torch.stack([up[i, :, y:y + height, x:x + width] for i, (y, x) in enumerate(zip(*shifts, strict=True))])


def rise_saliency(classify: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, class_id: int,
                  masks: Iterator[torch.Tensor], count: int, keep: float = 0.5) -> torch.Tensor:
    """RISE's estimate sum_i P_c(M_i * x) M_i / (N keep) for a normalised (1, C, H, W) image; ``classify`` maps
    images to logits. Masks multiply the normalised image, as RISE's code does."""
    saliency = torch.zeros(image.shape[-2:], device=image.device)
    for batch in masks:
        batch = batch.to(image)
        probs = F.softmax(classify(batch * image).float(), dim=1)[:, class_id]
        saliency += torch.einsum("n,nhw->hw", probs, batch[:, 0].float())
    return saliency / (count * keep)
