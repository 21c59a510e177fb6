"""Pyramid pooling module (Zhao et al. 2017, PSPNet), in the form the seed models use.

For each bin size ``b``: adaptive average pooling to ``b x b``, a 1x1 convolution (with bias) to
that bin's channel count, ReLU, and bilinear upsampling (``align_corners=True``) back to the input
size. The branches are concatenated along channels; the input itself is *not* concatenated, so the
module replaces its input (the seed uses channel counts that sum to the input's).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class PyramidPooling(nn.Module):
    """(B, in_channels, H, W) -> (B, sum(out_channels), H, W)."""

    def __init__(self, in_channels: int, out_channels: Sequence[int], bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        out_channels, bins = [int(c) for c in out_channels], [int(b) for b in bins]
        if len(out_channels) != len(bins):
            raise ValueError(f"PyramidPooling: {len(bins)} bins but {len(out_channels)} output channel counts")
        if any(c < 1 for c in out_channels) or any(b < 1 for b in bins):
            raise ValueError(f"PyramidPooling: bins {bins} and channels {out_channels} must be positive")
        self.bins = tuple(bins)
        self.in_channels = in_channels
        self.out_channels = sum(out_channels)
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, c, kernel_size=1) for c in out_channels)

    @classmethod
    def psp(cls, channels: int) -> "PyramidPooling":
        """The seed's UltraLight variant: bins 1, 2, 3, 6 to C/8, C/4, C/2, C/8 channels (sum C)."""
        if channels % 8:
            raise ValueError(f"PyramidPooling.psp needs channels divisible by 8, got {channels}")
        return cls(channels, (channels // 8, channels // 4, channels // 2, channels // 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        branches = []
        for bin_size, conv in zip(self.bins, self.convs):
            y = F.relu(conv(F.adaptive_avg_pool2d(x, bin_size)))
            branches.append(F.interpolate(y, size=size, mode="bilinear", align_corners=True))
        return torch.cat(branches, dim=1)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}, bins={self.bins}"
