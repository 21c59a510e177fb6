"""``SegModel``: the base class every registered model derives from.

A model takes float images in [0, 1] shaped (B, in_channels, H, W) and returns logits shaped
(B, num_classes, H, W). It declares which input sizes it accepts: height and width must be
multiples of ``size_multiple`` and at least ``min_size``. ``forward`` starts with
``self.check_input(x)``, which raises a ``MambasegError`` naming the nearest valid size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mambaseg.errors import MambasegError
from mambaseg.models.checkpoint import save_pretrained
from mambaseg.models.registry import count_parameters

#: channel order of the LGG (kaggle_3m) slices the models are trained on
CHANNELS = ("pre-contrast", "FLAIR", "post-contrast")
#: families that run faster in the channels_last memory format (training on CUDA: unet 2.1x,
#: mambaseg_s 2.3x on an H100; inference on a 2-core CPU: 13-35 % less time; UltraLight slower)
CHANNELS_LAST_FAMILIES = ("unet", "resnet", "mambaseg")


def prefers_channels_last(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or every member of an ensemble) belongs to
    :data:`CHANNELS_LAST_FAMILIES`."""
    members = getattr(model, "members", None)
    if members is not None:
        return len(members) > 0 and all(prefers_channels_last(m) for m in members)
    return getattr(model, "family", None) in CHANNELS_LAST_FAMILIES


class SegModel(nn.Module):
    """Base class: records how the model was created and which inputs it accepts."""

    #: family shown by ``mambaseg models`` (set by each family's class)
    family: str = "other"
    #: height and width must be multiples of this
    size_multiple: int = 32
    #: ... and at least this (defaults to ``size_multiple``)
    min_size: int | None = None
    #: the input size the model is trained and evaluated at
    input_size: int = 256

    def __init__(self, in_channels: int = 3, num_classes: int = 1):
        super().__init__()
        if int(in_channels) < 1 or int(num_classes) < 1:
            raise MambasegError(f"in_channels and num_classes must be at least 1, "
                                f"got in_channels={in_channels}, num_classes={num_classes}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        # set by create_model(); kept here so a model built by hand still describes itself
        self.model_name: str = type(self).__name__
        self.model_kwargs: dict[str, Any] = {}

    # -- input sizes --------------------------------------------------------------------------

    @property
    def smallest_size(self) -> int:
        """The smallest accepted height / width."""
        low = self.min_size or self.size_multiple
        return -(-low // self.size_multiple) * self.size_multiple

    def _round(self, n: int, up: bool) -> int:
        m = self.size_multiple
        n = -(-n // m) * m if up else (n // m) * m
        return max(n, self.smallest_size)

    def is_valid_size(self, height: int, width: int) -> bool:
        return all(n >= self.smallest_size and n % self.size_multiple == 0 for n in (height, width))

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        """The nearest accepted (H, W) not smaller than (height, width): pad an image to this size
        (bottom/right) to run the model on it, then crop the logits back."""
        return self._round(int(height), True), self._round(int(width), True)

    def _nearest_size(self, height: int, width: int) -> tuple[int, int]:
        def nearest(n):
            low, high = self._round(n, False), self._round(n, True)
            return low if n - low < high - n else high
        return nearest(height), nearest(width)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``MambasegError`` unless ``x`` is a (B, in_channels, H, W) tensor of a valid size."""
        name = self.model_name
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise MambasegError(f"{name} expects a batch of images shaped (B, {self.in_channels}, H, W), "
                                f"got {shape}")
        if x.shape[1] != self.in_channels:
            raise MambasegError(f"{name} was built for {self.in_channels}-channel images, got "
                                f"{x.shape[1]} channels (input shape {tuple(x.shape)})")
        height, width = int(x.shape[-2]), int(x.shape[-1])
        if not self.is_valid_size(height, width):
            near_h, near_w = self._nearest_size(height, width)
            pad_h, pad_w = self.valid_size(height, width)
            msg = (f"{name} cannot take a {height}x{width} input: height and width must be multiples "
                   f"of {self.size_multiple} and at least {self.smallest_size}; the nearest valid size "
                   f"is {near_h}x{near_w}")
            if (near_h, near_w) != (pad_h, pad_w):
                msg += f" (or pad to {pad_h}x{pad_w})"
            raise MambasegError(msg + f"; the model is trained at {self.input_size}x{self.input_size}")

    # -- description --------------------------------------------------------------------------

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How inputs must be prepared (stored in checkpoints' config.json)."""
        return {
            "input_size": self.input_size,
            "size_multiple": self.size_multiple,
            "min_size": self.smallest_size,
            "scale": "divide by 255",
            "value_range": [0.0, 1.0],
            "channels": list(CHANNELS) if self.in_channels == 3 else None,
        }

    def num_parameters(self) -> int:
        return count_parameters(self)

    # -- checkpoints --------------------------------------------------------------------------

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook for loading: rename keys of older layouts to this model's (default: unchanged)."""
        return state_dict

    def save_pretrained(self, directory: str | Path, metadata: dict | None = None,
                        dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created if needed),
        atomically. ``metadata`` (JSON-serialisable, e.g. ``{"metrics": {"test": {"dice": ...}}}``)
        is stored in the config; ``dtype`` (e.g. ``torch.float16``) casts floating-point weights."""
        return save_pretrained(self, directory, metadata=metadata, dtype=dtype)
