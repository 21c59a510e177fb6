"""SegFormer on transformers' ``SegformerForSemanticSegmentation``: ``segformer_mit_b0``.

Until the seed's hand-written SegFormer took the name ``segformer`` (segformer.py), this was the
``segformer`` model; the paper-table runs in ``results/`` that name ``segformer`` were trained
with it. Same layout as the seed's (widths 64-128-256-512, depths 3-4-6-3, heads 1-2-4-8, patch
sizes 7-3-3-3, strides 4-2-2-2, reduction ratios 8-4-2-1, 256-channel all-MLP decoder, logits at
1/4 resolution), but with the library's layers: its Mix-FFN is C->rC, depthwise 3x3 rC, rC->C
(2rC^2 parameters, the seed's 1x1 C->C, depthwise C->4C, 1x1 4C->C about 5C^2), it has no
key/value projection at reduction ratio 1, its patch embeddings have a bias, its decoder projects
before upsampling (align_corners=False) and its fuse block is conv -> BatchNorm -> ReLU. With
ratio 4 everywhere it has 20,776,577 parameters (+16.8 % on the seed's 17,782,913); we keep ratio
4 in stages 1-3 and use 2 in stage 4, which gives 17,597,057 (-1.0 %). ``mlp_ratios=(4, 4, 4, 4)``
gives the library's standard MiT layout. (Despite the name, these widths and depths are not
MiT-B0's 32-64-160-256 / 2-2-2-2.)

transformers is imported only when the model is built (``pip install mambaseg[segformer]``).
Checkpoints keep transformers' parameter names; names of transformers 4.x and 5.x are converted
on loading (``adapt_state_dict``).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mambaseg.errors import MambasegError
from mambaseg.models.base import SegModel
from mambaseg.models.registry import register_model
from mambaseg.models.segformer import stage_lists

# transformers 4.x parameter names -> 5.x (from transformers' own conversion_mapping.py)
_LEGACY_TO_V5 = [
    (r"segformer\.encoder\.patch_embeddings\.(\d+)\.", r"segformer.stages.\1.patch_embeddings."),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.", r"segformer.stages.\1.blocks.\2."),
    (r"segformer\.encoder\.layer_norm\.(\d+)\.", r"segformer.stages.\1.layer_norm."),
    (r"\.attention\.self\.query\.", ".attention.q_proj."),
    (r"\.attention\.self\.key\.", ".attention.k_proj."),
    (r"\.attention\.self\.value\.", ".attention.v_proj."),
    (r"\.attention\.self\.sr\.", ".attention.sequence_reduction.sequence_reduction."),
    (r"\.attention\.self\.layer_norm\.", ".attention.sequence_reduction.layer_norm."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"\.layer_norm_1\.", ".layernorm_before."),
    (r"\.layer_norm_2\.", ".layernorm_after."),
    (r"decode_head\.linear_c\.", "decode_head.linear_projections."),
]
_V5_TO_LEGACY = [
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.", r"segformer.encoder.block.\1.\2."),
    (r"segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"decode_head\.linear_projections\.", "decode_head.linear_c."),
]


def rename_keys(state_dict: dict, to: str) -> dict:
    """Rename SegFormer parameter names to transformers' ``"v5"`` or ``"legacy"`` (4.x) layout."""
    rules = [(re.compile(p), r) for p, r in (_LEGACY_TO_V5 if to == "v5" else _V5_TO_LEGACY)]
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def _import_transformers():
    try:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation
    except ImportError as exc:
        raise MambasegError(
            "the segformer_mit_b0 model is built on Hugging Face transformers, which is not installed "
            f"({exc}); install it with: pip install 'mambaseg[segformer]' (or pip install transformers)"
        ) from None
    return SegformerConfig, SegformerForSemanticSegmentation


class SegFormerMiT(SegModel):
    family = "segformer"
    size_multiple = 32
    min_size = 32
    input_size = 224

    def __init__(self, in_channels: int = 3, num_classes: int = 1,
                 widths: Sequence[int] = (64, 128, 256, 512), depths: Sequence[int] = (3, 4, 6, 3),
                 heads: Sequence[int] = (1, 2, 4, 8), patch_sizes: Sequence[int] = (7, 3, 3, 3),
                 strides: Sequence[int] = (4, 2, 2, 2), reduction_ratios: Sequence[int] = (8, 4, 2, 1),
                 mlp_ratios: Sequence[int] = (4, 4, 4, 2), decoder_channels: int = 256,
                 drop_path: float = 0.0):
        super().__init__(in_channels, num_classes)
        SegformerConfig, SegformerForSemanticSegmentation = _import_transformers()
        widths, depths, heads, patch_sizes, strides, reduction_ratios, mlp_ratios = stage_lists(
            self, widths, depths, heads, patch_sizes, strides, reduction_ratios, mlp_ratios)
        config = SegformerConfig(
            num_channels=in_channels, num_encoder_blocks=len(widths), depths=depths,
            sr_ratios=reduction_ratios, hidden_sizes=widths, patch_sizes=patch_sizes, strides=strides,
            num_attention_heads=heads, mlp_ratios=mlp_ratios, hidden_act="gelu",
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0,
            drop_path_rate=float(drop_path), decoder_hidden_size=int(decoder_channels),
            num_labels=num_classes,
        )
        self.net = SegformerForSemanticSegmentation(config)
        self._layout = "v5" if any(".stages." in k for k in self.net.state_dict()) else "legacy"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        out = self.net(pixel_values=x)
        logits = out.logits if hasattr(out, "logits") else out[0]  # (B, classes, H/4, W/4)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def adapt_state_dict(self, state_dict):
        """Accept checkpoints written with either transformers 4.x or 5.x parameter names."""
        return rename_keys(state_dict, self._layout)


@register_model(family="segformer")
def segformer_mit_b0(in_channels: int = 3, num_classes: int = 1, **kwargs) -> SegFormerMiT:
    """SegFormer on transformers (MiT 64-128-256-512, depths 3-4-6-3); logits upsampled from 1/4."""
    return SegFormerMiT(in_channels, num_classes, **kwargs)
