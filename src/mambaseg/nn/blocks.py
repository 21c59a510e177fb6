"""Convolutional building blocks shared by the models.

- ``DoubleConv``: two (3x3 conv with bias, BatchNorm, ReLU), the U-Net level of Buda et al.
- ``ConvNormAct``, ``ResidualBlock``, ``ResidualEncoder``, ``ResidualDecoder``: the nnU-Net
  residual encoder / decoder that U-Mamba builds on (``dynamic_network_architectures``'
  ``ResidualEncoder``, ``BasicBlockD`` and U-Mamba's ``UNetResDecoder``), written out for 2D with
  the settings U-Mamba Bot uses: InstanceNorm2d without affine parameters, LeakyReLU(0.01), conv
  bias on.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


class DoubleConv(nn.Sequential):
    """(3x3 conv with bias, BatchNorm, ReLU) twice."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ConvNormAct(nn.Module):
    """Conv ("same" padding) -> InstanceNorm2d (no affine) -> optional LeakyReLU(0.01)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = True, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=(kernel_size - 1) // 2, bias=bias)
        self.norm = nn.InstanceNorm2d(out_channels)
        self.act = nn.LeakyReLU(0.01, inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    """ResNet-D basic block (``BasicBlockD``): two 3x3 ConvNormAct, the second without activation,
    plus a shortcut, then LeakyReLU. The stride sits in the first conv; the shortcut down-samples
    by average pooling and projects with a 1x1 conv (no bias) + norm when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3):
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, kernel_size, stride)
        self.conv2 = ConvNormAct(out_channels, out_channels, kernel_size, 1, act=False)
        shortcut = []
        if stride != 1:
            shortcut.append(nn.AvgPool2d(stride, stride))
        if in_channels != out_channels:
            shortcut.append(ConvNormAct(in_channels, out_channels, 1, 1, bias=False, act=False))
        self.skip = nn.Sequential(*shortcut) if shortcut else nn.Identity()
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


class ResidualEncoder(nn.Module):
    """Stem (ConvNormAct in -> features[0]) then one stage of residual blocks per entry of
    ``features``; returns every stage's output (the skips, bottleneck last)."""

    def __init__(self, in_channels: int, features: Sequence[int], strides: Sequence[int],
                 blocks_per_stage: int | Sequence[int] = 1, kernel_size: int = 3):
        super().__init__()
        if len(features) != len(strides):
            raise ValueError(f"ResidualEncoder: {len(features)} stages but {len(strides)} strides")
        if isinstance(blocks_per_stage, int):
            blocks_per_stage = [blocks_per_stage] * len(features)
        self.features, self.strides = tuple(features), tuple(strides)
        self.stem = ConvNormAct(in_channels, features[0], kernel_size)
        stages, prev = [], features[0]
        for width, stride, n_blocks in zip(features, strides, blocks_per_stage):
            blocks = [ResidualBlock(prev, width, stride, kernel_size)]
            blocks += [ResidualBlock(width, width, 1, kernel_size) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            prev = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class ResidualDecoder(nn.Module):
    """U-Mamba's ``UNetResDecoder``: per level a transposed conv (kernel = stride, with bias) up
    to the skip's width, concatenation with the skip, residual block(s) 2C -> C, and a 1x1 conv
    segmentation layer (``seg_layers``, as nnU-Net). Without deep supervision (the default, as the
    paper trained) only the last level's layer is used and the output is one logits tensor; with
    ``deep_supervision=True`` every level's logits are returned, full resolution first."""

    def __init__(self, features: Sequence[int], strides: Sequence[int], num_classes: int,
                 blocks_per_stage: int | Sequence[int] = 1, kernel_size: int = 3,
                 deep_supervision: bool = False):
        super().__init__()
        self.deep_supervision = deep_supervision
        n_levels = len(features) - 1
        if isinstance(blocks_per_stage, int):
            blocks_per_stage = [blocks_per_stage] * n_levels
        upsamples, stages = [], []
        for level in range(n_levels):
            below, skip = features[-1 - level], features[-2 - level]
            stride = strides[-1 - level]
            upsamples.append(nn.ConvTranspose2d(below, skip, stride, stride, bias=True))
            blocks = [ResidualBlock(2 * skip, skip, 1, kernel_size)]
            blocks += [ResidualBlock(skip, skip, 1, kernel_size) for _ in range(blocks_per_stage[level] - 1)]
            stages.append(nn.Sequential(*blocks))
        self.upsamples = nn.ModuleList(upsamples)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(nn.Conv2d(features[-2 - level], num_classes, kernel_size=1)
                                        for level in range(n_levels))

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x, outputs = skips[-1], []
        for level, (up, stage) in enumerate(zip(self.upsamples, self.stages)):
            x = stage(torch.cat((up(x), skips[-2 - level]), dim=1))
            if self.deep_supervision:
                outputs.append(self.seg_layers[level](x))
        return outputs[::-1] if self.deep_supervision else self.seg_layers[-1](x)
