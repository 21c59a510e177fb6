"""Reading images and masks, and writing PNG files.

Readers
-------
``read_image(path, channels=3)`` returns an ``(H, W, channels)`` uint8 array. The LGG images are
RGB already; other images are converted, and ``read_image_noted`` / ``image_note`` say how:

- grayscale (or grayscale + alpha) -> the gray channel repeated ``channels`` times;
- RGBA -> RGB (alpha dropped); palette -> RGB; CMYK -> RGB;
- RGB with ``channels=1`` -> luma (ITU-R 601);
- 16-bit, 32-bit or float pixels -> rescaled linearly from [min, max] to [0, 255].

Never silent garbage: float pixels that are NaN or infinite raise :class:`NonFiniteError`
(``nan_policy="zero"`` replaces them by 0 before rescaling, with a note); a multi-page TIFF or
multi-frame (animated) PNG/WebP is refused, never truncated to its first page; an image of more
than ``DECODE_LIMIT`` pixels is refused from its header, before decoding (Pillow's
``DecompressionBombError`` becomes such a DataError; its DecompressionBombWarning, below the
limit, is silenced). ``image_size`` reads only the header.
``read_image(path, strict=True)`` refuses any conversion (the dataset verifier's view).
``read_mask(path)`` returns an ``(H, W)`` uint8 array in {0, 1}; the file may hold {0, 1} or
{0, 255} (bool, or RGB with identical channels, are accepted too).

Every problem raises :class:`mambaseg.errors.DataError` naming the file.

Writers
-------
``write_png(path, array)`` writes a PNG (uint8 or bool; optional text chunks) atomically,
through :func:`mambaseg.files.atomic_path` (the package's one home for atomic writes);
``png_text(path)`` reads the text chunks back.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, PngImagePlugin

from mambaseg.errors import DataError
from mambaseg.files import atomic_path

#: suffixes (lower case) read as images
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".webp", ".jpg", ".jpeg")
#: suffixes (lower case) read as masks
MASK_SUFFIXES = (".tif", ".tiff", ".png")
_TIFF = (".tif", ".tiff")
#: what to do with NaN/Inf float pixels: raise NonFiniteError, or replace them by 0
NAN_POLICIES = ("error", "zero")
#: images with more pixels than this are refused before decoding (twice Pillow's default
#: MAX_IMAGE_PIXELS, where Pillow itself raises DecompressionBombError)
DECODE_LIMIT = 2 * 89_478_485
#: the refusal of a multi-page or multi-frame file
SINGLE_SLICE = "mambaseg reads single 2-D slices"


class NonFiniteError(DataError):
    """An image holds NaN or infinite pixels: ``count`` of its ``total`` pixels."""

    def __init__(self, path, count: int, total: int):
        self.path, self.count, self.total = path, int(count), int(total)
        super().__init__(f"{path}: {self.reason}")

    @property
    def reason(self) -> str:
        """The problem without the file name: ``non-finite pixels (NaN/Inf): N of M``."""
        return f"non-finite pixels (NaN/Inf): {self.count} of {self.total}"


def count_nonfinite(arr: np.ndarray) -> int:
    """Pixels of a decoded (H, W) or (H, W, S) array with a NaN/Inf sample (0 for integers)."""
    if arr.dtype.kind not in "fc":
        return 0
    bad = ~np.isfinite(arr)
    return int((bad.any(axis=2) if bad.ndim == 3 else bad).sum())


def _multi(path, n: int, kind: str) -> DataError:
    return DataError(f"{path}: multi-{kind} image ({n} {kind}s): {SINGLE_SLICE}")


def _check_size(path, h: int, w: int) -> None:
    if h * w > DECODE_LIMIT:
        raise DataError(f"{path}: image is {w} x {h} ({h * w / 1e6:.0f} M pixels), more than "
                        f"mambaseg decodes ({DECODE_LIMIT / 1e6:.0f} M pixels): crop or "
                        "downsample it")


def decode(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file as stored: (H, W) or (H, W, S) array, any dtype.

    TIFF goes through tifffile (Pillow for LZW/JPEG-compressed TIFF when imagecodecs is not
    installed), everything else through Pillow.
    Raises DataError naming the file if it is missing, unreadable or truncated, holds several
    pages or frames, or has more than ``DECODE_LIMIT`` pixels (checked before decoding).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    errors = []
    if path.suffix.lower() in _TIFF:
        try:
            return _decode_tiff(path)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad file
            errors.append(str(exc) or type(exc).__name__)
            # Pillow (libtiff) only for what tifffile cannot do alone: LZW/JPEG compression
            # without imagecodecs, or another format behind a .tif name
            if not ("imagecodecs" in errors[0] or "not a tiff" in errors[0].lower()):
                raise DataError(f"{path}: unreadable or truncated image file ({errors[0]})") \
                    from None
    try:
        return _decode_pillow(path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        errors.append(str(exc) or type(exc).__name__)
    raise DataError(f"{path}: unreadable or truncated image file ({errors[-1]})")


def _decode_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if len(tif.pages) > 1:  # reduced-resolution pages (thumbnails) are not slices
            n = sum(1 for p in tif.pages if not getattr(p, "is_reduced", False))
            if n > 1:
                raise _multi(path, n, "page")
        _check_size(path, int(page.imagelength), int(page.imagewidth))
        arr = page.asarray()
        axes = page.axes
    if arr.ndim == 3 and axes.startswith("S"):  # planar configuration: samples first
        arr = np.moveaxis(arr, 0, -1)
    return np.ascontiguousarray(arr)


#: serialises the (header-only) Image.open calls: warnings.catch_warnings is not thread-safe
_PILLOW_LOCK = threading.Lock()


def _pillow_header(path: Path):
    """``Image.open(path)`` (lazy: only the header is read). Pillow's DecompressionBombWarning
    is silenced (``DECODE_LIMIT`` is checked instead) and its DecompressionBombError becomes a
    DataError naming the file."""
    with _PILLOW_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombError as exc:
            raise DataError(f"{path}: image has more pixels than mambaseg decodes "
                            f"({DECODE_LIMIT / 1e6:.0f} M pixels): crop or downsample it "
                            f"(Pillow: {exc})") from None


def _open_pillow(path: Path):
    """``_pillow_header(path)`` with the size limit and single-frame check applied."""
    im = _pillow_header(path)
    try:
        _check_size(path, im.size[1], im.size[0])
        n = int(getattr(im, "n_frames", 1) or 1)
        if n > 1:
            raise _multi(path, n, "page" if im.format == "TIFF" else "frame")
    except BaseException:
        im.close()
        raise
    return im


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(height, width)`` of an image from its header alone (nothing decoded); None when the
    header cannot be read (``decode`` then says why)."""
    path = Path(path)
    if path.suffix.lower() in _TIFF:
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        except Exception:  # noqa: BLE001 - decode says why (or reads it another way)
            return None
    try:
        with _pillow_header(path) as im:
            return int(im.size[1]), int(im.size[0])
    except Exception:  # noqa: BLE001
        return None


def _decode_pillow(path: Path) -> np.ndarray:
    with _open_pillow(path) as im:
        im.load()
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode == "CMYK" or im.mode.startswith("YCbCr") or im.mode == "LAB":
            im = im.convert("RGB")
        return np.array(im)


def _to_uint8(arr: np.ndarray, path, nan_policy: str = "error") -> tuple[np.ndarray, str | None]:
    """Convert any pixel type to uint8; say so when values were rescaled.

    NaN/Inf pixels raise NonFiniteError, or (``nan_policy="zero"``) are set to 0 first, so that
    the rescaling range comes from finite values only.
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if arr.dtype == np.uint8:
        return arr, None
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255, "boolean pixels mapped to 0/255"
    notes = []
    bad = count_nonfinite(arr)
    if bad:
        if nan_policy != "zero":
            raise NonFiniteError(path, bad, arr.shape[0] * arr.shape[1])
        arr = np.where(np.isfinite(arr), arr, 0).astype(arr.dtype, copy=False)
        notes.append(f"{bad} non-finite pixel(s) (NaN/Inf) replaced by 0")
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr.astype(np.float64) - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros(arr.shape)
    notes.append(f"{arr.dtype} pixels rescaled from [{lo:g}, {hi:g}] to [0, 255]")
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "; ".join(notes)


def image_from_array(arr: np.ndarray, path: str | os.PathLike, channels: int = 3,
                     strict: bool = False, nan_policy: str = "error"
                     ) -> tuple[np.ndarray, str | None]:
    """Turn a decoded array into (H, W, channels) uint8; return it with a conversion note.

    ``strict=True`` raises DataError instead of converting anything. NaN/Inf pixels raise
    NonFiniteError unless ``nan_policy="zero"`` (then they become 0, with a note).
    """
    samples = 1 if arr.ndim == 2 else arr.shape[2] if arr.ndim == 3 else None
    if samples is None or arr.ndim == 3 and samples > 4:
        raise DataError(f"{path}: unexpected image shape {tuple(arr.shape)} "
                        f"(expected height x width x {channels})")
    if strict:
        if samples != channels:
            raise DataError(f"{path}: image has {samples} channel(s), expected {channels}")
        if arr.dtype != np.uint8:
            raise DataError(f"{path}: image pixels are {arr.dtype}, expected uint8")
        return arr.reshape(arr.shape[0], arr.shape[1], channels), None
    arr, note = _to_uint8(arr, path, nan_policy)
    notes = [note] if note else []
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if samples in (2, 4):  # gray+alpha or RGBA: drop alpha
        arr = arr[:, :, : samples - 1]
        notes.append("alpha channel dropped")
        samples -= 1
    if samples == channels:
        out = arr
    elif samples == 1:
        out = np.repeat(arr, channels, axis=2)
        notes.append(f"grayscale repeated to {channels} channels")
    elif samples == 3 and channels == 1:
        luma = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        out = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
        notes.append("RGB converted to grayscale")
    else:
        raise DataError(f"{path}: image has {samples} channels, cannot make {channels}")
    return np.ascontiguousarray(out), "; ".join(notes) or None


def mask_from_array(arr: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Turn a decoded mask into (H, W) uint8 in {0, 1}; DataError for any other content."""
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        colour = arr[:, :, :3]
        if not (np.array_equal(colour[:, :, 0], colour[:, :, 1])
                and np.array_equal(colour[:, :, 0], colour[:, :, 2])):
            raise DataError(f"{path}: mask has {arr.shape[2]} channels that differ, expected 1")
        arr = colour[:, :, 0]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    elif arr.ndim != 2:
        raise DataError(f"{path}: mask has shape {tuple(arr.shape)}, expected height x width "
                        "with one channel")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind not in "ui":
        raise DataError(f"{path}: mask pixels are {arr.dtype}, expected uint8 0/1 or 0/255")
    hi = int(arr.max()) if arr.size else 0
    if hi <= 1:
        return arr.astype(np.uint8, copy=False)
    nonzero = arr != 0
    if hi == 255 and bool(np.all(arr[nonzero] == 255)):
        return nonzero.view(np.uint8)
    values = np.unique(arr)
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    raise DataError(f"{path}: mask values {{{shown}}} are not {{0, 1}} or {{0, 255}}")


def read_image_noted(path: str | os.PathLike, channels: int = 3, strict: bool = False,
                     nan_policy: str = "error") -> tuple[np.ndarray, str | None]:
    """Read an image as (H, W, channels) uint8 and say what was converted (None: nothing)."""
    return image_from_array(decode(path), path, channels, strict, nan_policy)


def read_image(path: str | os.PathLike, channels: int = 3, strict: bool = False,
               nan_policy: str = "error") -> np.ndarray:
    """Read an image as an (H, W, channels) uint8 array (see the module docstring)."""
    return read_image_noted(path, channels, strict, nan_policy)[0]


def image_note(path: str | os.PathLike, channels: int = 3) -> str | None:
    """Describe the conversion ``read_image(path, channels)`` applies, or None if none."""
    return read_image_noted(path, channels)[1]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask as an (H, W) uint8 array in {0, 1}; the file may hold 0/1 or 0/255."""
    return mask_from_array(decode(path), path)


def write_png(path: str | os.PathLike, array, text: dict[str, str] | None = None) -> Path:
    """Write a uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array (or bool mask: 0/255) as PNG.

    Accepts numpy arrays or CPU tensors; the write is atomic. ``text``: PNG text chunks (before
    the pixels, so ``png_text`` reads them without decoding). Returns the path.
    """
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise ValueError(f"write_png needs uint8 or bool pixels, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or arr.ndim == 3 and arr.shape[2] not in (3, 4):
        raise ValueError(f"write_png needs (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    path = Path(path)
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG", pnginfo=info)
    return path


def png_text(path: str | os.PathLike) -> dict[str, str]:
    """The text chunks of a PNG file's header ({} for other files or unreadable ones)."""
    if Path(path).suffix.lower() != ".png":
        return {}
    try:
        with _pillow_header(Path(path)) as im:
            return {k: v for k, v in im.info.items() if isinstance(v, str)}
    except Exception:  # noqa: BLE001
        return {}
