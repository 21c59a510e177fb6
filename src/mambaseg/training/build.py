"""Building what a run needs: data on the device, model, optimizer and scheduler."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mambaseg.data.dataset import load_arrays
from mambaseg.data.splits import resolve_split
from mambaseg.errors import DataError, MambasegError
from mambaseg.models import create_model, get_entry
from mambaseg.models.base import CHANNELS_LAST_FAMILIES
from mambaseg.training.loop import DeviceData, resize_arrays



def check_data_path(data: str | Path | None) -> Path:
    """The data folder as a Path; DataError if it is not given, missing or not a folder."""
    if data is None:
        raise DataError("no data given (--data PATH)")
    root = Path(data)
    if not root.exists():
        raise DataError(f"{root}: data folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: data path is not a folder")
    return root


def load_split_arrays(data: str | Path, split: str, fold: int | None, image_size: int | None,
                      device: torch.device, channels_last: bool, progress: bool = True,
                      split_seed: int | None = None, channels: int | str = 3
                      ) -> tuple[dict[str, DeviceData | None], dict[str, int]]:
    """Resolve the split, decode train and validation slices (``channels``: as
    ``data.load_arrays``, e.g. ``"flair"``) and put them on ``device`` (resized to
    ``image_size`` when given). Returns the parts and their slice counts."""
    root = check_data_path(data)
    parts = resolve_split(root, split, seed=split_seed, fold=fold)
    if not parts["train"]:
        raise DataError(f"{root}: the {split!r} split has no training slices")
    out: dict[str, DeviceData | None] = {}
    for part in ("train", "val"):
        if not parts[part]:
            out[part] = None
            continue
        images, masks = load_arrays(parts[part], progress=progress, channels=channels)
        images, masks = images.to(device), masks.to(device)
        if image_size is not None:
            images, masks = resize_arrays(images, masks, int(image_size))
        number = {p: i for i, p in enumerate(dict.fromkeys(s.patient for s in parts[part]))}
        groups = torch.tensor([number[s.patient] for s in parts[part]], dtype=torch.long)
        out[part] = DeviceData(images, masks, channels_last=channels_last, groups=groups)
    return out, {p: len(parts[p]) for p in ("train", "val", "test")}


def build_model(name: str, in_channels: int, kwargs: dict[str, Any]) -> torch.nn.Module:
    """``create_model(name, in_channels, num_classes=1, **kwargs)`` (unknown names raise a
    MambasegError listing the valid ones)."""
    return create_model(name, in_channels=in_channels, num_classes=1, **kwargs)


def use_channels_last(model_name: str, device: torch.device, setting: bool | None) -> bool:
    """channels_last on CUDA for the families of ``models.base.CHANNELS_LAST_FAMILIES`` unless
    ``setting`` says otherwise."""
    if setting is not None:
        return bool(setting)
    return device.type == "cuda" and get_entry(model_name).family in CHANNELS_LAST_FAMILIES


def build_optimizer(params, name: str, lr: float, weight_decay: float,
                    device: torch.device, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam or AdamW; fused on CUDA (one kernel for the whole update); ``capturable`` for
    CUDA graphs (the step count stays on the device)."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True
        kwargs["capturable"] = capturable
    return cls(params, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, epochs: int, warmup: int = 0):
    """None, or cosine annealing over ``epochs`` (stepped once per epoch); with ``warmup``,
    the learning rate first rises linearly over that many epochs (lr/(warmup+1), ...), then
    follows the cosine over the remaining epochs."""
    if name == "none":
        return None
    if name == "cosine" and warmup:
        def factor(e: int) -> float:
            if e < warmup:
                return (e + 1) / (warmup + 1)
            return 0.5 * (1.0 + math.cos(math.pi * (e - warmup) / max(1, epochs - warmup)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    raise MambasegError(f"unknown --scheduler {name!r}; choose none or cosine")
