"""MambaSeg-S: our own small Mamba U-Net (at most 1 M parameters).

A U-shaped network whose deepest levels mix tokens with a cross-scan Mamba, so that the selective
scan carries the long-range context, and whose shallow levels are cheap depthwise-convolution
blocks:

- stem: 3x3 conv, BatchNorm, GELU at full resolution;
- level i (widths ``channels``, at 1/2^i): a 2x2 stride-2 conv + BatchNorm (i > 0), then
  ``depths[i]`` residual blocks: the last ``mamba_levels`` levels use :class:`MixerBlock` (cross-scan
  Mamba over ``directions`` pixel orders, then a ConvFFN), the others a residual ConvFFN;
- decoder: bilinear x2 upsampling, concatenated skip, 1x1 conv + BatchNorm + GELU, one residual
  ConvFFN per level; a 1x1 head gives the logits.

``mixer="conv"`` swaps every cross-scan for a ConvFFN (the same network without Mamba) and
``directions=1`` scans one flattened order only, as UltraLight's PVM layer: the ablations of
``results/cv/README.md``. ``stem_stride=2`` makes the stem a stride-2 convolution, so that every
level works at half the resolution, and upsamples the logits x2 (bilinear) at the end, as
SegFormer does x4: about a third of the CPU time per slice (the full-resolution level costs most).

| name        | channels            | depths    | params  |
|-------------|---------------------|-----------|---------|
| mambaseg_s  | 16-32-64-96-128     | 1-1-2-2-2 | 838,081 |
| mambaseg_t  | 8-16-24-32          | 1-1-1-1   | 42,401  |
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.models.base import SegModel
from mambaseg.models.registry import register_model
from mambaseg.nn.cross_scan import ConvFFN, MixerBlock


class _Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _conv_bn(cin: int, cout: int, kernel_size: int, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
                        bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.GELU()) if act else nn.Sequential(*layers)


class MambaSegNet(SegModel):
    family = "mambaseg"

    def __init__(self, in_channels: int = 3, num_classes: int = 1,
                 channels: Sequence[int] = (16, 32, 64, 96, 128), depths: Sequence[int] = (1, 1, 2, 2, 2),
                 mamba_levels: int = 2, directions: int = 4, mixer: str = "mamba", d_state: int = 16,
                 stem_stride: int = 1, scan_backend: str | None = None):
        super().__init__(in_channels, num_classes)
        channels, depths = [int(c) for c in channels], [int(d) for d in depths]
        levels = len(channels)
        if levels < 2 or len(depths) != levels or not 0 <= mamba_levels <= levels:
            raise ValueError(f"MambaSegNet: need >= 2 levels, one depth per level and "
                             f"0 <= mamba_levels <= {levels}")
        if stem_stride not in (1, 2):
            raise ValueError(f"MambaSegNet: stem_stride must be 1 or 2, not {stem_stride!r}")
        self.stem_stride = stem_stride
        self.size_multiple = 2 ** (levels - 1) * stem_stride
        self.min_size = self.size_multiple

        def blocks(width: int, depth: int, scan: bool) -> nn.Sequential:
            if scan:
                return nn.Sequential(*(MixerBlock(width, mixer, directions, scan_backend=scan_backend,
                                                  d_state=d_state) for _ in range(depth)))
            return nn.Sequential(*(_Residual(ConvFFN(width)) for _ in range(depth)))

        self.stem = _conv_bn(in_channels, channels[0], 3, stride=stem_stride)
        self.downs = nn.ModuleList(_conv_bn(channels[i - 1], channels[i], 2, stride=2, act=False)
                                   for i in range(1, levels))
        self.encoders = nn.ModuleList(blocks(channels[i], depths[i], i >= levels - mamba_levels)
                                      for i in range(levels))
        self.fuses = nn.ModuleList(_conv_bn(channels[i + 1] + channels[i], channels[i], 1)
                                   for i in range(levels - 1))
        self.decoders = nn.ModuleList(_Residual(ConvFFN(channels[i])) for i in range(levels - 1))
        self.head = nn.Conv2d(channels[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.encoders[0](self.stem(x))
        skips = [x]
        for down, encoder in zip(self.downs, self.encoders[1:]):
            x = encoder(down(x))
            skips.append(x)
        for i in reversed(range(len(self.fuses))):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.decoders[i](self.fuses[i](torch.cat((x, skips[i]), dim=1)))
        x = self.head(x)
        if self.stem_stride > 1:
            x = F.interpolate(x, scale_factor=self.stem_stride, mode="bilinear", align_corners=False)
        return x


@register_model(family="mambaseg")
def mambaseg_s(in_channels: int = 3, num_classes: int = 1, **kwargs) -> MambaSegNet:
    """MambaSeg-S (ours): depthwise-conv U-Net with 4-way cross-scan Mamba at 1/8 and 1/16."""
    return MambaSegNet(in_channels, num_classes, **kwargs)


@register_model(family="mambaseg")
def mambaseg_t(in_channels: int = 3, num_classes: int = 1, **kwargs) -> MambaSegNet:
    """MambaSeg-T: a tiny MambaSeg (8-16-24-32) for tests and quick runs."""
    return MambaSegNet(in_channels, num_classes, **{"channels": (8, 16, 24, 32), "depths": (1, 1, 1, 1),
                                                      **kwargs})
