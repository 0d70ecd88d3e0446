"""CBAM attention (Woo et al. 2018) as used by the paper, returning the attentive difference delta_f."""

from __future__ import annotations

import torch
from torch import nn

# Identity start (--student same-as-teacher): zero weights and these biases make the gates sigmoid(bias), close
# to 1, so the attentive student first computes what the target computes. The channel gate is a product over
# channels' MLP outputs, the spatial gate one map: sigmoid(2.5) = 0.92 of a channel and sigmoid(5) = 0.993 of a
# pixel pass through.
CHANNEL_IDENTITY_BIAS = 2.5
SPATIAL_IDENTITY_BIAS = 5.0

class ChannelAttention(nn.Module):
    """Shared MLP over average- and max-pooled features, summed, then sigmoid: one weight per channel."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=True),
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        # Pooling and the gate run in fp32 even in a half-precision graph (no-ops in fp32): means over large maps
        # and sigmoids near saturation are where fp16 loses the most.
        avg = self.mlp(f.float().mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(f.amax(dim=(2, 3), keepdim=True).float())
        return torch.sigmoid((avg + mx).float())


class SpatialAttention(nn.Module):
    """7x7 convolution over the channel-wise mean and max maps, then sigmoid: one weight per position."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=True)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([f.float().mean(dim=1, keepdim=True), f.amax(dim=1, keepdim=True).float()], dim=1)
        return torch.sigmoid(self.conv(pooled).float())


class CBAM(nn.Module):
    """Channel then spatial attention; ``forward`` returns (f_hat, delta_f = f_hat - f).

    ``identity_init`` zeroes the last layer of each branch and gives it a large positive bias, so the module
    starts as (almost) the identity. That is what lets a student initialised from a pretrained target keep the
    target's accuracy on its first step instead of having its features halved by sigmoid(0) = 0.5.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, identity_init: bool = False):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)
        if identity_init:
            for last in (self.channel.mlp[-1], self.spatial.conv):
                nn.init.zeros_(last.weight)
                nn.init.constant_(last.bias, SPATIAL_IDENTITY_BIAS if last is self.spatial.conv else
                                  CHANNEL_IDENTITY_BIAS)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Outside training the gates are constants of a gradient taken through the module: LayerCAM's backward
        # (the deployed map) then skips the attention branches, the costliest part of that backward for a map
        # that barely moves (docs/BENCHMARKS.md, "A cheaper backward"). Training differentiates through them.
        channel = self.channel(f)
        f_hat = f * (channel if self.training else channel.detach())
        spatial = self.spatial(f_hat)
        f_hat = f_hat * (spatial if self.training else spatial.detach())
        return f_hat, f_hat - f
