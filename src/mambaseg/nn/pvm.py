"""Parallel Vision Mamba layer of UltraLight VM-UNet (Wu et al. 2024).

LayerNorm over channels, split the channels into ``chunks`` equal groups, run every group through
ONE shared Mamba block (width C/chunks) and add ``skip_scale * group`` (a learnable scalar),
concatenate, apply the same LayerNorm again, then a Linear C -> C_out. Optionally a pyramid pooling
module replaces the input first (the seed's v4/v6 variants).

Because the Mamba block is shared, the groups are stacked along the batch dimension and scanned in
one call; this is the same computation as the original's one call per group, only fewer launches.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mambaseg.nn.mamba import Mamba
from mambaseg.nn.ppm import PyramidPooling


class PVMLayer(nn.Module):
    """(B, in_dim, H, W) -> (B, out_dim, H, W)."""

    def __init__(self, in_dim: int, out_dim: int, chunks: int = 4, d_state: int = 16, d_conv: int = 4,
                 expand: int = 2, ppm: bool = False, scan_backend: str | None = None):
        super().__init__()
        if chunks < 1 or in_dim % chunks:
            raise ValueError(f"PVMLayer: {in_dim} channels cannot be split into {chunks} equal chunks")
        self.in_dim, self.out_dim, self.chunks = in_dim, out_dim, chunks
        self.ppm = PyramidPooling.psp(in_dim) if ppm else None
        self.norm = nn.LayerNorm(in_dim)
        self.mamba = Mamba(in_dim // chunks, d_state=d_state, d_conv=d_conv, expand=expand,
                           scan_backend=scan_backend)
        self.proj = nn.Linear(in_dim, out_dim)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ppm is not None:
            x = self.ppm(x)
        batch, channels, height, width = x.shape
        length, k, width_k = height * width, self.chunks, channels // self.chunks
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (B, L, C)
        # (B, L, C) -> (k*B, L, C/k): chunk i is channels [i*C/k, (i+1)*C/k), as torch.chunk splits
        groups = tokens.reshape(batch, length, k, width_k).permute(2, 0, 1, 3).reshape(k * batch, length, width_k)
        groups = self.mamba(groups) + self.skip_scale * groups
        tokens = groups.reshape(k, batch, length, width_k).permute(1, 2, 0, 3).reshape(batch, length, channels)
        out = self.proj(self.norm(tokens))
        return out.transpose(1, 2).reshape(batch, self.out_dim, height, width)

    def extra_repr(self) -> str:
        return f"{self.in_dim} -> {self.out_dim}, chunks={self.chunks}"
