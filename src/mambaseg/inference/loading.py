"""Every way to get a model to run, and ensemble folders in and out.

``load_model`` is the one resolver that ``predict``, ``evaluate``, ``export``, ``segment()`` and
``segment_volume()`` use: a loaded module as given; ``checkpoint`` folders (``load_models``: one
checkpoint or ensemble folder, or several, averaged as an ``Ensemble``; a training run folder
stands for the checkpoint its protocol evaluates, ``resolve_run_dir``); the shipped weights of
a model name (``load_shipped_model``); or, nothing given, the default shipped model.
``source_label`` names what was loaded in summaries (a folder, ``shipped:<name>``,
``in-memory``).

An ensemble folder (``save_ensemble`` / ``load_ensemble``) is ``ensemble.json`` (see
``ensemble.read_manifest``) plus one checkpoint folder per member; ``load_checkpoint`` takes
either kind of folder. Every failure is a CheckpointError (or MambasegError) naming the folder.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from mambaseg.errors import CheckpointError, MambasegError
from mambaseg.files import write_json
from mambaseg.inference.ensemble import (FORMAT, FORMAT_VERSION, MANIFEST, Ensemble,
                                         is_ensemble_dir, read_manifest)
from mambaseg.inference.model_info import model_name
from mambaseg.inference.postprocess import PostProcess
from mambaseg.models import from_pretrained, list_models, pretrained
from mambaseg.models.checkpoint import save_pretrained

# ----------------------------------------------------------------------------- the resolver

def load_model(model=None, checkpoint=None, device="cpu"):
    """The model to run: a module as given, a checkpoint directory (or ensemble folder; a list
    of them: their ``Ensemble``), the shipped weights of a model name, or (nothing given) the
    default shipped model. A string ``model`` naming an existing directory is taken as a
    checkpoint."""
    if model is not None and checkpoint is not None:
        raise MambasegError("pass either --model NAME or --checkpoint DIR, not both")
    if isinstance(model, torch.nn.Module):
        return model.to(device).eval()
    if checkpoint is not None:
        return load_models(checkpoint, device)
    if isinstance(model, (str, os.PathLike)) and Path(model).is_dir():
        return load_checkpoint(model, device)
    return load_shipped_model(None if model is None else str(model), device)


def source_label(model, checkpoint, net) -> str:
    """What ``load_model(model, checkpoint)`` loaded, for summaries: the checkpoint
    directories (joined by `` + ``), ``shipped:<name>`` for shipped weights, or ``in-memory``."""
    if checkpoint is not None:
        return " + ".join(map(str, checkpoint_list(checkpoint)))
    if isinstance(model, torch.nn.Module):
        return "in-memory"
    if isinstance(model, (str, os.PathLike)) and Path(model).is_dir():
        return str(model)
    if model is None:
        model = pretrained.default_shipped() or model_name(net)
    return f"shipped:{model}"


def load_models(paths, device: str | torch.device = "cpu"):
    """One checkpoint directory (or ensemble folder): its model, as ``load_checkpoint``.
    Several: an ``Ensemble`` averaging their probabilities (ensemble folders among them
    contribute their members), checked for equal input channels and input size."""
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


def resolve_run_dir(path: str | Path) -> Path:
    """A training run folder (``mambaseg train``'s RUN_DIR: its ``config.json`` and ``best/``,
    ``last/``) -> the checkpoint its protocol evaluates (the run's ``checkpoint`` setting:
    ``best/`` unless the run chose ``last``; the other one if only that exists). Any other path
    is returned unchanged (as a Path)."""
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


# ----------------------------------------------------------------------------- folders

def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """Load a model saved with ``save_pretrained`` from the directory ``path``, in eval mode; an
    ensemble folder (``ensemble.json``, see ``save_ensemble``) loads as an ``Ensemble``.

    Any failure (missing directory, truncated weights, weights of another architecture) is
    raised as CheckpointError naming the directory.
    """
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


def _member_metadata(model) -> dict:
    cfg = getattr(model, "checkpoint_config", None)
    return dict((cfg or {}).get("metadata") or {}) if isinstance(cfg, dict) else {}


def _as_models(members) -> tuple[list, list[str]]:
    models, sources = [], []
    for i, m in enumerate(members):
        if isinstance(m, torch.nn.Module):
            loaded, source = m, f"member {i}"
        else:
            loaded, source = load_checkpoint(m, "cpu"), str(m)
        if isinstance(loaded, Ensemble):       # an ensemble folder: its members, flattened
            models.extend(loaded.members)
            sources.extend(loaded.sources)
        else:
            models.append(loaded)
            sources.append(source)
    return models, sources


def save_ensemble(directory: str | Path, members: Sequence, metadata: dict | None = None,
                  postprocess: PostProcess | dict | None = None,
                  dtype: torch.dtype | None = None) -> Path:
    """Write an ensemble folder: ``members`` (models or checkpoint folders) as ``fold_<i>``
    checkpoint folders (``save_pretrained``; ``dtype=torch.float16`` halves them), then
    ``ensemble.json`` last and atomically, so a folder with a manifest is complete.

    Members keep their own config ``metadata``. Raises MambasegError before writing anything
    when the members are incompatible or ``metadata`` is not JSON-serialisable.
    """
    directory = Path(directory)
    models, sources = _as_models(members)
    Ensemble(models, sources)                                     # the compatibility check
    if isinstance(postprocess, dict):
        postprocess = PostProcess.from_dict(postprocess)
    names = [f"fold_{i}" for i in range(len(models))]
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "members": names,
                "metadata": dict(metadata or {}),
                "postprocess": postprocess.to_dict() if postprocess is not None else None}
    try:
        json.dumps(manifest)
    except (TypeError, ValueError) as exc:
        raise MambasegError(f"save_ensemble: metadata must be JSON-serialisable ({exc})") from None
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"cannot save an ensemble to {directory}: it is a file")
    for name, model in zip(names, models):
        save_pretrained(model, directory / name, metadata=_member_metadata(model), dtype=dtype)
    write_json(directory / MANIFEST, manifest)
    return directory


def load_ensemble(directory: str | Path, device: str | torch.device = "cpu") -> Ensemble:
    """Load an ensemble folder written by ``save_ensemble``, in eval mode on ``device``.

    Errors (manifest, a member folder, incompatible members) are CheckpointErrors naming the
    folder concerned.
    """
    directory = Path(directory)
    data = read_manifest(directory)
    try:
        pp = PostProcess.from_dict(data.get("postprocess")) if data.get("postprocess") else None
    except (MambasegError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / MANIFEST}: invalid 'postprocess': {exc}") from None
    models, sources = _as_models([directory / name for name in data["members"]])
    try:
        meta = data.get("metadata")
        ens = Ensemble(models, sources, pp, meta if isinstance(meta, dict) else {})
    except MambasegError as exc:
        raise CheckpointError(f"{directory}: {exc}") from None
    return ens.to(device).eval()


# ----------------------------------------------------------------------------- shipped weights

def load_shipped(name: str, root: str | Path | None = None, **kwargs):
    """The shipped model ``name`` (``models.pretrained``) with its trained weights (fp32, eval
    mode): a model, or an ``Ensemble`` for a shipped ensemble (carrying its recommended
    ``postprocess``). ``kwargs`` go to ``from_pretrained`` (``dtype``, ``device``,
    ``scan_backend``...; for an ensemble, to each member's)."""
    shipped = pretrained.shipped_models(root)
    if name not in shipped:
        available = ", ".join(shipped) or "none"
        raise MambasegError(f"no trained weights are shipped for model {name!r} (shipped: "
                            f"{available}); train one with 'mambaseg train' or load a checkpoint "
                            "directory")
    path = shipped[name]["path"]
    if shipped[name]["kind"] != "ensemble":
        return from_pretrained(path, **kwargs)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    if not kwargs:
        model = load_ensemble(path, device or "cpu")
    else:  # model overrides (e.g. scan_backend) for every member
        manifest = read_manifest(path)
        members = [from_pretrained(path / m, **kwargs) for m in manifest["members"]]
        pp = manifest.get("postprocess")
        model = Ensemble(members, [str(path / m) for m in manifest["members"]],
                         PostProcess.from_dict(pp) if pp else None,
                         manifest.get("metadata") or {})
        if device is not None:
            model = model.to(device)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()


def load_shipped_model(name: str | None = None, device: str | torch.device = "cpu"):
    """Load the shipped weights ``name`` (a model name, or a shipped ensemble such as
    ``ulvm_unet_v6_cv5``, which loads as an ``Ensemble``); None: the default shipped model
    (``models.pretrained.default_shipped``: the one marked default, else the best
    cross-validated, else the best tested).

    Raises MambasegError for an unknown model name (listing the valid ones) or when no weights
    are shipped for it (saying to pass --checkpoint).
    """
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
        model = load_shipped(name)
    except MambasegError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged package data
        raise CheckpointError(f"shipped weights of {name!r} cannot be loaded: {exc}") from None
    return model.to(device).eval()
