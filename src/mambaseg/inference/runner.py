"""Running a segmentation model over images: tumour probabilities at the model's training scale.

Used by ``evaluate``, ``predict`` and ``volumes``. Images are first brought to the scale the
model was trained at: when the longer side differs from ``model.input_size`` (256 for the LGG
slices; 224 for SegFormer at the paper's preset; restored from a checkpoint's
``preprocessing``), the image is resized, aspect ratio kept, so that its longer side is
``input_size`` (bilinear, antialiased, as the trainer resized its data), and the probabilities
are resized back. Then the image is zero-padded at the bottom and right up to the nearest size
the model accepts (``model.valid_size``; a multiple of 32 for models that do not say) and the
probabilities are cropped back. Zero is the MRI background, so zero padding adds only more
background; reflect padding would mirror tissue (and tumour) into the border.
``rescale=False`` skips the resize. The sizes are those of ``model_info``.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from mambaseg.device import resolve_device
from mambaseg.errors import MambasegError
from mambaseg.inference.model_info import valid_size, work_size
from mambaseg.inference.predict_inputs import MAX_PIXELS, batch_limit
from mambaseg.models.base import prefers_channels_last


#: images per forward pass on the CPU, whatever the batch size: larger batches overflow the
#: caches and run slower per slice (idle 2-core CPU, 256x256: 25-35 % slower at 8 than at 2 for
#: mambaseg_s, unet and umamba_bot; resnet18 and ulvm_unet run alike at both; ulvm_unet_v6 8 %
#: faster at 8; benchmarks/predict.py --batches 2 8)
CPU_BATCH = 2


def to_float(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (N,C,H,W) -> float32 in [0, 1]; float input is taken as already in [0, 1]."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.is_floating_point():
        raise MambasegError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    return x.float()


def _autocast(device: torch.device, amp: bool):
    """bfloat16 autocast (``--amp bf16``, as training uses) when ``amp``, else nothing."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_probs(logits: torch.Tensor) -> torch.Tensor:
    """Tumour probabilities (B, 1, H, W) float32 of logits: the sigmoid of one channel, or
    class 1 of a two-class softmax."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)[:, 1:2]  # two-class output: tumour = class 1


def predict_probs(model, images: torch.Tensor | np.ndarray, batch_size: int = 16,
                  device: str | torch.device = "cpu", amp: bool = False,
                  rescale: bool = True) -> torch.Tensor:
    """Tumour probabilities ``(N, 1, H, W)`` float32 on CPU for ``images`` (N, C, H, W).

    ``images`` are uint8 or float in [0, 1] of any size. Each batch is moved with the model to
    ``device``, resized to ``work_size(model, H, W, rescale)`` (the model's training scale; see
    the module docstring), zero-padded (bottom, right) to the nearest valid size, checked with
    ``model.check_input`` when the model has one (a MambasegError names the nearest valid size),
    run under ``torch.inference_mode`` in eval mode (restored afterwards), cropped and resized
    back to H x W. Probabilities are the sigmoid of the logits. ``batch_size`` images go
    through the model at once, at most :data:`CPU_BATCH` on the CPU.
    """
    x = torch.as_tensor(images)
    if x.dim() != 4:
        raise MambasegError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    dev = resolve_device(device)
    first = next(model.parameters(), None)
    if first is not None and first.device != dev:
        model.to(dev)
    fmt = torch.channels_last if prefers_channels_last(model) else torch.contiguous_format
    if fmt is torch.channels_last and any(  # converted once: the same function, faster
            p.dim() == 4 and not p.is_contiguous(memory_format=fmt) for p in model.parameters()):
        model.to(memory_format=fmt)
    sh, sw = work_size(model, h, w, rescale)
    ph, pw = valid_size(model, sh, sw)
    if ph < sh or pw < sw:
        raise MambasegError(f"model cannot take {sh}x{sw} inputs (largest valid size {ph}x{pw})")
    out = torch.empty((n, 1, h, w), dtype=torch.float32)
    was_training = model.training
    model.eval()
    check = getattr(model, "check_input", None)
    step = max(1, int(batch_size))
    if dev.type == "cpu":
        step = min(step, CPU_BATCH)
    try:
        with torch.inference_mode():
            for start in range(0, n, step):
                xb = to_float(x[start:start + step]).to(dev)
                if (sh, sw) != (h, w):
                    xb = F.interpolate(xb, size=(sh, sw), mode="bilinear", align_corners=False,
                                       antialias=True)
                if (ph, pw) != (sh, sw):
                    xb = F.pad(xb, (0, pw - sw, 0, ph - sh))
                if callable(check) and start == 0:
                    check(xb)
                xb = xb.contiguous(memory_format=fmt)
                with _autocast(dev, amp):
                    logits = model(xb)
                if isinstance(logits, (tuple, list)):  # deep supervision: main output first
                    logits = logits[0]
                probs = to_probs(logits)[:, :, :sh, :sw]
                if (sh, sw) != (h, w):
                    probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
                out[start:start + len(xb)] = probs.cpu()
    finally:
        model.train(was_training)
    return out


def image_probs(net, images: list[np.ndarray], batch_size: int, device, amp: bool = False,
                rescale: bool = True, max_pixels: int = MAX_PIXELS) -> list[np.ndarray]:
    """Probabilities (H, W) of each (H, W, C) image; images of one size run in batches (of at
    most ``max_pixels`` pixels at the model's input together, ``predict_inputs.batch_limit``)."""
    out: list[np.ndarray | None] = [None] * len(images)
    by_shape: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(img.shape, []).append(i)
    for rows in by_shape.values():
        batch = torch.from_numpy(np.stack([images[i] for i in rows])).permute(0, 3, 1, 2)
        size = batch_limit(net, images[rows[0]].shape, batch_size, rescale, max_pixels)
        probs = predict_probs(net, batch, batch_size=size, device=device, amp=amp,
                              rescale=rescale)[:, 0].numpy()
        for i, prob in zip(rows, probs):
            out[i] = prob
    return out
