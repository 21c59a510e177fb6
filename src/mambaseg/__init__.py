"""mambaseg: brain-tumour segmentation in MRI with Mamba models and their baselines.

Public API::

    import mambaseg
    mambaseg.list_models()
    model = mambaseg.create_model("ulvm_unet", in_channels=3, num_classes=1)
    model = mambaseg.from_pretrained("path/to/checkpoint_dir")
    masks = mambaseg.segment(["slice.tif"])  # with the default shipped model
    mask_img, summary = mambaseg.segment_volume("case.nii.gz")  # NIfTI (pip install 'mambaseg[nifti]')

The names are imported on first use (``__getattr__``): ``import mambaseg`` imports no torch, so
the CLI's ``--help`` stays fast and ``predict --onnx`` runs without PyTorch (``pip install
'mambaseg[onnx]'``); without PyTorch the names that need it raise ModuleNotFoundError saying
``pip install 'mambaseg[torch]'``. The packages:
``data``, ``models`` (with ``nn`` and ``ops``), ``training``, ``inference``, ``metrics``,
``report`` and ``cli`` (docs/architecture.md).
"""
from mambaseg._version import __version__

__all__ = ["__version__", "create_model", "list_models", "from_pretrained", "segment",
           "segment_volume"]


def __getattr__(name):
    try:
        return _public(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("torch", "torchvision", "safetensors"):
            raise
        raise ModuleNotFoundError(f"mambaseg.{name} needs PyTorch, which is not installed: "
                                  "pip install 'mambaseg[torch]'", name=exc.name) from None


def _public(name):
    if name in ("create_model", "list_models", "from_pretrained"):
        from mambaseg import models

        return getattr(models, name)
    if name == "segment":
        from mambaseg.inference.predict import segment

        return segment
    if name == "segment_volume":
        from mambaseg.inference.volumes import segment_volume

        return segment_volume
    raise AttributeError(f"module 'mambaseg' has no attribute {name!r}")
