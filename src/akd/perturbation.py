"""How the insertion metric removes detail (RISE's blur), shared by the metric and the losses that train for it."""

from __future__ import annotations

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
