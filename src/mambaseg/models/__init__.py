"""The model zoo: a registry of segmentation models sharing the ``SegModel`` base class.

    from mambaseg.models import create_model, list_models, from_pretrained
    model = create_model("ulvm_unet", in_channels=3, num_classes=1)   # logits (B, 1, H, W)
    model.save_pretrained("ckpt/", metadata={"metrics": {"test": {"dice": 0.9}}})
    model = from_pretrained("ckpt/")

Shipped weights are listed here (``shipped_models``, ``default_shipped``); they are loaded by
``mambaseg.inference.loading.load_shipped`` (a shipped ensemble is an inference ``Ensemble``).
"""
import torch

from mambaseg.models.base import SegModel
from mambaseg.models.checkpoint import from_pretrained, read_config
from mambaseg.models.pretrained import best_shipped, default_shipped, shipped_models
from mambaseg.models.registry import (
    count_parameters,
    create_model,
    get_entry,
    list_models,
    model_family,
    register_model,
)

# importing the family modules registers their models
from mambaseg.models import mambaseg_net, resnet, segformer, segformer_mit, ultralight, umamba, unet  # noqa: E402,F401  isort: skip

__all__ = [
    "SegModel",
    "register_model",
    "create_model",
    "list_models",
    "get_entry",
    "model_family",
    "count_parameters",
    "from_pretrained",
    "read_config",
    "shipped_models",
    "default_shipped",
    "best_shipped",
    "describe_models",
]


def describe_models() -> list[dict]:
    """One row per registered model, for ``mambaseg models``: name, family, parameter count
    (None if the model cannot be built here, with the reason in ``note``), accepted input sizes,
    default input size, and shipped weights with their input channels, test Dice,
    cross-validation (OOF per-patient) Dice and validation score (``val_dice``). Shipped
    weights under another name than a model's (a shipped ensemble, e.g. ``ulvm_unet_v6_cv5``)
    get their own row (``kind`` ``"ensemble"``, ``members`` fold models of ``num_parameters``
    each) after their model's row. ``default`` marks the shipped weights that ``predict``,
    ``segment()`` and ``demo`` use when no model is named."""
    shipped = shipped_models()
    default = default_shipped() if shipped else None

    def weights(info, name):
        return {
            "weights_shipped": info is not None,
            "test_dice": info["test_dice"] if info else None,
            "cv_dice": info["cv_dice"] if info else None,
            "val_dice": info["val_dice"] if info else None,
            "cv_patients": info["cv_patients"] if info else None,
            "cv_folds": info["cv_folds"] if info else None,
            "members": info["members"] if info else None,
            "channels": list(info["channels"]) if info and info["channels"] else None,
            "evaluated": info["evaluated"] if info else None,
            "default": info is not None and name == default,
            "weights_path": str(info["path"]) if info else None,
        }

    rows = []
    for name in list_models():
        note = None
        try:
            with torch.device("meta"):
                model = create_model(name)
            params = count_parameters(model)
            multiple, smallest, size = model.size_multiple, model.smallest_size, model.input_size
        except Exception as exc:  # e.g. transformers missing for segformer
            params = multiple = smallest = size = None
            note = str(exc)
        info = shipped.get(name)
        rows.append({
            "name": name,
            "kind": "model",
            "family": model_family(name),
            "description": get_entry(name).description,
            "model_name": name,
            "num_parameters": params,
            "size_multiple": multiple,
            "min_size": smallest,
            "input_size": size,
            **weights(info, name),
            "note": note,
        })
    by_model = {r["name"]: r for r in rows}
    for name, info in shipped.items():
        if name in by_model:
            continue
        base = by_model.get(info["model_name"])
        pre = info.get("preprocessing") or {}
        k = info["members"]
        kind = "ensemble" if info["kind"] == "ensemble" else "checkpoint"
        row = {
            "name": name,
            "kind": kind,
            "family": base["family"] if base else None,
            "description": (f"{k}-model ensemble of {info['model_name']}"
                            + (f" (the fold models of a {info['cv_folds']}-fold "
                               "cross-validation)" if info["cv_folds"] else "")
                            if kind == "ensemble" else f"trained {info['model_name']}"),
            "model_name": info["model_name"],
            "num_parameters": info["num_parameters"],
            "size_multiple": pre.get("size_multiple", base["size_multiple"] if base else None),
            "min_size": pre.get("min_size", base["min_size"] if base else None),
            "input_size": pre.get("input_size", base["input_size"] if base else None),
            **weights(info, name),
            "note": None if base else f"its model {info['model_name']!r} is not registered "
                                      "in this version of mambaseg",
        }
        at = rows.index(base) + 1 if base else len(rows)
        while at < len(rows) and rows[at]["kind"] != "model":
            at += 1
        rows.insert(at, row)
    return rows
