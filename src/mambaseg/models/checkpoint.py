"""Checkpoint directories: ``config.json`` + ``model.safetensors``.

``save_pretrained(model, dir)`` writes both files atomically (``mambaseg.files.atomic_path``:
a temporary file in ``dir``, then ``os.replace``). ``from_pretrained(dir)`` rebuilds the model
named in the config and loads the weights after checking that they belong to it (key set and
shapes); every problem raises a ``CheckpointError`` naming the directory or file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mambaseg._version import __version__
from mambaseg.errors import CheckpointError, MambasegError
from mambaseg.files import atomic_path, to_json, write_text
from mambaseg.models.registry import count_parameters, create_model, get_entry

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "mambaseg-checkpoint"
FORMAT_VERSION = 1


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return value.item()
        except (TypeError, ValueError, RuntimeError):
            pass
    if hasattr(value, "tolist"):  # small numpy arrays / tensors
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def build_config(model, metadata: dict | None = None, weights_dtype: torch.dtype | None = None) -> dict:
    family = getattr(model, "family", "other")
    try:
        family = get_entry(model.model_name).family
    except MambasegError:
        pass
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    stored = weights_dtype or (dtypes.pop() if len(dtypes) == 1 else torch.float32)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": model.model_name,
        "model_kwargs": dict(model.model_kwargs),
        "in_channels": model.in_channels,
        "num_classes": model.num_classes,
        "family": family,
        "num_parameters": count_parameters(model),
        "weights_dtype": str(stored).replace("torch.", ""),
        "preprocessing": model.preprocessing,
        "mambaseg_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "metadata": metadata or {},
    }


def save_pretrained(model, directory: str | Path, metadata: dict | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` to ``directory`` (see ``SegModel.save_pretrained``); returns the directory."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"cannot save a checkpoint to {directory}: it is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create checkpoint directory {directory}: {exc}") from exc
    if dtype is not None and not dtype.is_floating_point:
        raise MambasegError(f"save_pretrained: dtype must be a floating-point dtype, not {dtype}")

    config = build_config(model, metadata, dtype)
    try:
        config_text = to_json(config, indent=2, default=_jsonable) + "\n"
    except (TypeError, ValueError) as exc:
        raise MambasegError(f"save_pretrained: metadata must be JSON-serialisable ({exc})") from exc

    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.to("cpu", copy=True).contiguous()  # copies: no shared storage

    try:
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", "model_name": model.model_name})
        write_text(directory / CONFIG_NAME, config_text, fsync=True)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint to {directory}: {exc}") from exc
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory (CheckpointError if absent or invalid)."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a checkpoint directory (expected a folder holding "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a mambaseg checkpoint: {CONFIG_NAME} is missing")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("model_name"), str):
        raise CheckpointError(f"{path} is not a mambaseg checkpoint config (no 'model_name')")
    for key in ("in_channels", "num_classes"):
        if not isinstance(config.get(key, 1), int):
            raise CheckpointError(f"{path}: '{key}' must be an integer, got {config.get(key)!r}")
    if not isinstance(config.get("model_kwargs") or {}, dict):
        raise CheckpointError(f"{path}: 'model_kwargs' must be an object")
    return config


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file (CheckpointError if unreadable)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint weights {path} are missing")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = dict(fh.metadata() or {})
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    except Exception as exc:  # safetensors raises its own error types for truncated / corrupt files
        raise CheckpointError(f"cannot read weights {path}: the file is truncated or corrupt "
                              f"({type(exc).__name__}: {exc}); save or copy it again") from exc
    return tensors, header


def _first(keys, n=3) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_state_dict(model, state: dict[str, torch.Tensor], where: Path, header: dict | None = None) -> None:
    """Raise a CheckpointError unless ``state`` has exactly ``model``'s keys and shapes."""
    expected = model.state_dict()
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    wrong = sorted(k for k in expected.keys() & state.keys() if tuple(expected[k].shape) != tuple(state[k].shape))
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {_first(unexpected)})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} tensors of the wrong shape (first: {k} is "
                        f"{tuple(state[k].shape)}, expected {tuple(expected[k].shape)})")
    source = (header or {}).get("model_name")
    hint = f"; the file says it holds {source} weights" if source and source != model.model_name else ""
    raise CheckpointError(f"the weights in {where} do not belong to model {model.model_name} "
                          f"(in_channels={model.in_channels}, num_classes={model.num_classes}) named in "
                          f"its {CONFIG_NAME}: {'; '.join(problems)}{hint}")


def from_pretrained(directory: str | Path, *, dtype: torch.dtype | None = None,
                    device: str | torch.device | None = None, **overrides):
    """Load a checkpoint directory written by ``save_pretrained``.

    The model is rebuilt from ``config.json`` (``overrides`` replace its options, e.g.
    ``scan_backend=...``), the weights are checked against it and loaded (fp16-stored weights load
    into the fp32 model), then it is cast to ``dtype`` / moved to ``device`` if given, and returned
    in eval mode. ``model.checkpoint_config`` holds the config (metrics in its ``metadata``).
    """
    directory = Path(directory)
    config = read_config(directory)
    name = config["model_name"]
    try:
        get_entry(name)
    except MambasegError as exc:
        raise CheckpointError(f"{directory / CONFIG_NAME} names a model this version of mambaseg does "
                              f"not have: {exc}") from None
    weights_path = directory / WEIGHTS_NAME
    state, header = read_weights(weights_path)

    kwargs = dict(config.get("model_kwargs") or {})
    kwargs.update(overrides)
    if "pretrained" in kwargs:  # the checkpoint's weights replace any ImageNet initialisation
        kwargs["pretrained"] = False
    try:
        model = create_model(name, in_channels=config.get("in_channels", 3),
                             num_classes=config.get("num_classes", 1), **kwargs)
    except MambasegError as exc:
        raise CheckpointError(f"cannot rebuild the model of {directory}: {exc}") from exc
    state = model.adapt_state_dict(state)
    check_state_dict(model, state, directory, header)
    model.load_state_dict(state, strict=True)
    size = (config.get("preprocessing") or {}).get("input_size")
    if isinstance(size, int) and size > 0:  # the scale it was trained at (e.g. 224 for SegFormer)
        model.input_size = size
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    model.checkpoint_config = config
    return model.eval()
