"""Cross-scan Mamba and depthwise-convolution blocks (the layers of ``mambaseg_s``).

``CrossScan`` runs ONE Mamba block over the pixels of a feature map read in several orders (as
VMamba's cross-scan): row-major, column-major, and both reversed. Each order sees the whole image
causally from another side; the outputs, put back in place, are averaged. The orders are stacked
along the batch, so all of them go through the scan in one call.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.nn.mamba import Mamba

#: orders scanned for each ``directions`` setting
SCAN_ORDERS = {1: ("rows",), 2: ("rows", "cols"), 4: ("rows", "cols", "rows_rev", "cols_rev")}


def _to_sequence(x: torch.Tensor, order: str) -> torch.Tensor:
    # x: (B, C, H, W) -> (B, L, C)
    if order.startswith("cols"):
        x = x.transpose(2, 3)
    seq = x.flatten(2).transpose(1, 2)
    return seq.flip(1) if order.endswith("_rev") else seq


def _from_sequence(seq: torch.Tensor, order: str, height: int, width: int) -> torch.Tensor:
    # seq: (B, L, C) -> (B, C, H, W), undoing _to_sequence
    if order.endswith("_rev"):
        seq = seq.flip(1)
    batch, _, channels = seq.shape
    if order.startswith("cols"):
        return seq.transpose(1, 2).reshape(batch, channels, width, height).transpose(2, 3)
    return seq.transpose(1, 2).reshape(batch, channels, height, width)


class CrossScan(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): LayerNorm, one shared Mamba over ``directions`` pixel orders
    (1, 2 or 4; see :data:`SCAN_ORDERS`), outputs averaged."""

    def __init__(self, channels: int, directions: int = 4, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, scan_backend: str | None = None):
        super().__init__()
        if directions not in SCAN_ORDERS:
            raise ValueError(f"CrossScan: directions must be one of {sorted(SCAN_ORDERS)}, not {directions!r}")
        self.orders = SCAN_ORDERS[directions]
        self.norm = nn.LayerNorm(channels)
        self.mamba = Mamba(channels, d_state=d_state, d_conv=d_conv, expand=expand,
                           scan_backend=scan_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        k = len(self.orders)
        seqs = torch.cat([_to_sequence(x, o) for o in self.orders], dim=0)  # (k*B, L, C)
        out = self.mamba(self.norm(seqs)).chunk(k, dim=0)
        return sum(_from_sequence(s, o, height, width) for s, o in zip(out, self.orders)) / k

    def extra_repr(self) -> str:
        return f"orders={self.orders}"


class ConvFFN(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): depthwise k x k conv, BatchNorm, 1x1 expand, GELU, 1x1 back."""

    def __init__(self, channels: int, kernel_size: int = 7, expand: int = 2):
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = nn.BatchNorm2d(channels)
        self.pw1 = nn.Conv2d(channels, expand * channels, 1)
        self.pw2 = nn.Conv2d(expand * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(F.gelu(self.pw1(self.norm(self.dw(x)))))


class MixerBlock(nn.Module):
    """Residual token mixer then residual ConvFFN: x + mixer(x), then + ffn(.).

    ``mixer``: ``"mamba"`` (a :class:`CrossScan`) or ``"conv"`` (a second ConvFFN: the same block
    without the scan, for ablations)."""

    def __init__(self, channels: int, mixer: str = "mamba", directions: int = 4,
                 scan_backend: str | None = None, **mamba_kwargs):
        super().__init__()
        if mixer == "mamba":
            self.mixer = CrossScan(channels, directions, scan_backend=scan_backend, **mamba_kwargs)
        elif mixer == "conv":
            self.mixer = ConvFFN(channels)
        else:
            raise ValueError(f"MixerBlock: mixer must be 'mamba' or 'conv', not {mixer!r}")
        self.ffn = ConvFFN(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(x)
        return x + self.ffn(x)
