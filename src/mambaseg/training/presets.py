"""Training presets: the hyperparameters each model was trained with in the seed code.

``--preset paper`` reproduces the seed notebooks of lxaw/mamba-tumor-seg: 100 epochs, no
learning-rate schedule, no augmentation, and the weights of the **last** epoch are the ones
evaluated (``checkpoint: "last"``). Per model:

=========================================  =====  ========  =====  ====  ============  ====
model                                      batch  loss      optim  lr    weight decay  size
=========================================  =====  ========  =====  ====  ============  ====
unet, resnet18, resnet50, umamba_bot_pp    64     dice      adam   3e-4  0             256
umamba_bot                                 32     dice      adam   3e-4  0             256
ulvm_unet and every ulvm_unet_* variant    2      bce_dice  adamw  3e-4  1e-2          256
segformer, segformer_mit_b0                16     bce       adamw  1e-4  5e-5          224
mambaseg_* (ours: no seed settings)        16     bce_dice  adamw  3e-4  1e-4          256
=========================================  =====  ========  =====  ====  ============  ====

SegFormer was trained on 224x224 inputs: images (bilinear, antialiased) and masks (nearest) are
resized to 224x224 once when the data is loaded, and validation runs at that size too.
``segformer_mit_b0`` (transformers' SegFormer, the ``segformer`` of earlier versions) takes the
settings of ``segformer`` (the seed's network) in both presets.

``--preset recommended`` is our recipe for patients the model has never seen (see
:data:`RECOMMENDED` and ``results/cv/README.md`` for the ablation behind it): augmentation,
tumour slices oversampled to half of each epoch, AdamW with a linear warm-up then a cosine
decay, and the checkpoint of the best validation per-patient Dice.

Without a preset, :data:`DEFAULTS` apply. Explicit settings always override preset values.
"""
from __future__ import annotations

from typing import Any

from mambaseg.errors import MambasegError

#: settings used when neither a preset nor an explicit value gives one
DEFAULTS: dict[str, Any] = {
    "epochs": 100,
    "batch_size": 16,
    "lr": 3e-4,
    "optimizer": "adamw",
    "weight_decay": 1e-2,
    "loss": "bce_dice",
    "scheduler": "none",
    "augment": False,
    "image_size": None,  # None: the images' own size
    "checkpoint": "best",  # which checkpoint the protocol evaluates: best validation Dice
    "warmup_epochs": 0,  # linear warm-up before the cosine schedule
    "tumour_fraction": None,  # None: slices drawn as they come; p: tumour slices are p of each epoch
    "select": "dice",  # validation score of "best": pooled Dice, or "dice_patient" (mean per patient)
}

_PAPER_COMMON: dict[str, Any] = {
    "epochs": 100, "scheduler": "none", "augment": False, "image_size": None,
    "checkpoint": "last",
}
_SEED_DICE = {"loss": "dice", "optimizer": "adam", "lr": 3e-4, "weight_decay": 0.0}
_SEED_ULVM = {"batch_size": 2, "loss": "bce_dice", "optimizer": "adamw", "lr": 3e-4,
              "weight_decay": 1e-2}

#: per-model settings of the paper preset (exact names; ulvm_unet* variants by prefix)
PAPER: dict[str, dict[str, Any]] = {
    "unet": {**_PAPER_COMMON, **_SEED_DICE, "batch_size": 64},
    "resnet18": {**_PAPER_COMMON, **_SEED_DICE, "batch_size": 64},
    "resnet50": {**_PAPER_COMMON, **_SEED_DICE, "batch_size": 64},
    "umamba_bot_pp": {**_PAPER_COMMON, **_SEED_DICE, "batch_size": 64},
    "umamba_bot": {**_PAPER_COMMON, **_SEED_DICE, "batch_size": 32},
    "ulvm_unet": {**_PAPER_COMMON, **_SEED_ULVM},
    "segformer": {**_PAPER_COMMON, "batch_size": 16, "loss": "bce", "optimizer": "adamw",
                  "lr": 1e-4, "weight_decay": 5e-5, "image_size": 224},
    "segformer_mit_b0": {**_PAPER_COMMON, "batch_size": 16, "loss": "bce", "optimizer": "adamw",
                         "lr": 1e-4, "weight_decay": 5e-5, "image_size": 224},
    # our own models: the paper protocol with the recommended loss and optimizer
    "mambaseg": {**_PAPER_COMMON, "batch_size": 16, "loss": "bce_dice", "optimizer": "adamw",
                 "lr": 3e-4, "weight_decay": 1e-4},
}

_RECOMMENDED_COMMON: dict[str, Any] = {
    "epochs": 40, "batch_size": 16, "optimizer": "adamw", "loss": "bce_dice",
    "scheduler": "cosine", "warmup_epochs": 2, "augment": True, "tumour_fraction": 0.5,
    "image_size": None, "checkpoint": "best", "select": "dice_patient",
}

#: per-family settings of the recommended preset (model names by prefix, longest first). The
#: lr 3e-4 and 40 epochs come from validation patients carved out of the training folds
#: (results/cv/README.md): unet 0.806 at lr 3e-4 against 0.603 at 1e-3 (fold 0); ulvm_unet_v6
#: 0.745 at lr 3e-4 and 40 epochs against 0.681 at 2e-3 and 30 epochs (mean over 5 folds).
RECOMMENDED: dict[str, dict[str, Any]] = {
    "": {**_RECOMMENDED_COMMON, "lr": 3e-4, "weight_decay": 1e-4},
    "ulvm_unet": {**_RECOMMENDED_COMMON, "lr": 3e-4, "weight_decay": 1e-2},
    "segformer": {**_RECOMMENDED_COMMON, "lr": 2e-4, "weight_decay": 1e-2, "image_size": 224},
    "segformer_mit_b0": {**_RECOMMENDED_COMMON, "lr": 2e-4, "weight_decay": 1e-2, "image_size": 224},
}

PRESETS = ("paper", "recommended")


def recommended_settings(model: str) -> dict[str, Any]:
    """The recommended preset's settings for ``model`` (a copy): its family's entry of
    :data:`RECOMMENDED` (the longest matching name prefix)."""
    prefix = max((k for k in RECOMMENDED if model.startswith(k)), key=len)
    return dict(RECOMMENDED[prefix])


def paper_settings(model: str) -> dict[str, Any]:
    """The paper preset's settings for ``model`` (a copy)."""
    if model in PAPER:
        return dict(PAPER[model])
    if model.startswith("ulvm_unet"):
        return dict(PAPER["ulvm_unet"])
    if model.startswith("mambaseg_"):
        return dict(PAPER["mambaseg"])
    raise MambasegError(f"the paper preset has no settings for model {model!r}; it covers: "
                        f"{', '.join(sorted(PAPER))} (and every ulvm_unet_* and mambaseg_* model)")


def preset_settings(preset: str | None, model: str) -> dict[str, Any]:
    """Settings of ``preset`` for ``model`` ({} for no preset)."""
    if preset is None or preset == "none":
        return {}
    if preset == "paper":
        return paper_settings(model)
    if preset == "recommended":
        return recommended_settings(model)
    raise MambasegError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")


def resolve_settings(model: str, preset: str | None, explicit: dict[str, Any]) -> dict[str, Any]:
    """Merge :data:`DEFAULTS` < preset < ``explicit`` (keys whose value is None are ignored)."""
    out = dict(DEFAULTS)
    out.update(preset_settings(preset, model))
    out.update({k: v for k, v in explicit.items() if v is not None})
    return out
