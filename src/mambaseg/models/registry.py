"""The model registry: ``register_model``, ``create_model``, ``list_models``.

A model is registered by decorating a factory ``fn(in_channels=3, num_classes=1, **kwargs)`` that
returns a ``SegModel``; the registry name is the function's name unless given::

    @register_model(family="unet")
    def unet(in_channels=3, num_classes=1, **kwargs):
        return UNet(in_channels, num_classes, **kwargs)
"""
from __future__ import annotations

import difflib
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from mambaseg.errors import MambasegError

#: keyword arguments that change how a model is built or run, not what it is: they are not
#: recorded in ``model_kwargs`` (so not in checkpoints)
RUNTIME_KWARGS = frozenset({"pretrained", "scan_backend"})


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., Any]
    family: str
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(fn=None, *, name: str | None = None, family: str | None = None,
                   description: str | None = None):
    """Register a model factory; usable as ``@register_model`` or ``@register_model(family=...)``."""

    def wrap(factory):
        key = name or factory.__name__
        if key in _REGISTRY and _REGISTRY[key].factory is not factory:
            raise ValueError(f"a model named {key!r} is already registered")
        fam = family or factory.__module__.rsplit(".", 1)[-1]
        doc = description or (inspect.getdoc(factory) or "").split("\n", 1)[0]
        _REGISTRY[key] = ModelEntry(key, factory, fam, doc)
        return factory

    return wrap(fn) if fn is not None else wrap


def list_models(family: str | None = None) -> list[str]:
    """Registered model names, sorted (optionally only one family's)."""
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; unknown names raise a MambasegError listing valid ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        pass
    names = list_models()
    hint = difflib.get_close_matches(str(name), names, n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise MambasegError(f"unknown model {name!r}{did_you_mean}; valid models: {', '.join(names)}")


def create_model(name: str, in_channels: int = 3, num_classes: int = 1, **kwargs):
    """Build the registered model ``name`` (randomly initialised).

    ``kwargs`` go to the model's factory (e.g. ``pretrained=True`` for the ResNets,
    ``scan_backend=...`` for the Mamba models); unknown ones raise a MambasegError.
    """
    entry = get_entry(name)
    try:
        inspect.signature(entry.factory).bind(in_channels=in_channels, num_classes=num_classes, **kwargs)
        model = entry.factory(in_channels=in_channels, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        # a bad option, caught by the factory's signature or by the class a factory forwards to
        if not any(m in str(exc) for m in ("unexpected keyword argument", "multiple values for argument")):
            raise
        raise MambasegError(f"model {name!r} does not take the options given ({', '.join(sorted(kwargs))}): "
                            f"{exc}") from None
    model.model_name = name
    model.model_kwargs = {k: v for k, v in kwargs.items() if k not in RUNTIME_KWARGS}
    return model


def count_parameters(model: str | torch.nn.Module) -> int:
    """Number of parameters of ``model``: a module (an ensemble counts all its members), or a
    registered model's name (3 input channels, 1 class), counted on an instance on the meta
    device: no memory is allocated, so this is cheap even for the large models (and cached)."""
    if isinstance(model, str):
        return _count_registered(model)
    return int(sum(p.numel() for p in model.parameters()))


@functools.lru_cache(maxsize=None)
def _count_registered(name: str) -> int:
    with torch.device("meta"):
        model = create_model(name)
    return count_parameters(model)


def model_family(name: str) -> str:
    return get_entry(name).family
