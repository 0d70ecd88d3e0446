"""The explanation network E: attentive differences at strides 32, 16, 8 -> saliency map in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """GroupNorm, not BatchNorm: attentive differences of a near-identity CBAM are tiny (~1e-2 of the features), and
    BatchNorm's running variance, starting at 1, takes hundreds of steps to get there - until then train-mode and
    eval-mode saliency disagree wildly. GroupNorm behaves the same in training and inference."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.GroupNorm(8, out_channels),
        nn.ReLU(inplace=True),
    )


class UpsampleBlock(nn.Module):
    """Fuse the coarser map (upsampled x2 to this scale) with this scale's attentive difference."""

    def __init__(self, coarse_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.skip = _conv_norm_relu(skip_channels, out_channels, 1)
        self.fuse = _conv_norm_relu(coarse_channels + out_channels, out_channels)

    def forward(self, coarse: torch.Tensor | None, skip: torch.Tensor) -> torch.Tensor:
        skip = self.skip(skip)
        if coarse is not None:
            coarse = F.interpolate(coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            skip = torch.cat([coarse, skip], dim=1)
        return self.fuse(skip)


def standardise(maps: torch.Tensor) -> torch.Tensor:
    """Per-map zero mean and unit variance over positions, so the explainer sees CAM's shape, not its scale.
    InstanceNormalization in ONNX: OpenCV's importer cannot broadcast an (N,1,1,1) statistic over a 1-channel map."""
    maps = maps.float()
    if maps.shape[-2] * maps.shape[-1] == 1:  # one position has no shape to standardise
        return torch.zeros_like(maps)
    return F.instance_norm(maps, eps=1e-6)


def _upsample_to(coarse: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``coarse`` to ``size``; a constant scale factor when the sizes are an integer multiple
    apart (the usual stride 32 -> 8), which exports as a Resize with constant scales - the form OpenCV's importer
    runs (a size computed from another tensor's shape made it fail at run time)."""
    height, width = (int(v) for v in coarse.shape[-2:])
    fine_height, fine_width = (int(v) for v in size)
    if (height, width) == (fine_height, fine_width):
        return coarse
    if fine_height % height == 0 and fine_height // height == fine_width // width and fine_width % width == 0:
        return F.interpolate(coarse, scale_factor=float(fine_height // height), mode="bilinear", align_corners=False)
    return F.interpolate(coarse, size=(fine_height, fine_width), mode="bilinear", align_corners=False)


def fused_ranking(cam: torch.Tensor, layercams: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """CAM (stride 32) plus ``weights`` x LayerCAM maps (finest first), each resized to the finest map's grid and
    standardised there; the sum standardised. CAM alone is coarse (7x7 at 224) and puts the class's whole support
    first; LayerCAM is sharp but noisy, the more so the finer its stride, so the sum lets CAM say where and
    LayerCAM say which pixels. Each map is standardised after its resize, so a smoothed map is weighed by what is
    left of it. The weights were chosen on the validation split: docs/BENCHMARKS.md, "LayerCAM at stride 8,
    shipped"."""
    size = layercams[0].shape[-2:]
    fused = standardise(_upsample_to(cam, size))
    for layercam, weight in zip(layercams, weights, strict=True):
        fused = fused + weight * standardise(_upsample_to(layercam, size))
    return standardise(fused)


class Explainer(nn.Module):
    """Three upsample blocks from stride 32 to 8, then a 1-channel sigmoid head resized to the input.

    With ``cam`` the explainer also reads the class activation map of the predicted class (standardised): as an
    extra input channel at stride 32, and as a residual the head's logit adds to, scaled by a learned gain. The
    attentive differences alone carry no class, and on a few hundred images a decoder does not learn to rank
    pixels the way the target's own classifier does; starting from CAM's ranking it learns corrections to it.
    With ``layercam_weights`` (w8, w16) the residual is ``fused_ranking``: CAM plus w x LayerCAM at the stride-8
    and stride-16 taps whose weight is not 0."""

    def __init__(self, tap_channels: list[int], width: int = 128, cam: bool = False,
                 layercam_weights: tuple[float, float] = (0.0, 0.0)):
        super().__init__()
        if any(layercam_weights) and not cam:
            raise ValueError("layercam_weight adds LayerCAM to the class activation map: it needs cam")
        c8, c16, c32 = tap_channels
        self.cam, self.layercam_weights = cam, tuple(layercam_weights)
        self.block32 = UpsampleBlock(0, c32 + int(cam), width)
        self.block16 = UpsampleBlock(width, c16, width)
        self.block8 = UpsampleBlock(width, c8, width // 2)
        self.head = nn.Conv2d(width // 2, 1, 3, padding=1)
        if cam:
            nn.init.zeros_(self.head.weight)  # the map starts as CAM's ranking
            self.cam_gain = nn.Parameter(torch.ones(()))
        self.decoder_used = True

    def drop_dead_decoder(self) -> bool:
        """For inference: with a CAM-reading explainer whose head weights are all zero (the calibration-only
        explainer the shipped surrogate has), the decoder adds exactly the head's bias, so skip it - the same map,
        bit for bit, without the decoder's compute (docs/BENCHMARKS.md, "Precision on CPU"). Never
        called in training, where the head weights may be about to move. Returns whether it was dropped."""
        self.decoder_used = not (self.cam and not bool(torch.any(self.head.weight != 0)))
        return not self.decoder_used

    def calibration_parameters(self) -> list[nn.Parameter]:
        """The CAM gain and the head's bias: trained alone (head weights at zero), they set how much of the map
        is bright - its intensity - and leave CAM's ranking, which insertion and deletion score, untouched."""
        if not self.cam:
            raise ValueError("only a CAM-reading explainer has a calibration of CAM to train")
        return [self.cam_gain, self.head.bias]

    @property
    def layercam_taps(self) -> list[int]:
        """Indices of the student's taps (0: stride 8, 1: stride 16) whose LayerCAM the map reads."""
        return [index for index, weight in enumerate(self.layercam_weights) if weight]

    def forward(self, deltas: list[torch.Tensor], size: tuple[int, int], cam: torch.Tensor | None = None,
                layercams: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``layercams``: one map per ``layercam_taps`` entry, in that order."""
        d8, d16, d32 = deltas
        ranking = None
        if self.cam:
            taps = self.layercam_taps
            if cam is None or len(layercams or []) != len(taps):
                raise ValueError("this explainer reads the class activation map (and LayerCAM): pass them")
            cam = standardise(cam)
            d32 = torch.cat([d32, cam.to(d32.dtype)], dim=1)
            weights = [self.layercam_weights[index] for index in taps]
            ranking = fused_ranking(cam, layercams, weights) if taps else cam
        if not self.decoder_used:  # see drop_dead_decoder: the head's output is its bias, at stride 8
            logit = self.head.bias.float().view(1, 1, 1, 1) + self.cam_gain * _upsample_to(ranking, d8.shape[-2:])
            return torch.sigmoid(F.interpolate(logit, size=size, mode="bilinear", align_corners=False))
        x = self.block32(None, d32)
        x = self.block16(x, d16)
        x = self.block8(x, d8)
        logit = self.head(x).float()
        if ranking is not None:
            logit = logit + self.cam_gain * _upsample_to(ranking, logit.shape[-2:])
        return torch.sigmoid(F.interpolate(logit, size=size, mode="bilinear", align_corners=False))  # fp32 always
