"""mambaseg: brain-tumour segmentation in MRI with Mamba models and their baselines.

Public API::

    import mambaseg
    mambaseg.list_models()
    model = mambaseg.create_model("ulvm_unet", in_channels=3, num_classes=1)
    model = mambaseg.from_pretrained("path/to/checkpoint_dir")
    masks = mambaseg.segment(["slice.tif"])  # with the default shipped model
    mask_img, summary = mambaseg.segment_volume("case.nii.gz")  # NIfTI (pip install 'mambaseg[nifti]')
"""
__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "from_pretrained", "segment",
           "segment_volume"]


def __getattr__(name):  # lazy: `import mambaseg` stays cheap for the CLI
    if name in ("create_model", "list_models", "from_pretrained"):
        from mambaseg import models

        return getattr(models, name)
    if name == "segment":
        from mambaseg.engine.predict import segment

        return segment
    if name == "segment_volume":
        from mambaseg.engine.volumes import segment_volume

        return segment_volume
    raise AttributeError(f"module 'mambaseg' has no attribute {name!r}")
