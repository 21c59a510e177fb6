"""UltraLight VM-UNet (Wu et al. 2024) and the seed's six variants, from one configurable class.

Levels i = 1..L with widths ``channels``; the last ``pvm_levels`` encoders are Parallel Vision
Mamba layers, the others 3x3 convs. Encoders 1..L-1 are followed by GroupNorm(4), 2x2 max-pooling
and GELU (their outputs are the skips); encoder L (the bottleneck, at 1/2^(L-1)) by GELU only.
The skips pass the spatial-channel attention bridge. Decoders 1..L-1 map width L-j+1 -> L-j, the
first ``pvm_levels`` being PVM layers, the rest 3x3 convs; each is followed by GroupNorm(4),
bilinear x2 upsampling (not after decoder 1), GELU, and adds its skip. A 1x1 conv and a bilinear
x2 upsampling give the logits (the seed's models end in a sigmoid; ours return logits).

| name            | channels               | chunks | pyramid pooling        | params    |
|-----------------|------------------------|--------|------------------------|-----------|
| ulvm_unet       | 8-16-24-32-48-64       | 4      | -                      | 49,457    |
| ulvm_unet_v1    | 16-32-64-128-256       | 4      | -                      | 217,165   |
| ulvm_unet_v2    | 8-16-24-32-48-64       | 8      | -                      | 42,737    |
| ulvm_unet_v3    | 16-32-64-128-256       | 8      | -                      | 176,453   |
| ulvm_unet_v4    | 16-32-64-128-256-512   | 8      | every PVM layer        | 1,135,309 |
| ulvm_unet_v5    | 16-32-64-128-256-512   | 8      | -                      | 703,885   |
| ulvm_unet_v6    | 16-32-64-128-256-512   | 8      | bottleneck PVM only    | 769,677   |
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.models.base import SegModel
from mambaseg.models.registry import register_model
from mambaseg.nn.pvm import PVMLayer

_PPM_PLACES = ("none", "bottleneck", "all")



def max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pooling, stride 2. Without autograd, the max of the four strided sub-grids: the
    same values as ``F.max_pool2d(x, 2)`` about 10x faster on CPU (no argmax indices)."""
    if torch.is_grad_enabled() or x.shape[-1] % 2 or x.shape[-2] % 2:
        return F.max_pool2d(x, 2, 2)
    return torch.maximum(torch.maximum(x[..., ::2, ::2], x[..., ::2, 1::2]),
                         torch.maximum(x[..., 1::2, ::2], x[..., 1::2, 1::2]))

class SpatialAttentionBridge(nn.Module):
    """Per skip: channel mean and max -> one shared conv (2->1, kernel 7, dilation 3) -> sigmoid."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=7, stride=1, padding=9, dilation=3)

    def forward(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.sigmoid(self.conv(torch.cat((t.mean(dim=1, keepdim=True), t.amax(dim=1, keepdim=True)), dim=1)))
                for t in skips]


class ChannelAttentionBridge(nn.Module):
    """Global average pools of all skips, concatenated -> conv1d (kernel 3, no bias) -> one Linear
    per skip (to its width) -> sigmoid."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        total = sum(channels)
        self.mix = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        self.fcs = nn.ModuleList(nn.Linear(total, c) for c in channels)

    def forward(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        pooled = torch.cat([t.mean(dim=(2, 3)) for t in skips], dim=1)  # (B, sum C)
        mixed = self.mix(pooled.unsqueeze(1))  # (B, 1, sum C)
        return [torch.sigmoid(fc(mixed)).transpose(1, 2).unsqueeze(-1) for fc in self.fcs]  # (B, C, 1, 1)


class AttentionBridge(nn.Module):
    """SC_Att_Bridge: s = sab(t) * t; u = s + t; out = cab(u) * u + s."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.spatial = SpatialAttentionBridge()
        self.channel = ChannelAttentionBridge(channels)

    def forward(self, skips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        s = [a * t for a, t in zip(self.spatial(skips), skips)]
        u = [si + t for si, t in zip(s, skips)]
        return [a * ui + si for a, ui, si in zip(self.channel(u), u, s)]


class UltraLightVMUNet(SegModel):
    family = "ultralight"

    def __init__(self, in_channels: int = 3, num_classes: int = 1,
                 channels: Sequence[int] = (8, 16, 24, 32, 48, 64), pvm_levels: int = 3, chunks: int = 4,
                 ppm: str = "none", bridge: bool = True, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 scan_backend: str | None = None):
        super().__init__(in_channels, num_classes)
        channels = [int(c) for c in channels]
        levels = len(channels)
        if levels < 2 or not 1 <= pvm_levels <= levels - 1:
            raise ValueError(f"UltraLightVMUNet: need at least 2 levels and 1 <= pvm_levels <= {levels - 1}")
        if ppm not in _PPM_PLACES:
            raise ValueError(f"UltraLightVMUNet: ppm must be one of {_PPM_PLACES}, not {ppm!r}")
        self.size_multiple = 2 ** (levels - 1)
        self.min_size = self.size_multiple
        self.bridge_enabled = bool(bridge)

        def pvm(cin, cout, with_ppm):
            return PVMLayer(cin, cout, chunks=chunks, d_state=d_state, d_conv=d_conv, expand=expand,
                            ppm=with_ppm, scan_backend=scan_backend)

        def conv(cin, cout):
            return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)

        widths_in = [in_channels] + channels[:-1]
        self.encoders = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(widths_in, channels)):
            if i >= levels - pvm_levels:
                with_ppm = ppm == "all" or (ppm == "bottleneck" and i == levels - 1)
                self.encoders.append(pvm(cin, cout, with_ppm))
            else:
                self.encoders.append(conv(cin, cout))
        self.encoder_norms = nn.ModuleList(nn.GroupNorm(4, c) for c in channels[:-1])
        self.bridge = AttentionBridge(channels[:-1]) if bridge else None
        self.decoders = nn.ModuleList()
        for j in range(levels - 1):
            cin, cout = channels[levels - 1 - j], channels[levels - 2 - j]
            self.decoders.append(pvm(cin, cout, ppm == "all") if j < pvm_levels else conv(cin, cout))
        self.decoder_norms = nn.ModuleList(nn.GroupNorm(4, channels[levels - 2 - j]) for j in range(levels - 1))
        self.final = nn.Conv2d(channels[0], num_classes, kernel_size=1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # as the original, applied to every submodule, the Mamba blocks' layers included
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv1d):
            fan_out = m.kernel_size[0] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips, out = [], x
        for encoder, norm in zip(self.encoders, self.encoder_norms):
            out = F.gelu(max_pool2x2(norm(encoder(out))))
            skips.append(out)
        if self.bridge is not None:
            skips = self.bridge(skips)
        out = F.gelu(self.encoders[-1](out))
        for j, (decoder, norm) in enumerate(zip(self.decoders, self.decoder_norms)):
            out = norm(decoder(out))
            if j > 0:
                out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
            out = F.gelu(out) + skips[-1 - j]
        return F.interpolate(self.final(out), scale_factor=2, mode="bilinear", align_corners=True)


_BASE = dict(channels=(8, 16, 24, 32, 48, 64), chunks=4)
_FOUR_LEVELS = dict(channels=(16, 32, 64, 128, 256), chunks=4)
_WIDE = dict(channels=(16, 32, 64, 128, 256, 512), chunks=8)


def _build(in_channels, num_classes, defaults, kwargs) -> UltraLightVMUNet:
    return UltraLightVMUNet(in_channels, num_classes, **{**defaults, **kwargs})


@register_model(family="ultralight")
def ulvm_unet(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UltraLightVMUNet:
    """UltraLight VM-UNet: widths 8-16-24-32-48-64, PVM layers (4 chunks) at the 3 deepest levels."""
    return _build(in_channels, num_classes, _BASE, kwargs)


@register_model(family="ultralight")
def ulvm_unet_v1(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UltraLightVMUNet:
    """v1: five levels 16-32-64-128-256, PVM layers from level 3."""
    return _build(in_channels, num_classes, _FOUR_LEVELS, kwargs)


@register_model(family="ultralight")
def ulvm_unet_v2(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UltraLightVMUNet:
    """v2: the base model with 8 chunks per PVM layer."""
    return _build(in_channels, num_classes, {**_BASE, "chunks": 8}, kwargs)


@register_model(family="ultralight")
def ulvm_unet_v3(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UltraLightVMUNet:
    """v3: v1's five levels with 8 chunks per PVM layer."""
    return _build(in_channels, num_classes, {**_FOUR_LEVELS, "chunks": 8}, kwargs)


@register_model(family="ultralight")
def ulvm_unet_v4(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UltraLightVMUNet:
    """v4: v5 with pyramid pooling in every PVM layer."""
    return _build(in_channels, num_classes, {**_WIDE, "ppm": "all"}, kwargs)


@register_model(family="ultralight")
def ulvm_unet_v5(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UltraLightVMUNet:
    """v5: six levels 16-32-64-128-256-512, 8 chunks per PVM layer."""
    return _build(in_channels, num_classes, _WIDE, kwargs)


@register_model(family="ultralight")
def ulvm_unet_v6(in_channels: int = 3, num_classes: int = 1, **kwargs) -> UltraLightVMUNet:
    """v6: v5 with pyramid pooling in the bottleneck PVM layer."""
    return _build(in_channels, num_classes, {**_WIDE, "ppm": "bottleneck"}, kwargs)
