"""Ensembles of checkpoints (e.g. the K fold models of a cross-validation): the mean of their
tumour probabilities.

``Ensemble(models)`` is a module whose ``forward`` returns logits whose sigmoid is the mean of
the members' probabilities, so ``inference.predict_probs`` (and evaluate, predict) run it like
one model. An ensemble folder on disk is ``DIR/ensemble.json`` plus one checkpoint folder per
member (``save_pretrained``'s format)::

    {"format": "mambaseg-ensemble", "format_version": 1, "members": ["fold_0", "fold_1", ...],
     "metadata": {...}, "postprocess": {"lcc": true, "min_volume": 0, "min_area": 0}}

``postprocess`` is the post-processing the ensemble recommends (``PostProcess.to_dict()``).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from mambaseg.engine.postprocess import PostProcess
from mambaseg.errors import CheckpointError, MambasegError

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
        from mambaseg.engine.inference import in_channels

        return in_channels(self.members[0])

    @property
    def input_size(self) -> int | None:
        return getattr(self.members[0], "input_size", None)

    @property
    def model_name(self) -> str:
        """The members' model name (``a+b`` when they differ; not a registry name then)."""
        from mambaseg.engine.inference import model_name

        return "+".join(dict.fromkeys(model_name(m) for m in self.members))

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest size >= (height, width) that every member accepts."""
        from mambaseg.engine.inference import valid_size

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
        from mambaseg.engine.inference import _to_probs

        total = None
        for m in self.members:
            out = m(x)
            if isinstance(out, (tuple, list)):  # deep supervision: main output first
                out = out[0]
            p = _to_probs(out)
            total = p if total is None else total + p
        return torch.logit(total / len(self.members), eps=EPS)


def check_compatible(models: Sequence[torch.nn.Module], sources: Sequence[str]) -> None:
    """Raise MambasegError naming both folders when two members differ in input channels or
    input size (their probabilities would not describe the same pixels)."""
    from mambaseg.engine.inference import in_channels

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


def _member_metadata(model) -> dict:
    cfg = getattr(model, "checkpoint_config", None)
    return dict((cfg or {}).get("metadata") or {}) if isinstance(cfg, dict) else {}


def _as_models(members) -> tuple[list, list[str]]:
    from mambaseg.engine.inference import load_checkpoint

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
    from mambaseg.files import write_json
    from mambaseg.models.checkpoint import save_pretrained

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
