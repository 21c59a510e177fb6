"""Batch augmentation on any device: flips, rotation, scaling and intensity jitter, vectorised.

One affine warp per batch (``F.affine_grid`` + ``F.grid_sample``) applies flips, rotation and
scaling together: bilinear for images, nearest for masks (so masks stay binary).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float32)
    return (lo + (hi - lo) * u).to(device)


@torch.no_grad()
def augment_batch(images: torch.Tensor, masks: torch.Tensor,
                  generator: torch.Generator | None = None, *, flip: bool = True,
                  rotate: float = 15.0, scale: tuple[float, float] = (0.9, 1.1),
                  brightness: float = 0.1, contrast: float = 0.1
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly augment a batch; returns new (images, masks) on the same device.

    ``images``: float (B, C, H, W) in [0, 1]; ``masks``: (B, 1, H, W) in {0, 1} (any dtype; it is
    returned in its own dtype). Per sample: horizontal and vertical flips (p = 0.5 each, if
    ``flip``), a rotation in ±``rotate`` degrees and a zoom in ``scale`` (one warp), then
    brightness (± ``brightness``) and contrast (× 1 ± ``contrast``) jitter, clamped to [0, 1].
    The same ``generator`` state gives the same result; the generator may live on the CPU for
    CUDA tensors.
    """
    if images.ndim != 4 or masks.ndim != 4 or masks.shape[1] != 1 \
            or images.shape[0] != masks.shape[0] or images.shape[2:] != masks.shape[2:]:
        raise ValueError(f"augment_batch needs images (B,C,H,W) and masks (B,1,H,W) of one size, "
                         f"got {tuple(images.shape)} and {tuple(masks.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"augment_batch needs float images in [0, 1], got {images.dtype}")
    b, _, h, w = images.shape
    dev = images.device
    # draw every random number up front, in a fixed order (determinism)
    fx = torch.where(_uniform(b, 0, 1, generator, dev) < 0.5, -1.0, 1.0) if flip \
        else torch.ones(b, device=dev)
    fy = torch.where(_uniform(b, 0, 1, generator, dev) < 0.5, -1.0, 1.0) if flip \
        else torch.ones(b, device=dev)
    angle = _uniform(b, -rotate, rotate, generator, dev) * (math.pi / 180.0)
    zoom = _uniform(b, scale[0], scale[1], generator, dev)
    shift = _uniform(b, -brightness, brightness, generator, dev)
    gain = _uniform(b, 1.0 - contrast, 1.0 + contrast, generator, dev)

    # output -> input sampling matrix in pixel units, then normalised for a non-square image:
    # theta = D^-1 R(angle) diag(fx, fy) / zoom D, with D = diag(w, h)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(b, 2, 3, device=dev, dtype=torch.float32)
    theta[:, 0, 0] = cos * fx
    theta[:, 0, 1] = -sin * fy * (h / w)
    theta[:, 1, 0] = sin * fx * (w / h)
    theta[:, 1, 1] = cos * fy
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    out = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    mask_f = masks if masks.is_floating_point() else masks.to(images.dtype)
    warped = F.grid_sample(mask_f, grid.to(mask_f.dtype), mode="nearest", padding_mode="zeros",
                           align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    view = (b, 1, 1, 1)
    out = ((out - mean) * gain.view(view).to(out.dtype) + mean
           + shift.view(view).to(out.dtype)).clamp_(0.0, 1.0)
    return out, warped.to(masks.dtype)
