"""Ensembles of checkpoints (e.g. the K fold models of a cross-validation): the mean of their
tumour probabilities.

``Ensemble(models)`` is a module whose ``forward`` returns logits whose sigmoid is the mean of
the members' probabilities, so ``runner.predict_probs`` (and evaluate, predict) run it like
one model. An ensemble folder on disk (``loading.save_ensemble``, ``loading.load_ensemble``) is
``DIR/ensemble.json`` plus one checkpoint folder per member (``save_pretrained``'s format)::

    {"format": "mambaseg-ensemble", "format_version": 1, "members": ["fold_0", "fold_1", ...],
     "metadata": {...}, "postprocess": {"lcc": true, "min_volume": 0, "min_area": 0}}

``postprocess`` is the post-processing the ensemble recommends (``PostProcess.to_dict()``).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from mambaseg.errors import CheckpointError, MambasegError
from mambaseg.inference.model_info import in_channels, model_name, valid_size
from mambaseg.inference.postprocess import PostProcess
from mambaseg.inference.runner import to_probs

MANIFEST = "ensemble.json"
FORMAT = "mambaseg-ensemble"
FORMAT_VERSION = 1
#: probabilities are clamped to [EPS, 1 - EPS] before the logit (finite logits)
EPS = 1e-6


class Ensemble(torch.nn.Module):
    """The mean of the tumour probabilities of ``models`` (all given the same input).

    ``sources`` name the members in messages (their checkpoint folders); ``postprocess`` is the
    post-processing the ensemble recommends (None: none). Raises MambasegError when members
    differ in input channels or training scale (``input_size``).
    """

    num_classes = 1

    def __init__(self, models: Sequence[torch.nn.Module], sources: Sequence[str] | None = None,
                 postprocess: PostProcess | None = None, metadata: dict | None = None):
        super().__init__()
        models = list(models)
        if not models:
            raise MambasegError("an ensemble needs at least one model")
        sources = [str(s) for s in sources] if sources is not None else \
            [f"member {i}" for i in range(len(models))]
        if len(sources) != len(models):
            raise ValueError(f"{len(models)} models but {len(sources)} source names")
        check_compatible(models, sources)
        self.members = torch.nn.ModuleList(models)
        self.sources = sources
        self.postprocess = postprocess
        self.metadata = dict(metadata or {})

    # -- what inference reads -------------------------------------------------------------

    @property
    def in_channels(self) -> int:
        return in_channels(self.members[0])

    @property
    def input_size(self) -> int | None:
        return getattr(self.members[0], "input_size", None)

    @property
    def model_name(self) -> str:
        """The members' model name (``a+b`` when they differ; not a registry name then)."""
        return "+".join(dict.fromkeys(model_name(m) for m in self.members))

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest size >= (height, width) that every member accepts."""
        size = (int(height), int(width))
        for _ in range(16):
            new = size
            for m in self.members:
                new = valid_size(m, *new)
            if new == size:
                return size
            size = new
        raise MambasegError(f"the members of this ensemble accept no common size near "
                            f"{height}x{width}")

    def check_input(self, x: torch.Tensor) -> None:
        for m in self.members:
            check = getattr(m, "check_input", None)
            if callable(check):
                check(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for m in self.members:
            out = m(x)
            if isinstance(out, (tuple, list)):  # deep supervision: main output first
                out = out[0]
            p = to_probs(out)
            total = p if total is None else total + p
        return torch.logit(total / len(self.members), eps=EPS)


def check_compatible(models: Sequence[torch.nn.Module], sources: Sequence[str]) -> None:
    """Raise MambasegError naming both folders when two members differ in input channels or
    input size (their probabilities would not describe the same pixels)."""
    def sig(m):
        return in_channels(m), getattr(m, "input_size", None)

    first = sig(models[0])
    for model, source in zip(models[1:], sources[1:]):
        other = sig(model)
        if other != first:
            raise MambasegError(
                f"cannot make an ensemble of checkpoints of different input sizes or channels: "
                f"{sources[0]} has input_size {first[1]}, in_channels {first[0]}; {source} has "
                f"input_size {other[1]}, in_channels {other[0]}")


def is_ensemble_dir(path: str | Path) -> bool:
    """Whether ``path`` is an ensemble folder (holds ``ensemble.json``)."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(directory: str | Path) -> dict:
    """The checked ``ensemble.json`` of ``directory`` (CheckpointError naming it if invalid)."""
    path = Path(directory) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mambaseg ensemble manifest (format {FORMAT!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {data.get('format_version')!r} is not "
                              f"supported by this mambaseg (reads {FORMAT_VERSION})")
    members = data.get("members")
    if not isinstance(members, list) or not members or \
            not all(isinstance(m, str) and m for m in members):
        raise CheckpointError(f"{path}: 'members' must be a non-empty list of folder names")
    for m in members:
        if Path(m).is_absolute() or ".." in Path(m).parts or not Path(m).parts:
            raise CheckpointError(f"{path}: member {m!r} must be a folder inside {directory}")
    return data


