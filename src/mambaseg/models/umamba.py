"""U-Mamba "Bot" (Ma et al., Jan 2024), 2D, without deep supervision, and its pyramid-pooling variant.

nnU-Net residual encoder (stem 3x3 conv to 32, five stages of one ResNet-D basic block, 32-64-128-
256-512 features, strides 1-2-2-2-2, InstanceNorm2d without affine, LeakyReLU 0.01, conv bias);
at the bottleneck (16x16x512 for a 256 input) the features are flattened to tokens, normalised
(LayerNorm 512) and passed through one Mamba block (d_state 16, d_conv 4, expand 2), whose output
replaces them (no residual); residual decoder (2x2 transposed convs, concatenated skips, one block
2C -> C per level, 1x1 head). ``umamba_bot_pp`` first replaces the bottleneck features by a
pyramid pooling module (bins 1, 2, 3, 6 -> 64, 128, 256, 64 channels).

Parameter count: 9,813,700 (10,076,356 with the pyramid pooling), as the seed's network. 451 of
them are nnU-Net's deep-supervision segmentation layers at 1/8, 1/4 and 1/2 resolution, which the
paper's training (``deep_supervision=False``, the default) never uses, as in the seed; with
``deep_supervision=True`` the forward returns every level's logits (full resolution first) and
all of them are trained.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from mambaseg.models.base import SegModel
from mambaseg.models.registry import register_model
from mambaseg.nn.blocks import ResidualDecoder, ResidualEncoder
from mambaseg.nn.mamba import Mamba
from mambaseg.nn.ppm import PyramidPooling

#: parameters of the deep-supervision segmentation layers unused without deep supervision
DEEP_SUPERVISION_PARAMS = 451


class UMambaBot(SegModel):
    family = "umamba"
    size_multiple = 16
    min_size = 32

    def __init__(self, in_channels: int = 3, num_classes: int = 1,
                 features: Sequence[int] = (32, 64, 128, 256, 512),
                 strides: Sequence[int] = (1, 2, 2, 2, 2), ppm: bool = False,
                 ppm_channels: Sequence[int] = (64, 128, 256, 64), d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, scan_backend: str | None = None, deep_supervision: bool = False):
        super().__init__(in_channels, num_classes)
        features, strides = [int(f) for f in features], [int(s) for s in strides]
        if len(features) != len(strides):
            raise ValueError(f"UMambaBot: {len(features)} feature widths but {len(strides)} strides")
        total = 1
        for s in strides:
            total *= s
        self.size_multiple = total
        self.min_size = 2 * total  # InstanceNorm needs more than one pixel at the bottleneck
        width = features[-1]
        self.encoder = ResidualEncoder(in_channels, features, strides)
        if ppm and sum(ppm_channels) != width:
            raise ValueError(f"UMambaBot: ppm_channels {tuple(ppm_channels)} must sum to {width}")
        self.ppm = PyramidPooling(width, ppm_channels) if ppm else None
        self.norm = nn.LayerNorm(width)
        self.mamba = Mamba(width, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend)
        self.decoder = ResidualDecoder(features, strides, num_classes,
                                       deep_supervision=deep_supervision)
        self._init_weights()

    def _init_weights(self):
        # nnU-Net's InitWeights_He(1e-2), as U-Mamba applies it: (transposed) convs only
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, a=1e-2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def deep_supervision(self) -> bool:
        return self.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        self.decoder.deep_supervision = bool(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.check_input(x)
        skips = self.encoder(x)
        bottom = skips[-1]
        if self.ppm is not None:
            bottom = self.ppm(bottom)
        batch, channels, height, width = bottom.shape
        tokens = self.mamba(self.norm(bottom.flatten(2).transpose(1, 2)))
        skips[-1] = tokens.transpose(1, 2).reshape(batch, channels, height, width)
        return self.decoder(skips)


@register_model(family="umamba")
def umamba_bot(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UMambaBot:
    """U-Mamba Bot: nnU-Net residual U-Net with one Mamba block at the bottleneck."""
    return UMambaBot(in_channels, num_classes, **kwargs)


@register_model(family="umamba")
def umamba_bot_pp(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UMambaBot:
    """U-Mamba Bot with pyramid pooling (bins 1, 2, 3, 6) before the bottleneck Mamba."""
    kwargs.setdefault("ppm", True)
    return UMambaBot(in_channels, num_classes, **kwargs)
