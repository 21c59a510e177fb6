"""U-Net of Buda et al. (2019), the brain-MRI U-Net baseline of the paper.

Four levels of two (3x3 conv, BatchNorm, ReLU) with 32, 64, 128, 256 features and a 512-feature
bottleneck; 2x2 max-pooling down, 2x2 transposed convolutions up, concatenated skips, 1x1 head.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.models.base import SegModel
from mambaseg.models.registry import register_model
from mambaseg.nn.blocks import DoubleConv


class UNet(SegModel):
    family = "unet"
    size_multiple = 16
    min_size = 32

    def __init__(self, in_channels: int = 3, num_classes: int = 1,
                 features: Sequence[int] = (32, 64, 128, 256, 512)):
        super().__init__(in_channels, num_classes)
        features = [int(f) for f in features]
        if len(features) < 2:
            raise ValueError("UNet needs at least two feature widths (one level and the bottleneck)")
        *levels, bottom = features
        self.size_multiple = 2 ** len(levels)
        self.min_size = 2 * self.size_multiple
        self.encoders = nn.ModuleList()
        prev = in_channels
        for width in levels:
            self.encoders.append(DoubleConv(prev, width))
            prev = width
        self.bottleneck = DoubleConv(prev, bottom)
        self.upconvs = nn.ModuleList()
        self.decoders = nn.ModuleList()
        prev = bottom
        for width in reversed(levels):
            self.upconvs.append(nn.ConvTranspose2d(prev, width, kernel_size=2, stride=2))
            self.decoders.append(DoubleConv(2 * width, width))
            prev = width
        self.head = nn.Conv2d(prev, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        x = self.bottleneck(x)
        for upconv, decoder, skip in zip(self.upconvs, self.decoders, reversed(skips)):
            x = decoder(torch.cat((upconv(x), skip), dim=1))
        return self.head(x)


@register_model(family="unet")
def unet(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UNet:
    """U-Net (Buda et al. 2019): 32-64-128-256 features, 512 bottleneck, BatchNorm."""
    return UNet(in_channels, num_classes, **kwargs)
