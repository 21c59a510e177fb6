"""Running a segmentation model over images: devices, model loading, padding, probabilities.

Used by ``evaluate`` and ``predict``. Images are first brought to the scale the model was trained
at: when the longer side differs from ``model.input_size`` (256 for the LGG slices; 224 for
SegFormer at the paper's preset; restored from a checkpoint's ``preprocessing``), the image is
resized, aspect ratio kept, so that its longer side is ``input_size`` (bilinear, antialiased, as
the trainer resized its data), and the probabilities are resized back. Then the image is
zero-padded at the bottom and right up to the nearest size the model accepts
(``model.valid_size``; a multiple of 32 for models that do not say) and the probabilities are
cropped back. Zero is the MRI background, so zero padding adds only more background; reflect
padding would mirror tissue (and tumour) into the border. ``rescale=False`` skips the resize.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mambaseg.engine.device import resolve_device  # noqa: F401  (part of this module's API)
from mambaseg.errors import CheckpointError, MambasegError

#: size multiple assumed for models without ``valid_size``
DEFAULT_MULTIPLE = 32


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Load a model saved with ``save_pretrained`` from the directory ``path``, in eval mode; an
    ensemble folder (``ensemble.json``, see ``engine.ensemble``) loads as an ``Ensemble``.

    Any failure (missing directory, truncated weights, weights of another architecture) is
    raised as CheckpointError naming the directory.
    """
    from mambaseg.engine.ensemble import is_ensemble_dir, load_ensemble
    from mambaseg.models import from_pretrained

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint directory does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path}: a checkpoint is a directory (config.json + "
                              "model.safetensors), not a file")
    if is_ensemble_dir(path):
        return load_ensemble(path, device)
    try:
        model = from_pretrained(path)
    except MambasegError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt checkpoint can fail in many ways
        raise CheckpointError(f"{path}: cannot load checkpoint: {exc}") from None
    return model.to(device).eval()


def resolve_run_dir(path: str | Path) -> Path:
    """A training run folder (``mambaseg train``'s RUN_DIR: its ``config.json`` and ``best/``,
    ``last/``) -> the checkpoint its protocol evaluates (the run's ``checkpoint`` setting:
    ``best/`` unless the run chose ``last``; the other one if only that exists). Any other path
    is returned unchanged (as a Path)."""
    import json

    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return path
    if not isinstance(cfg, dict) or "model_name" in cfg:    # a checkpoint's own config
        return path
    chosen = "last" if cfg.get("checkpoint") == "last" else "best"
    for name in (chosen, "best" if chosen == "last" else "last"):
        if (path / name).is_dir():
            return path / name
    return path


def checkpoint_list(paths) -> list[Path]:
    """``paths`` (one path or a sequence of them) as a list of Paths, training run folders
    replaced by their checkpoint (``resolve_run_dir``); MambasegError when it is empty or names
    a folder twice."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise MambasegError("no checkpoint directory given")
    out = [resolve_run_dir(p) for p in items]
    seen: set[Path] = set()
    for p in out:
        key = p.resolve()
        if key in seen:
            raise MambasegError(f"checkpoint {p} is given twice")
        seen.add(key)
    return out


def load_models(paths, device: str | torch.device = "cpu"):
    """One checkpoint directory (or ensemble folder): its model, as ``load_checkpoint``.
    Several: an ``Ensemble`` averaging their probabilities (ensemble folders among them
    contribute their members), checked for equal input channels and input size."""
    from mambaseg.engine.ensemble import Ensemble

    paths = checkpoint_list(paths)
    if len(paths) == 1:
        return load_checkpoint(paths[0], device)
    models, sources = [], []
    for p in paths:
        net = load_checkpoint(p, "cpu")
        members = list(net.members) if isinstance(net, Ensemble) else [net]
        models.extend(members)
        sources.extend(net.sources if isinstance(net, Ensemble) else [str(p)])
    return Ensemble(models, sources).to(device).eval()


def recommended_postprocess(model):
    """The post-processing a loaded checkpoint recommends: an ensemble folder's ``postprocess``
    entry, else ``metadata.postprocess`` of the checkpoint's config.json; None when it records
    none (an ensemble assembled from several folders recommends none)."""
    from mambaseg.engine.postprocess import PostProcess

    pp = getattr(model, "postprocess", None)
    if isinstance(pp, PostProcess):
        return pp
    cfg = getattr(model, "checkpoint_config", None)
    entry = ((cfg.get("metadata") or {}).get("postprocess")) if isinstance(cfg, dict) else None
    if not entry:
        return None
    try:
        return PostProcess.from_dict(entry)
    except (MambasegError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's metadata.postprocess is invalid: {exc}") from None


def resolve_postprocess(setting, model):
    """``(PostProcess, source)`` for a ``postprocess`` argument of evaluate / predict.

    ``"auto"``: the checkpoint's recommendation (source ``"checkpoint"``), else none
    (``"none"``); None: none; a PostProcess or its dict: as given (``"options"``).
    """
    from mambaseg.engine.postprocess import PostProcess

    if isinstance(setting, str):
        if setting != "auto":
            raise MambasegError(f"postprocess must be 'auto', None or a PostProcess, "
                                f"got {setting!r}")
        rec = recommended_postprocess(model)
        return (rec, "checkpoint") if rec is not None and rec.active else (PostProcess(), "none")
    if setting is None:
        return PostProcess(), "none"
    if isinstance(setting, dict):
        setting = PostProcess.from_dict(setting)
    return setting, "options"


def load_shipped_model(name: str | None = None, device: str | torch.device = "cpu"):
    """Load the shipped weights ``name`` (a model name, or a shipped ensemble such as
    ``ulvm_unet_v6_cv5``, which loads as an ``Ensemble``); None: the default shipped model
    (``models.pretrained.default_shipped``: the one marked default, else the best
    cross-validated, else the best tested).

    Raises MambasegError for an unknown model name (listing the valid ones) or when no weights
    are shipped for it (saying to pass --checkpoint).
    """
    from mambaseg.models import list_models
    from mambaseg.models import pretrained

    shipped = list(pretrained.shipped_models())
    if name is None:
        if not shipped:
            raise MambasegError("no pretrained weights are shipped with this installation; "
                                "pass --checkpoint DIR (a directory written by 'mambaseg train')")
        name = pretrained.default_shipped() or shipped[0]
    else:
        valid = list(list_models())
        if name not in valid and name not in shipped:
            extra = [s for s in shipped if s not in valid]
            raise MambasegError(f"unknown model {name!r}; valid names: {', '.join(valid)}"
                                + (f" (shipped ensembles: {', '.join(extra)})" if extra else ""))
        if name not in shipped:
            have = ", ".join(shipped) if shipped else "none"
            raise MambasegError(f"no pretrained weights are shipped for {name!r} (shipped: "
                                f"{have}); pass --checkpoint DIR to use trained weights")
    try:
        model = pretrained.load_shipped(name)
    except MambasegError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged package data
        raise CheckpointError(f"shipped weights of {name!r} cannot be loaded: {exc}") from None
    return model.to(device).eval()


def model_name(model) -> str:
    """The registry name of a model (``model.model_name``), else its class name."""
    for get in (lambda: model.model_name, lambda: model.name):
        with contextlib.suppress(Exception):
            value = get()
            if isinstance(value, str) and value:
                return value
    return type(model).__name__


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return int(sum(p.numel() for p in model.parameters()))


def in_channels(model, default: int = 3) -> int:
    """Input channels the model expects (``model.in_channels``; default 3)."""
    for get in (lambda: model.in_channels,):
        with contextlib.suppress(Exception):
            return int(get())
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


def _to_probs(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)[:, 1:2]  # two-class output: tumour = class 1


def work_size(model, h: int, w: int, rescale: bool = True) -> tuple[int, int]:
    """The size an ``h`` x ``w`` image is resized to before padding: longer side =
    ``model.input_size`` (aspect ratio kept), or (h, w) when it already is, when the model
    declares no input size, or when ``rescale`` is False."""
    size = getattr(model, "input_size", None) if rescale else None
    if not size or max(h, w) == int(size):
        return h, w
    scale = int(size) / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def predict_probs(model, images: torch.Tensor | np.ndarray, batch_size: int = 16,
                  device: str | torch.device = "cpu", amp: bool = False,
                  rescale: bool = True) -> torch.Tensor:
    """Tumour probabilities ``(N, 1, H, W)`` float32 on CPU for ``images`` (N, C, H, W).

    ``images`` are uint8 or float in [0, 1] of any size. Each batch is moved with the model to
    ``device``, resized to ``work_size(model, H, W, rescale)`` (the model's training scale; see
    the module docstring), zero-padded (bottom, right) to the nearest valid size, checked with
    ``model.check_input`` when the model has one (a MambasegError names the nearest valid size),
    run under ``torch.inference_mode`` in eval mode (restored afterwards), cropped and resized
    back to H x W. Probabilities are the sigmoid of the logits.
    """
    x = torch.as_tensor(images)
    if x.dim() != 4:
        raise MambasegError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    dev = resolve_device(device)
    first = next(model.parameters(), None)
    if first is not None and first.device != dev:
        model.to(dev)
    sh, sw = work_size(model, h, w, rescale)
    ph, pw = valid_size(model, sh, sw)
    if ph < sh or pw < sw:
        raise MambasegError(f"model cannot take {sh}x{sw} inputs (largest valid size {ph}x{pw})")
    out = torch.empty((n, 1, h, w), dtype=torch.float32)
    was_training = model.training
    model.eval()
    check = getattr(model, "check_input", None)
    try:
        with torch.inference_mode():
            for start in range(0, n, max(1, int(batch_size))):
                xb = to_float(x[start:start + batch_size]).to(dev)
                if (sh, sw) != (h, w):
                    xb = F.interpolate(xb, size=(sh, sw), mode="bilinear", align_corners=False,
                                       antialias=True)
                if (ph, pw) != (sh, sw):
                    xb = F.pad(xb, (0, pw - sw, 0, ph - sh))
                if callable(check) and start == 0:
                    check(xb)
                with _autocast(dev, amp):
                    logits = model(xb)
                if isinstance(logits, (tuple, list)):  # deep supervision: main output first
                    logits = logits[0]
                probs = _to_probs(logits)[:, :, :sh, :sw]
                if (sh, sw) != (h, w):
                    probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
                out[start:start + len(xb)] = probs.cpu()
    finally:
        model.train(was_training)
    return out


def prepare_dir(path: str | Path, what: str = "output directory") -> Path:
    """Create ``path`` (and parents) if needed and check a file can be created in it.

    Raises MambasegError with a clear message when it cannot (a path under a regular file, a
    read-only location). Shared by ``evaluate`` and ``predict``; call it only after every other
    check passed, so that a failed run leaves nothing behind.
    """
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise MambasegError(f"{what} {path} cannot be created: {blocker} is a file, "
                            "not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MambasegError(f"{what} {path} cannot be created: {exc.strerror or exc}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".mambaseg-probe-", dir=path)
    except OSError as exc:
        raise MambasegError(f"{what} {path} is not writable: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)
    return path
