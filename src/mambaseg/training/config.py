"""The trainer's settings (:class:`TrainConfig`) and their resolution against presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mambaseg.data.channels import CHOICES as CHANNEL_CHOICES
from mambaseg.training.graphs import MODES as GRAPH_MODES
from mambaseg.training.losses import LOSSES
from mambaseg.training.presets import resolve_settings
from mambaseg.errors import MambasegError

OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("none", "cosine")
AMP_MODES = ("bf16", "off")
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINTS = ("last", "best")
SELECT = ("dice", "dice_patient")

#: settings a preset may give; None in TrainConfig means "from the preset, else the default"
PRESET_KEYS = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "loss", "scheduler",
               "augment", "image_size", "checkpoint", "warmup_epochs", "tumour_fraction",
               "select")


@dataclass
class TrainConfig:
    """Everything :func:`mambaseg.training.trainer.train` needs.

    Fields left ``None`` come from the preset (``preset="paper"``), else from
    :data:`mambaseg.training.presets.DEFAULTS`. ``batch_size`` is the global batch: with
    ``torchrun`` each of the N processes takes ``batch_size / N`` samples of every batch.
    """

    model: str | None = None
    data: str | Path | None = None
    out: str | Path = "runs/train"
    #: "paper", "patient" or a split JSON file (None: "paper")
    split: str | None = None
    fold: int | None = None
    #: seed of the paper/patient split (None: the data package's default, 37)
    split_seed: int | None = None
    preset: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    loss: str | None = None
    scheduler: str | None = None
    augment: bool | None = None
    image_size: int | None = None
    #: which checkpoint the evaluation protocol uses: "last" (paper) or "best" validation Dice
    checkpoint: str | None = None
    #: epochs of linear learning-rate warm-up before the cosine schedule
    warmup_epochs: int | None = None
    #: oversampling: the expected fraction of tumour slices in each epoch (0: as they come)
    tumour_fraction: float | None = None
    #: validation score that picks "best": "dice" (pooled) or "dice_patient"
    select: str | None = None
    #: seeds model initialisation, data order and augmentation (None: 0)
    seed: int | None = None
    device: str = "auto"
    #: "bf16" or "off"; None: bf16 on CUDA, off on CPU
    amp: str | None = None
    compile: bool = False
    #: "auto" (default), "on" or "off": replay each training and validation step as a CUDA
    #: graph (single CUDA device, no torch.compile; see mambaseg.training.graphs)
    cuda_graphs: str = "auto"
    #: None: channels_last for convolutional models on CUDA only
    channels_last: bool | None = None
    resume: bool = False
    overwrite: bool = False
    #: validation batch size; None: the training batch size
    val_batch_size: int | None = None
    #: the MRI channels to train on: "all" (pre-contrast, FLAIR, post-contrast: the RGB slices)
    #: or "flair" (channel 1 alone; the model takes 1 channel); see mambaseg.data.channels
    channels: str = "all"
    #: keyword arguments for create_model
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    #: show a tqdm progress bar (rank 0 only)
    progress: bool = True


def resolved_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The preset-dependent settings of ``cfg``: defaults < preset < explicit fields, checked."""
    if not cfg.model:
        raise MambasegError("no model given (--model NAME)")
    explicit = {k: getattr(cfg, k) for k in PRESET_KEYS}
    s = resolve_settings(cfg.model, cfg.preset, explicit)
    if cfg.warmup_epochs is None:  # a preset's warm-up never outlasts a shortened run
        s["warmup_epochs"] = min(int(s["warmup_epochs"]), max(0, int(s["epochs"]) - 1))
    _check_choice("optimizer", s["optimizer"], OPTIMIZERS)
    _check_choice("loss", s["loss"], tuple(LOSSES))
    _check_choice("scheduler", s["scheduler"], SCHEDULERS)
    _check_choice("checkpoint", s["checkpoint"], CHECKPOINTS)
    _check_choice("select", s["select"], SELECT)
    if not 0 <= int(s["warmup_epochs"]) < int(s["epochs"]):
        raise MambasegError(f"--warmup-epochs must be in [0, epochs), got {s['warmup_epochs']}")
    if int(s["warmup_epochs"]) and s["scheduler"] != "cosine":
        raise MambasegError("--warmup-epochs needs --scheduler cosine")
    if s["tumour_fraction"] is not None and not 0.0 <= float(s["tumour_fraction"]) < 1.0:
        raise MambasegError(f"--tumour-fraction must be in [0, 1) (0: no oversampling), got "
                            f"{s['tumour_fraction']}")
    for key in ("epochs", "batch_size"):
        if int(s[key]) < 1:
            raise MambasegError(f"--{key.replace('_', '-')} must be at least 1, got {s[key]}")
    if s["image_size"] is not None and int(s["image_size"]) < 8:
        raise MambasegError(f"--image-size must be at least 8, got {s['image_size']}")
    if float(s["lr"]) <= 0:
        raise MambasegError(f"--lr must be positive, got {s['lr']}")
    if float(s["weight_decay"]) < 0:
        raise MambasegError(f"--weight-decay must be >= 0, got {s['weight_decay']}")
    _check_choice("device", cfg.device, DEVICES)
    _check_choice("channels", cfg.channels, tuple(CHANNEL_CHOICES))
    if cfg.amp is not None:
        _check_choice("amp", cfg.amp, AMP_MODES)
    _check_choice("cuda-graphs", cfg.cuda_graphs or "auto", GRAPH_MODES)
    return s


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MambasegError(f"unknown --{name} {value!r}; choose one of: {', '.join(choices)}")


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from a saved run's ``config.json`` (unknown keys ignored)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in data.items() if k in names})
