"""What inference reads off a model: its name, input channels, training scale and the sizes it
accepts. Duck-typed (a SegModel, an Ensemble or an ``onnx_runtime.OnnxModel``) and torch-free,
so ``predict --onnx`` shares it.

Images are brought to the scale the model was trained at (``work_size``: the longer side
becomes ``model.input_size``, aspect ratio kept), then zero-padded at the bottom and right to
the nearest size the model accepts (``valid_size``: ``model.valid_size``, else a multiple of
:data:`DEFAULT_MULTIPLE`).
"""
from __future__ import annotations

import contextlib
import math

#: size multiple assumed for models without ``valid_size``
DEFAULT_MULTIPLE = 32


def model_name(model) -> str:
    """The registry name of a model (``model.model_name``), else its class name."""
    for get in (lambda: model.model_name, lambda: model.name):
        with contextlib.suppress(Exception):
            value = get()
            if isinstance(value, str) and value:
                return value
    return type(model).__name__


def in_channels(model, default: int = 3) -> int:
    """Input channels the model expects (``model.in_channels``; default 3)."""
    with contextlib.suppress(Exception):
        return int(model.in_channels)
    return default


def valid_size(model, h: int, w: int) -> tuple[int, int]:
    """The smallest size >= (h, w) the model accepts (``model.valid_size`` if it has one)."""
    fn = getattr(model, "valid_size", None)
    if callable(fn):
        out = fn(h, w)
        if isinstance(out, int):
            return out, out
        return int(out[0]), int(out[1])
    m = DEFAULT_MULTIPLE
    return math.ceil(h / m) * m, math.ceil(w / m) * m


def work_size(model, h: int, w: int, rescale: bool = True) -> tuple[int, int]:
    """The size an ``h`` x ``w`` image is resized to before padding: longer side =
    ``model.input_size`` (aspect ratio kept), or (h, w) when it already is, when the model
    declares no input size, or when ``rescale`` is False."""
    size = getattr(model, "input_size", None) if rescale else None
    if not size or max(h, w) == int(size):
        return h, w
    scale = int(size) / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def forward_size(model, h: int, w: int, rescale: bool = True) -> tuple[int, int]:
    """The size (height, width) an h x w image runs through the model at: resized (unless
    ``rescale`` is False) and padded."""
    return valid_size(model, *work_size(model, h, w, rescale))
