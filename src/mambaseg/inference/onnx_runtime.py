"""Segmenting with an exported model in onnxruntime, without PyTorch (``mambaseg predict --onnx``).

``mambaseg export`` (``inference.export``) writes an ONNX graph whose metadata say how to feed it;
this module reads them and runs the same pre- and post-processing as the PyTorch path
(``runner.predict_probs`` and ``predict.run_predict``), importing only numpy, Pillow/tifffile
(through ``data.io``), scipy (post-processing) and onnxruntime: never torch. It shares the
torch-free modules of the PyTorch path: ``model_info`` (sizes), ``predict_inputs`` (finding and
checking inputs, records), ``postprocess`` and ``metrics``.

    from mambaseg.inference.onnx_runtime import OnnxModel
    model = OnnxModel("model.onnx")
    probs = model.predict_probs(images)          # (N, C, H, W) uint8 -> (N, 1, H, W) float32
    mask = model.segment("slice.tif")            # (H, W) uint8 in {0, 1}

Per batch of images of one size: uint8 pixels divided by 255; resized so that the longer side is
the model's training scale ``input_size`` (aspect ratio kept; skipped when it already is, or
``rescale=False``) with antialiased bilinear weights (PIL's / torch's ``antialias=True``
algorithm, computed here in numpy); zero-padded at the bottom and right to the nearest valid size
(multiple of ``size_multiple``, at least ``min_size``); run; cropped; sigmoid; resized back to the
image's size (plain bilinear, ``align_corners=False``, as ``F.interpolate``); thresholded; then
the recommended (or requested) post-processing per patient. The resize weights are those of
PyTorch's kernels computed in another order, so probabilities differ from the PyTorch path by
float32 rounding only (about 1e-6); where no resize happens (the LGG slices are 256 x 256, the
training scale) the input reaching the graph is identical.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from mambaseg.data import io
from mambaseg.data.io import image_from_array, read_image_noted
from mambaseg.errors import DataError, MambasegError
from mambaseg.files import write_json
from mambaseg.inference import model_info
from mambaseg.inference.postprocess import PostProcess, postprocess_masks, resolve_postprocess
from mambaseg.inference.predict_inputs import (MAX_PIXELS, Item, PredictResult, check_outdir,
                                               collect_inputs, prepare_outputs, result_fields,
                                               segment_items)
from mambaseg.progress import progress_bar

#: the ``format`` metadata value of a mambaseg export (``export.FORMAT``)
FORMAT = "mambaseg-onnx"
#: the newest ``format_version`` this runner reads
FORMAT_VERSION = 1
PROGRESS_MIN = 5
_REQUIRED = ("in_channels", "size_multiple", "min_size", "input_name", "output_name")


def _import_ort():
    try:
        import onnxruntime
    except ImportError as exc:
        raise MambasegError(f"predicting with an ONNX model needs onnxruntime ({exc}); install "
                            "it with: pip install 'mambaseg[onnx]' (or pip install onnxruntime)"
                            ) from None
    return onnxruntime


def providers_for(device: str = "auto") -> list[str]:
    """onnxruntime execution providers for ``device``: "cpu", "cuda" (an error when
    onnxruntime has no CUDA provider) or "auto" (CUDA when available, else CPU)."""
    ort = _import_ort()
    have = ort.get_available_providers()
    dev = str(device).lower().split(":")[0]
    if dev == "cpu":
        return ["CPUExecutionProvider"]
    if dev == "cuda":
        if "CUDAExecutionProvider" not in have:
            raise MambasegError("--device cuda: this onnxruntime has no CUDA provider (install "
                                "onnxruntime-gpu), available: " + ", ".join(have))
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if dev == "auto":
        return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in have else []) + \
            ["CPUExecutionProvider"]
    raise MambasegError(f"unknown device {device!r}: use auto, cpu or cuda")


# ----------------------------------------------------------------------------- resizing

def aa_bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of an antialiased bilinear resize along one axis: the
    triangle filter widened by the scale when shrinking (PIL's resample, which PyTorch's
    ``interpolate(..., antialias=True)`` follows), each row normalised to sum 1."""
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    w = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        t = np.clip(1.0 - np.abs((j - center + 0.5) * inv), 0.0, None)
        total = t.sum()
        w[i, lo:hi] = t / total if total > 0 else t
    return w.astype(np.float32)


def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of a plain bilinear resize (``align_corners=False``, no
    antialiasing; ``F.interpolate(mode="bilinear")``) along one axis."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        src = max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = int(src)
        i1 = i0 + (1 if i0 < n_in - 1 else 0)
        frac = src - i0
        w[i, i0] += 1.0 - frac
        w[i, i1] += frac
    return w.astype(np.float32)


def resize(x: np.ndarray, size: tuple[int, int], antialias: bool) -> np.ndarray:
    """Resize (..., H, W) float32 ``x`` to ``size`` (separable bilinear weights)."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    fn = aa_bilinear_weights if antialias else bilinear_weights
    wh, ww = fn(h, size[0]), fn(w, size[1])
    return np.matmul(np.matmul(wh, x), ww.T).astype(np.float32, copy=False)


def sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)


# ----------------------------------------------------------------------------- the model

def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (via onnxruntime; no onnx package needed)."""
    return dict(OnnxModel(path).metadata)


class OnnxModel:
    """An exported mambaseg model in an onnxruntime session, with what its metadata say.

    Raises MambasegError when the file is missing, is not an ONNX model, or carries no mambaseg
    metadata (``"format": "mambaseg-onnx"``, written by ``mambaseg export``).
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        ort = _import_ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise MambasegError(f"{self.path}: ONNX file not found")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # idle intra-op threads sleep instead of spinning: on a 2-core machine with other work
        # (the host's load, pre/post-processing) spinning threads take the cores the graph
        # needs; 2-3x faster there for ulvm_unet_v6 (benchmarks/results/predict_onnx_cpu.txt)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.providers = providers_for(device)
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MambasegError(f"{self.path}: not a loadable ONNX model ({first})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        meta = self.metadata
        if meta.get("format") != FORMAT:
            raise MambasegError(f"{self.path} has no mambaseg metadata (metadata 'format' is "
                                f"{meta.get('format')!r}, expected {FORMAT!r}): predict --onnx "
                                "needs a file written by 'mambaseg export', which records the "
                                "input size, channels and normalisation")
        try:
            version = int(meta.get("format_version", "1"))
            if version > FORMAT_VERSION:
                raise MambasegError(f"{self.path}: format_version {version} is newer than this "
                                    f"mambaseg reads ({FORMAT_VERSION}); upgrade mambaseg")
            missing = [k for k in _REQUIRED if k not in meta]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            self.in_channels = int(meta["in_channels"])
            self.size_multiple = int(meta["size_multiple"])
            self.min_size = int(meta["min_size"])
            size = json.loads(meta.get("input_size", "null"))
            self.input_size = int(size) if size else None
            fixed = json.loads(meta.get("fixed_size", "null"))
            self.fixed_size = (int(fixed[0]), int(fixed[1])) if fixed else None
            self.threshold = float(meta.get("threshold", "0.5"))
            self.postprocess_dict = json.loads(meta.get("postprocess", "null")) or {}
            self.channels = json.loads(meta.get("channels", "null"))
            limit = json.loads(meta.get("max_pixels", "null"))
            #: the largest height x width the graph computes exactly (its selective scans
            #: are exact up to a sequence length; None: no limit)
            self.max_pixels = int(limit) if limit else None
        except MambasegError:
            raise
        except (ValueError, TypeError, IndexError) as exc:
            raise MambasegError(f"{self.path}: invalid mambaseg metadata ({exc})") from None
        self.model_name = meta.get("model_name", "onnx")
        self.input_name, self.output_name = meta["input_name"], meta["output_name"]
        inputs = {i.name: i for i in self.session.get_inputs()}
        if self.input_name not in inputs:
            raise MambasegError(f"{self.path}: the graph has no input {self.input_name!r} "
                                f"(inputs: {', '.join(inputs)})")
        shape = inputs[self.input_name].shape
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != self.in_channels):
            raise MambasegError(f"{self.path}: the graph's input has shape {shape}, not "
                                f"(batch, {self.in_channels}, height, width) as its metadata say")

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, {self.model_name}, {self.in_channels} channels)"

    @property
    def members(self) -> int:
        return int(self.metadata.get("members", "1"))

    @property
    def postprocess(self):
        """The PostProcess recorded as recommended (``postprocess``, numpy only)."""
        return PostProcess.from_dict(self.postprocess_dict)

    @property
    def device(self) -> str:
        return "onnxruntime:" + self.session.get_providers()[0]

    # -- sizes, as model_info ----------------------------------------------------------------

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest size >= (height, width) the graph accepts."""
        if self.fixed_size is not None:
            fh, fw = self.fixed_size
            if height > fh or width > fw:
                raise MambasegError(f"this export takes {fh}x{fw} inputs only; cannot take "
                                    f"{height}x{width}")
            return fh, fw
        m, low = self.size_multiple, self.min_size

        def up(n):
            return max(-(-int(n) // m) * m, low)

        return up(height), up(width)

    def work_size(self, h: int, w: int, rescale: bool = True) -> tuple[int, int]:
        """The size an h x w image is resized to before padding (``model_info.work_size``)."""
        return model_info.work_size(self, h, w, rescale)

    def forward_size(self, h: int, w: int, rescale: bool = True) -> tuple[int, int]:
        return model_info.forward_size(self, h, w, rescale)

    def check_pixels(self, height: int, width: int) -> None:
        """MambasegError when the graph would run beyond the size it computes exactly."""
        if self.max_pixels is not None and height * width > self.max_pixels:
            raise MambasegError(f"{height} x {width} pixels at the model's input exceed the "
                                f"{self.max_pixels} this export computes exactly (its "
                                "selective scans are exact up to a sequence length); resize "
                                "the image")

    # -- running ------------------------------------------------------------------------------

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The graph's output for a float32 (N, C, H, W) batch of a valid size."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        self._check_batch(x)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def _check_batch(self, x: np.ndarray) -> None:
        if x.ndim != 4:
            raise MambasegError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise MambasegError(f"{self.model_name} ({self.path.name}) takes "
                                f"{self.in_channels}-channel images, got {x.shape[1]} channels "
                                f"(input shape {tuple(x.shape)})")

    def predict_probs(self, images: np.ndarray, batch_size: int = 8,
                      rescale: bool = True) -> np.ndarray:
        """Tumour probabilities (N, 1, H, W) float32 of ``images`` (N, C, H, W), uint8 or float
        in [0, 1], any size (see the module docstring; ``runner.predict_probs``)."""
        x = np.asarray(images)
        if x.ndim != 4:
            raise MambasegError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
        self._check_batch(x)
        if x.dtype == np.uint8:
            to_float = (lambda a: a.astype(np.float32) / np.float32(255.0))
        elif np.issubdtype(x.dtype, np.floating):
            to_float = (lambda a: a.astype(np.float32, copy=False))
        else:
            raise MambasegError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
        n, _, h, w = x.shape
        sh, sw = self.work_size(h, w, rescale)
        ph, pw = self.valid_size(sh, sw)
        self.check_pixels(ph, pw)
        out = np.empty((n, 1, h, w), dtype=np.float32)
        step = max(1, int(batch_size))
        for start in range(0, n, step):
            xb = resize(to_float(x[start:start + step]), (sh, sw), antialias=True)
            if (ph, pw) != (sh, sw):
                xb = np.pad(xb, ((0, 0), (0, 0), (0, ph - sh), (0, pw - sw)))
            logits = self.logits(xb)
            if logits.shape[1] == 1:
                probs = sigmoid(logits)
            elif logits.shape[1] == 2:  # two-class output: tumour = class 1
                e = np.exp(logits - logits.max(axis=1, keepdims=True))
                probs = (e[:, 1:2] / e.sum(axis=1, keepdims=True)).astype(np.float32)
            else:
                raise MambasegError(f"{self.path.name}: output has {logits.shape[1]} channels; "
                                    "expected 1 (tumour logits) or 2 (background, tumour)")
            out[start:start + len(xb)] = resize(probs[:, :, :sh, :sw], (h, w), antialias=False)
        return out

    def segment(self, images_or_paths, threshold: float | None = None,
                return_probs: bool = False, rescale: bool = True, postprocess=None,
                batch_size: int = 8):
        """``mambaseg.segment`` with this model: uint8 (H, W) masks in {0, 1} (or float32
        probabilities with ``return_probs``) of a path or an (H, W) / (H, W, C) array (uint8,
        or float in [0, 1]), or of a list of those. ``threshold``: default the model's (0.5);
        ``postprocess`` (a PostProcess or its dict; None: none) treats the inputs as one
        patient's slices in the order given."""
        single = isinstance(images_or_paths, (str, os.PathLike, np.ndarray))
        inputs = [images_or_paths] if single else list(images_or_paths)
        if isinstance(postprocess, dict):
            postprocess = PostProcess.from_dict(postprocess)
        if return_probs and postprocess is not None and postprocess.active:
            raise MambasegError("post-processing applies to masks: not with return_probs=True")
        thr = self.threshold if threshold is None else float(threshold)
        outs = []
        for item in inputs:
            if isinstance(item, (str, os.PathLike)):
                img, _ = read_image_noted(item, channels=self.in_channels)
            else:
                arr = np.asarray(item)
                if arr.dtype.kind == "f" and arr.size and 0.0 <= arr.min() and arr.max() <= 1.0:
                    arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
                img, _ = image_from_array(arr, "<array>", self.in_channels)
            prob = self.predict_probs(img.transpose(2, 0, 1)[None], batch_size, rescale)[0, 0]
            outs.append(prob if return_probs else prob > thr)
        if not return_probs:
            outs = [m.astype(np.uint8) for m in
                    postprocess_masks(outs, ["segment"] * len(outs), postprocess)]
        return outs[0] if single else outs


# ----------------------------------------------------------------------------- predict --onnx
# The steps of ``predict.run_predict`` over an OnnxModel (``predict`` imports torch, so the
# torch-free path carries its own copy of the orchestration; the input checks, records and
# post-processing are the shared torch-free ``predict_inputs`` and ``postprocess``).

def _load_image(item: Item, model: OnnxModel, rescale: bool, max_pixels: int,
                nan_policy: str) -> tuple[np.ndarray, str | None]:
    def check(h, w):
        ph, pw = model.forward_size(h, w, rescale)
        if ph * pw > max_pixels:
            raise DataError(f"{item.path}: {pw} x {ph} pixels at the model's input, more than "
                            f"--max-pixels {max_pixels} allows")
        try:
            model.check_pixels(ph, pw)
        except MambasegError as exc:
            raise DataError(f"{item.path}: {exc}") from None

    hw = io.image_size(item.path) if hasattr(io, "image_size") else None
    if hw is not None:
        check(*hw)
    kwargs = {"nan_policy": nan_policy} if nan_policy != "error" else {}
    img, note = io.read_image_noted(item.path, channels=model.in_channels, **kwargs)
    if hw is None:
        check(*img.shape[:2])
    return img, note


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        return progress_bar(total, "predict", True, unit="image")
    except ImportError:  # tqdm not installed: no bar
        return _NoBar()


def run_predict_onnx(input: str | Path, outdir: str | Path, onnx: str | Path,
                     threshold: float = 0.5, probabilities: bool = False, overlay: bool = False,
                     device: str = "auto", batch_size: int = 8, overwrite: bool = False,
                     progress: bool = False, rescale: bool = True, postprocess="auto",
                     nan_policy: str = "error", max_pixels: int = MAX_PIXELS,
                     threads: int | None = None) -> PredictResult:
    """``mambaseg predict --onnx``: ``predict.run_predict`` with the exported model
    ``onnx`` in onnxruntime; the same checks (before anything is written), files and
    ``summary.json`` (``"checkpoint": "onnx:<file>"``, ``"device": "onnxruntime:<provider>"``)."""
    input, outdir = Path(input), Path(outdir)
    if nan_policy not in ("error", "zero"):
        raise MambasegError(f"nan_policy must be one of error, zero, got {nan_policy!r}")
    if int(max_pixels) < 1:
        raise MambasegError(f"--max-pixels must be at least 1, got {max_pixels}")
    items, warnings = collect_inputs(input)
    check_outdir(outdir, input, items)
    model = OnnxModel(onnx, device=device, threads=threads)
    pp, pp_source = resolve_postprocess(postprocess, model)
    load = {"model": model, "rescale": rescale, "max_pixels": int(max_pixels),
            "nan_policy": nan_policy}
    ready, targets = prepare_outputs(items, outdir, lambda it: _load_image(it, **load),
                                     probabilities, overlay, overwrite)

    t0 = time.perf_counter()
    res = PredictResult({}, outdir, warnings=warnings)
    bar = _bar(len(items), progress and len(items) > PROGRESS_MIN)
    segment_items(items, outdir, lambda it: _load_image(it, **load),
                  lambda imgs: _probs(model, imgs, batch_size, rescale, int(max_pixels)),
                  threshold, pp, batch_size, ready, targets, res, bar)
    res.summary = _summary(input, outdir, model, threshold, res, time.perf_counter() - t0,
                           rescale)
    res.summary.update({"postprocess": pp.to_dict(), "postprocess_description": pp.describe(),
                        "postprocess_source": pp_source,
                        "postprocess_removed_pixels": sum(r.get("removed_pixels", 0)
                                                          for r in res.written),
                        "nan_policy": nan_policy, "max_pixels": int(max_pixels)})
    write_json(outdir / "summary.json", res.summary)
    return res


def _probs(model: OnnxModel, images: list[np.ndarray], batch_size: int, rescale: bool,
           max_pixels: int) -> list[np.ndarray]:
    out: list[np.ndarray | None] = [None] * len(images)
    by_shape: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(img.shape, []).append(i)
    for rows in by_shape.values():
        batch = np.stack([images[i] for i in rows]).transpose(0, 3, 1, 2)
        ph, pw = model.forward_size(batch.shape[2], batch.shape[3], rescale)
        size = max(1, min(int(batch_size), int(max_pixels) // max(1, ph * pw)))
        probs = model.predict_probs(batch, batch_size=size, rescale=rescale)[:, 0]
        for i, prob in zip(rows, probs):
            out[i] = prob
    return out


def _summary(input, outdir, model: OnnxModel, threshold, res: PredictResult, seconds,
             rescale) -> dict:
    return {
        "input": str(input), "output": str(outdir), "model": model.model_name,
        "checkpoint": f"onnx:{model.path}", "onnx": str(model.path),
        "onnx_source": model.metadata.get("source"),
        **({"ensemble_members": model.members} if model.members > 1 else {}),
        "threshold": threshold,
        "device": model.device,
        "model_input_size": model.input_size, "rescale": bool(rescale),
        **result_fields(res, seconds),
    }
