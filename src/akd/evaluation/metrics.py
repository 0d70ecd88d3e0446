"""Faithfulness metrics computed exactly as RISE's evaluation code does (Petsiuk et al. 2018), so numbers compare
with the literature and with the paper's Table 4.

* The tracked score is the softmax probability of the class the target predicts on the unperturbed image.
* Deletion replaces pixels with zeros in *normalised* input space; insertion starts from the image blurred with
  RISE's kernel and restores pixels. Pixels move in order of decreasing saliency, ``step`` at a time
  (224 * 8 at 224 x 224), giving ``ceil(HW / step) + 1`` points.
* AUC is the trapezoid rule over [0, 1].
* Intensity is the mean of the map after per-image min-max normalisation - one policy for every method.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from akd.perturbation import rise_blur

DEFAULT_STEP_PER_ROW = 8  # RISE: step = 224 * 8 pixels at 224 x 224
MODES = ("insertion", "deletion")


def step_count(pixels: int, step: int) -> int:
    """Number of moves needed to transfer every pixel (the curve has one more point)."""
    return math.ceil(pixels / step)


def default_step(height: int, width: int) -> int:
    """224 * 8 at 224 x 224; scaled with the width elsewhere so the curve keeps 29 points on square inputs."""
    return width * DEFAULT_STEP_PER_ROW


def auc(curve: np.ndarray) -> float:
    """Trapezoid rule over [0, 1] with evenly spaced points (RISE's ``auc``)."""
    curve = np.asarray(curve, dtype=np.float64)
    if len(curve) < 2:
        raise ValueError("a curve needs at least two points")
    return float((curve.sum() - curve[0] / 2 - curve[-1] / 2) / (len(curve) - 1))


@torch.no_grad()
def causal_curve(model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, saliency: np.ndarray,
                 mode: str, step: int | None = None, batch_size: int = 32, class_id: int | None = None
                 ) -> np.ndarray:
    """The insertion or deletion curve of one normalised image (1, C, H, W) under a saliency map (H, W).

    ``model`` returns logits; the curve tracks softmax probability of ``class_id`` (default: the model's
    prediction on ``image``). Perturbed images are built all at once and scored in batches.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not '{mode}'")
    _, channels, height, width = image.shape
    if saliency.shape != (height, width):
        raise ValueError(f"saliency map {saliency.shape} does not match the image {(height, width)}")
    pixels = height * width
    step = step or default_step(height, width)
    moves = step_count(pixels, step)
    if class_id is None:
        class_id = int(model(image).argmax(1)[0])
    blurred = rise_blur(image)
    start, finish = (blurred, image) if mode == "insertion" else (image, torch.zeros_like(image))
    # stable argsort of -saliency: ties keep raster order, as numpy's flip(argsort) would not; ties are rare
    order = torch.from_numpy(np.argsort(-saliency.reshape(-1), kind="stable").copy())
    rank = torch.empty(pixels, dtype=torch.long)
    rank[order] = torch.arange(pixels)
    # point i has the first i * step pixels of the order moved from start to finish
    moved = rank.view(1, 1, height, width) < (torch.arange(moves + 1) * step).view(-1, 1, 1, 1)
    scores = []
    for first in range(0, moves + 1, batch_size):
        mask = moved[first:first + batch_size].to(image.dtype)
        batch = start * (1 - mask) + finish * mask
        scores.append(F.softmax(model(batch).float(), dim=1)[:, class_id])
    return torch.cat(scores).cpu().numpy()


def normalise(saliency: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1]; a constant map becomes all zeros (it says nothing)."""
    saliency = np.asarray(saliency, dtype=np.float32)
    low, high = float(saliency.min()), float(saliency.max())
    if high - low <= 1e-12:
        return np.zeros_like(saliency)
    return (saliency - low) / (high - low)


def intensity(saliency: np.ndarray) -> float:
    """Mean saliency after min-max normalisation (the paper's Table 4 'intensity'): lower = more focused."""
    return float(normalise(saliency).mean())


def pointing_game(saliency: np.ndarray, mask: np.ndarray, tolerance: int = 15) -> bool:
    """Hit when the map's maximum lies on the object mask, within ``tolerance`` pixels (Zhang et al. 2016)."""
    mask = np.asarray(mask, dtype=bool)
    if saliency.shape != mask.shape:
        raise ValueError(f"saliency map {saliency.shape} does not match the mask {mask.shape}")
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    height, width = mask.shape
    rows = slice(max(0, y - tolerance), min(height, y + tolerance + 1))
    cols = slice(max(0, x - tolerance), min(width, x + tolerance + 1))
    yy, xx = np.ogrid[rows, cols]
    near = (yy - y) ** 2 + (xx - x) ** 2 <= tolerance ** 2
    return bool((mask[rows, cols] & near).any())


def energy_pointing_game(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (min-max normalised) saliency energy that falls on the object mask (Score-CAM, 2020)."""
    mask = np.asarray(mask, dtype=bool)
    if saliency.shape != mask.shape:
        raise ValueError(f"saliency map {saliency.shape} does not match the mask {mask.shape}")
    energy = normalise(saliency)
    total = float(energy.sum())
    return float(energy[mask].sum() / total) if total > 0 else 0.0
