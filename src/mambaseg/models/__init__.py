"""The model zoo: a registry of segmentation models sharing the ``SegModel`` base class.

    from mambaseg.models import create_model, list_models, from_pretrained
    model = create_model("ulvm_unet", in_channels=3, num_classes=1)   # logits (B, 1, H, W)
    model.save_pretrained("ckpt/", metadata={"metrics": {"test": {"dice": 0.9}}})
    model = from_pretrained("ckpt/")
"""
from mambaseg.models.base import SegModel
from mambaseg.models.checkpoint import from_pretrained, read_config
from mambaseg.models.pretrained import best_shipped, load_shipped, shipped_models
from mambaseg.models.registry import (
    count_parameters,
    create_model,
    get_entry,
    list_models,
    model_family,
    register_model,
)

# importing the family modules registers their models
from mambaseg.models import resnet, segformer, ultralight, umamba, unet  # noqa: E402,F401  isort: skip

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
    "load_shipped",
    "best_shipped",
    "describe_models",
]


def describe_models() -> list[dict]:
    """One row per registered model, for ``mambaseg models``: name, family, parameter count
    (None if the model cannot be built here, with the reason in ``note``), accepted input sizes,
    default input size, and shipped weights with their test Dice."""
    import torch

    shipped = shipped_models()
    rows = []
    for name in list_models():
        note = None
        try:
            with torch.device("meta"):
                model = create_model(name)
            params = sum(p.numel() for p in model.parameters())
            multiple, smallest, size = model.size_multiple, model.smallest_size, model.input_size
        except Exception as exc:  # e.g. transformers missing for segformer
            params = multiple = smallest = size = None
            note = str(exc)
        info = shipped.get(name)
        rows.append({
            "name": name,
            "family": model_family(name),
            "description": get_entry(name).description,
            "num_parameters": params,
            "size_multiple": multiple,
            "min_size": smallest,
            "input_size": size,
            "weights_shipped": info is not None,
            "test_dice": info["test_dice"] if info else None,
            "weights_path": str(info["path"]) if info else None,
            "note": note,
        })
    return rows
