"""A PNG montage to check a segmented volume at a glance: the axial slices with tumour (at most
``MAX_TILES``, evenly spread), each with the mask's outline in red, the slice number below."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mambaseg.data.io import write_png
from mambaseg.inference.predict_inputs import output_tag, overlay_image

#: most slices shown in one montage
MAX_TILES = 24
#: tiles per row
COLUMNS = 6
#: height of the caption strips (pixels)
CAPTION = 16


def pick_slices(masks: np.ndarray, limit: int = MAX_TILES) -> list[int]:
    """Indices of the slices of ``masks`` (N, H, W) with tumour, at most ``limit`` of them
    evenly spread; the middle slice when none has any."""
    found = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    if not found.size:
        return [len(masks) // 2] if len(masks) else []
    if found.size <= limit:
        return found.tolist()
    return found[np.linspace(0, found.size - 1, limit).round().astype(int)].tolist()


def montage(images: np.ndarray, masks: np.ndarray, labels: list[str], title: str) -> np.ndarray:
    """RGB uint8 montage of the slices ``pick_slices`` chooses: ``images`` (N, H, W) uint8,
    ``masks`` (N, H, W), ``labels`` one caption per slice, ``title`` above them all."""
    rows_idx = pick_slices(masks)
    h, w = images.shape[1:3]
    cols = max(1, min(COLUMNS, len(rows_idx)))
    nrows = -(-len(rows_idx) // cols)
    canvas = Image.new("RGB", (cols * w, CAPTION + nrows * (h + CAPTION)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill=(255, 255, 255))
    for n, i in enumerate(rows_idx):
        x, y = (n % cols) * w, CAPTION + (n // cols) * (h + CAPTION)
        tile = overlay_image(images[i], masks[i], alpha=0.0)  # outline only: tissue stays visible
        canvas.paste(Image.fromarray(tile), (x, y))
        draw.text((x + 4, y + h + 2), labels[i], fill=(255, 255, 0))
    return np.asarray(canvas)


def write_montage(path: str | Path, images: np.ndarray, masks: np.ndarray, labels: list[str],
                  title: str) -> Path:
    """``montage`` written as a PNG (atomically, tagged as predict's output)."""
    return write_png(path, montage(images, masks, labels, title), text=output_tag())
