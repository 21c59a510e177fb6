"""Which MRI sequences a model takes: the channel choices of ``train --channels``.

The LGG (kaggle_3m) slices are RGB images whose three channels are three co-registered
sequences: pre-contrast, FLAIR, post-contrast (``LGG_CHANNELS``). ``--channels all`` (the
default) trains on all three; ``--channels flair`` on the FLAIR channel alone (index 1), the
sequence most clinics have and the one the dataset's masks were drawn on.

A checkpoint records its channels by name (``checkpoint_channels``): ``metadata.channels`` or
``metadata.training.channels`` of its config.json, else ``preprocessing.channels``; a
3-channel model that records none takes ``LGG_CHANNELS``.
"""
from __future__ import annotations

import numpy as np

from mambaseg.errors import MambasegError

#: channel order of the LGG slices (``models.base.CHANNELS``; repeated here so that the data
#: package imports no torch)
LGG_CHANNELS = ("pre-contrast", "FLAIR", "post-contrast")
#: ``--channels`` choices: the indices of the LGG channels each one keeps
CHOICES = {"all": (0, 1, 2), "flair": (1,)}


def check_choice(choice: str) -> str:
    """``choice`` (case-insensitive) as a key of ``CHOICES``; MambasegError otherwise."""
    key = str(choice).lower()
    if key not in CHOICES:
        raise MambasegError(f"unknown --channels {choice!r}; choose one of: {', '.join(CHOICES)}")
    return key


def channel_names(choice: str) -> list[str]:
    """The names of the channels ``choice`` keeps, e.g. ``["FLAIR"]`` for ``"flair"``."""
    return [LGG_CHANNELS[i] for i in CHOICES[check_choice(choice)]]


def choice_of(names) -> str | None:
    """The choice whose channel names are ``names`` (None when no choice has them)."""
    names = [str(n).lower() for n in (names or [])]
    for key, idx in CHOICES.items():
        if names == [LGG_CHANNELS[i].lower() for i in idx]:
            return key
    return None


def select_channels(image: np.ndarray, choice: str) -> np.ndarray:
    """The channels ``choice`` keeps of an (H, W, 3) image in the LGG order (or of an
    (N, 3, H, W) stack): a contiguous copy."""
    idx = list(CHOICES[check_choice(choice)])
    arr = np.asarray(image)
    if arr.ndim == 3:
        return np.ascontiguousarray(arr[:, :, idx])
    return np.ascontiguousarray(arr[:, idx])


def checkpoint_channels(config: dict | None, in_channels: int) -> tuple[str, ...] | None:
    """The channel names a checkpoint config records for its ``in_channels`` inputs (see the
    module docstring); None when it records none and the model is not a 3-channel one."""
    config = config if isinstance(config, dict) else {}
    meta = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    pre = config.get("preprocessing") if isinstance(config.get("preprocessing"), dict) else {}
    for names in (meta.get("channels"), training.get("channels"), pre.get("channels")):
        if isinstance(names, (list, tuple)) and len(names) == in_channels \
                and all(isinstance(n, str) for n in names):
            return tuple(names)
    return LGG_CHANNELS if in_channels == 3 else None
