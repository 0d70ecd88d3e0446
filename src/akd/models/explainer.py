"""Explanation heads, registered by name: what turns the student's outputs (attentive differences at strides 32,
16, 8, the class activation map, LayerCAM) into a saliency map in [0, 1]. ``calibrated-cam`` is what ships;
``decoder`` is the paper's explanation network."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from akd.contract import layercam_weights
from akd.util import AkdError, Registry


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


class ExplanationHead(nn.Module):
    """What turns the student's outputs into the map, chosen by name in the surrogate's config
    (``explainer_head``, ``EXPLANATION_HEADS``): ``forward(deltas, size, cam, layercams) -> (N,1,H,W) in [0,1]``.
    The trainer, export, INT8 and the docs key on this interface, never on a head's insides."""

    name = ""
    reads_cam = False

    def __init__(self, layercam_weights: tuple[float, float] = (0.0, 0.0)):
        super().__init__()
        self.layercam_weights = tuple(layercam_weights)

    @property
    def layercam_taps(self) -> list[int]:
        """Indices of the student's taps (0: stride 8, 1: stride 16) whose LayerCAM the map reads."""
        return [index for index, weight in enumerate(self.layercam_weights) if weight]

    def calibration_parameters(self) -> list[nn.Parameter]:
        """The parameters that set how much of the map is bright (its intensity) and leave its ranking alone."""
        raise ValueError(f"the {self.name} head has no calibration of CAM to train")

    def _ranking(self, cam: torch.Tensor | None, layercams: list[torch.Tensor] | None) -> torch.Tensor:
        """The standardised CAM, or ``fused_ranking`` with the LayerCAM maps the config weights."""
        taps = self.layercam_taps
        if cam is None or len(layercams or []) != len(taps):
            raise ValueError("this explainer reads the class activation map (and LayerCAM): pass them")
        cam = standardise(cam)
        weights = [self.layercam_weights[index] for index in taps]
        return fused_ranking(cam, layercams or [], weights) if taps else cam


EXPLANATION_HEADS: Registry = Registry()  # config["explainer_head"] -> (config, the student's tap channels) -> head


@EXPLANATION_HEADS.register("calibrated-cam")
class CalibratedCamHead(ExplanationHead):
    """sigmoid(bias + gain x ranking) at stride 8, resized to the input: the contrastive CAM fused with LayerCAM
    (``fused_ranking``), calibrated by two numbers. What the shipped surrogate and a target's own explanation
    compute: on a few hundred images no trained network beat that ranking, so only how bright the map is trains
    (docs/BENCHMARKS.md, "Explainer objectives")."""

    name = "calibrated-cam"
    reads_cam = True

    def __init__(self, config: dict[str, Any], tap_channels: list[int]):
        super().__init__(layercam_weights(config))
        self.gain = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(1))

    def calibration_parameters(self) -> list[nn.Parameter]:
        return [self.gain, self.bias]

    def forward(self, deltas: list[torch.Tensor], size: tuple[int, int], cam: torch.Tensor | None = None,
                layercams: list[torch.Tensor] | None = None) -> torch.Tensor:
        ranking = self._ranking(cam, layercams)
        logit = self.bias.float().view(1, 1, 1, 1) + self.gain * _upsample_to(ranking, deltas[0].shape[-2:])
        return torch.sigmoid(F.interpolate(logit, size=size, mode="bilinear", align_corners=False))


@EXPLANATION_HEADS.register("decoder")
class DecoderExplainer(ExplanationHead):
    """The paper's explanation network: three upsample blocks over the attentive differences from stride 32 to
    8, then a 1-channel sigmoid head resized to the input.

    With ``explainer_cam`` it also reads the class activation map of the predicted class (standardised): as an
    extra input channel at stride 32, and as a residual the head's logit adds to, scaled by a learned gain. The
    attentive differences alone carry no class; starting from CAM's ranking the decoder learns corrections to
    it. With LayerCAM weights the residual is ``fused_ranking``."""

    name = "decoder"

    def __init__(self, config: dict[str, Any], tap_channels: list[int]):
        super().__init__(layercam_weights(config))
        cam, width = bool(config.get("explainer_cam", False)), int(config.get("explainer_width", 128))
        if any(self.layercam_weights) and not cam:
            raise ValueError("layercam_weight adds LayerCAM to the class activation map: it needs explainer_cam")
        c8, c16, c32 = tap_channels
        self.reads_cam = cam
        self.block32 = UpsampleBlock(0, c32 + int(cam), width)
        self.block16 = UpsampleBlock(width, c16, width)
        self.block8 = UpsampleBlock(width, c8, width // 2)
        self.head = nn.Conv2d(width // 2, 1, 3, padding=1)
        if cam:
            nn.init.zeros_(self.head.weight)  # the map starts as CAM's ranking
            self.cam_gain = nn.Parameter(torch.ones(()))

    def calibration_parameters(self) -> list[nn.Parameter]:
        """With the head's weights held at zero, the CAM gain and the head's bias calibrate CAM's ranking."""
        if not self.reads_cam:
            raise ValueError("only a CAM-reading explainer has a calibration of CAM to train")
        return [self.cam_gain, self.head.bias]

    def forward(self, deltas: list[torch.Tensor], size: tuple[int, int], cam: torch.Tensor | None = None,
                layercams: list[torch.Tensor] | None = None) -> torch.Tensor:
        d8, d16, d32 = deltas
        ranking = None
        if self.reads_cam:
            ranking = self._ranking(cam, layercams)
            d32 = torch.cat([d32, standardise(cam).to(d32.dtype)], dim=1)
        x = self.block32(None, d32)
        x = self.block16(x, d16)
        x = self.block8(x, d8)
        logit = self.head(x).float()
        if ranking is not None:
            logit = logit + self.cam_gain * _upsample_to(ranking, logit.shape[-2:])
        return torch.sigmoid(F.interpolate(logit, size=size, mode="bilinear", align_corners=False))  # fp32 always


def build_head(config: dict[str, Any], tap_channels: list[int]) -> ExplanationHead:
    name = config.get("explainer_head", "decoder")
    if name not in EXPLANATION_HEADS:
        raise AkdError(f"explainer_head must be one of {', '.join(EXPLANATION_HEADS)}, not '{name}'")
    return EXPLANATION_HEADS[name](config, tap_channels)


def calibrated_from_decoder(config: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint written before heads had names, whose decoder was trained for calibration only (head weights
    zero, ``explainer_params: calibration``), as the calibrated-cam head it computes: the same map bit for bit.
    Returns the converted state; ``config`` is updated in place. Any other checkpoint is returned as it is."""
    weight = state.get("explainer.head.weight")
    if ("explainer_head" in config or not config.get("explainer_cam") or weight is None
            or bool(torch.any(weight != 0))):
        config.setdefault("explainer_head", "decoder")
        return state
    config["explainer_head"] = "calibrated-cam"
    kept = {k: v for k, v in state.items() if not k.startswith("explainer.")}
    return {**kept, "explainer.gain": state["explainer.cam_gain"], "explainer.bias": state["explainer.head.bias"]}
