"""SegFormer (Xie et al. 2021) as the seed writes it by hand (lxaw/mamba-tumor-seg
``models/segformer.py``, after F. S. Zuppichini's SegFormer): 17,782,913 parameters for 3 input
channels and 1 class.

- encoder: four stages (widths 64-128-256-512, depths 3-4-6-3, heads 1-2-4-8), each an
  overlapping patch embedding (k x k conv of stride s, padding k // 2, no bias; patch sizes
  7-3-3-3, strides 4-2-2-2, so features at 1/4 ... 1/32), its blocks and a closing LayerNorm;
- block: x + attention(norm1(x)), then x + drop_path(mix_ffn(norm2(x)));
- efficient attention: keys and values from an r x r conv of stride r (reduction ratios 8-4-2-1;
  at ratio 1 a 1x1 conv, kept) and a LayerNorm; queries at full resolution; the seed's
  ``nn.MultiheadAttention`` written out (q/k/v in-projection, out-projection, with biases), so
  that the ONNX export keeps the sequence lengths dynamic;
- Mix-FFN: 1x1 conv C->C, depthwise 3x3 conv C->4C (groups C), GELU, 1x1 conv 4C->C;
- decoder: each stage's features upsampled first (bilinear, align_corners=True, as
  ``nn.UpsamplingBilinear2d``) to 1/4, then a 1x1 conv to 256 channels; concatenated deepest
  first; fuse: 1x1 conv (no bias) -> ReLU -> BatchNorm; a 1x1 conv to the classes.

Every LayerNorm is over channels with eps 1e-5; stochastic depth (``drop_path``, 0 by default as
in the seed) drops the whole batch's Mix-FFN branch, its rate rising linearly over the blocks.
The seed returns logits at 1/4 resolution and its training loop upsamples them (bilinear,
align_corners=False) to the mask's size; ours does that in ``forward``. Trained at 224x224.

The transformers-based SegFormer of earlier versions is ``segformer_mit_b0`` (segformer_mit.py).
"""
from __future__ import annotations

import math

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseg.errors import CheckpointError, MambasegError
from mambaseg.models.base import SegModel
from mambaseg.models.registry import register_model


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class EfficientAttention(nn.Module):
    """Multi-head attention whose keys and values come from a spatially reduced map; ``qkv`` and
    ``proj`` are ``nn.MultiheadAttention``'s in- and out-projections (same layout and init)."""

    def __init__(self, channels: int, heads: int, reduction: int):
        super().__init__()
        if channels % heads:
            raise MambasegError(f"segformer: {channels} channels cannot be split into {heads} heads")
        self.heads = heads
        self.reduce = nn.Conv2d(channels, channels, kernel_size=reduction, stride=reduction)
        self.reduce_norm = ChannelNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = x.flatten(2).transpose(1, 2)                                  # (B, hw, C)
        kv = self.reduce_norm(self.reduce(x)).flatten(2).transpose(1, 2)  # (B, hw/r^2, C)
        wq, wk, wv = self.qkv.weight.chunk(3)
        bq, bk, bv = self.qkv.bias.chunk(3)

        def split(t):                                                     # (B, heads, n, C/heads)
            return t.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(F.linear(q, wq, bq)), split(F.linear(kv, wk, bk)),
                                             split(F.linear(kv, wv, bv)))
        out = self.proj(out.transpose(1, 2).reshape(b, -1, c))            # (B, hw, C)
        return out.transpose(1, 2).reshape(b, c, h, w)


class MixFFN(nn.Module):
    """1x1 conv C->C, depthwise 3x3 C->eC, GELU, 1x1 conv eC->C."""

    def __init__(self, channels: int, expansion: int):
        super().__init__()
        hidden = channels * expansion
        self.fc1 = nn.Conv2d(channels, channels, kernel_size=1)
        self.dwconv = nn.Conv2d(channels, hidden, kernel_size=3, padding=1, groups=channels)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, channels: int, heads: int, reduction: int, expansion: int, drop_path: float):
        super().__init__()
        self.norm1 = ChannelNorm(channels)
        self.attn = EfficientAttention(channels, heads, reduction)
        self.norm2 = ChannelNorm(channels)
        self.mlp = MixFFN(channels, expansion)
        self.drop_path = float(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        y = self.mlp(self.norm2(x))
        if self.training and self.drop_path > 0:  # torchvision's StochasticDepth, mode "batch"
            keep = 1.0 - self.drop_path
            y = y * (torch.rand((), device=y.device) < keep).to(y.dtype) / max(keep, 1e-12)
        return x + y


class Stage(nn.Module):
    def __init__(self, in_channels: int, channels: int, patch: int, stride: int, depth: int,
                 heads: int, reduction: int, expansion: int, drop_paths: Sequence[float]):
        super().__init__()
        self.embed = nn.Conv2d(in_channels, channels, kernel_size=patch, stride=stride,
                               padding=patch // 2, bias=False)
        self.embed_norm = ChannelNorm(channels)
        self.blocks = nn.Sequential(*[Block(channels, heads, reduction, expansion, drop_paths[i])
                                      for i in range(depth)])
        self.norm = ChannelNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.embed_norm(self.embed(x))))


def stage_lists(model: SegModel, *per_stage: Sequence[int]) -> list[list[int]]:
    """The per-stage settings (widths, depths, heads, patch sizes, strides, reduction and MLP
    ratios) as int lists of one length; sets the model's accepted size multiple to the product
    of the strides."""
    lists = [list(map(int, v)) for v in per_stage]
    if len({len(v) for v in lists}) != 1:
        raise MambasegError("segformer: widths, depths, heads, patch_sizes, strides, reduction_ratios "
                            "and mlp_ratios must all have one entry per stage")
    model.size_multiple = model.min_size = math.prod(lists[4])
    return lists


class SegFormer(SegModel):
    family = "segformer"
    size_multiple = 32
    min_size = 32
    input_size = 224

    def __init__(self, in_channels: int = 3, num_classes: int = 1,
                 widths: Sequence[int] = (64, 128, 256, 512), depths: Sequence[int] = (3, 4, 6, 3),
                 heads: Sequence[int] = (1, 2, 4, 8), patch_sizes: Sequence[int] = (7, 3, 3, 3),
                 strides: Sequence[int] = (4, 2, 2, 2), reduction_ratios: Sequence[int] = (8, 4, 2, 1),
                 mlp_ratios: Sequence[int] = (4, 4, 4, 4), decoder_channels: int = 256,
                 drop_path: float = 0.0):
        super().__init__(in_channels, num_classes)
        widths, depths, heads, patch_sizes, strides, reduction_ratios, mlp_ratios = stage_lists(
            self, widths, depths, heads, patch_sizes, strides, reduction_ratios, mlp_ratios)
        rates = torch.linspace(0, float(drop_path), sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        prev, start = in_channels, 0
        for i, width in enumerate(widths):
            self.stages.append(Stage(prev, width, patch_sizes[i], strides[i], depths[i], heads[i],
                                     reduction_ratios[i], mlp_ratios[i], rates[start:start + depths[i]]))
            prev, start = width, start + depths[i]
        d = int(decoder_channels)
        self.proj = nn.ModuleList(nn.Conv2d(w, d, kernel_size=1) for w in widths)
        self.fuse = nn.Conv2d(d * len(widths), d, kernel_size=1, bias=False)
        self.fuse_norm = nn.BatchNorm2d(d)
        self.head = nn.Conv2d(d, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        features = []
        h = x
        for stage in self.stages:
            h = stage(h)                                     # (B, C_i, H/4, W/4) ... (B, C_4, H/32, W/32)
            features.append(h)
        size = features[0].shape[-2:]
        decoded = []
        for f, proj in zip(reversed(features), reversed(self.proj)):   # deepest first, as the seed
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=True)
            decoded.append(proj(f))                          # (B, 256, H/4, W/4)
        y = self.fuse_norm(F.relu(self.fuse(torch.cat(decoded, dim=1))))
        logits = self.head(y)                                # (B, classes, H/4, W/4)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def adapt_state_dict(self, state_dict):
        """Refuse, with the way out, weights of the transformers-based SegFormer that earlier
        versions registered as ``segformer`` (now ``segformer_mit_b0``)."""
        if any(k.startswith(("net.segformer.", "net.decode_head.")) for k in state_dict):
            raise CheckpointError(
                "these weights are of the transformers-based SegFormer, which earlier versions of "
                "mambaseg called 'segformer' and which is now 'segformer_mit_b0'; 'segformer' is now "
                "the seed's hand-written network. Set \"model_name\": \"segformer_mit_b0\" in the "
                "checkpoint's config.json to load them")
        return state_dict


@register_model(family="segformer")
def segformer(in_channels: int = 3, num_classes: int = 1, **kwargs) -> SegFormer:
    """SegFormer as the seed writes it (MiT 64-128-256-512, depths 3-4-6-3); logits upsampled from 1/4."""
    return SegFormer(in_channels, num_classes, **kwargs)
