"""What runs a trained model: ``loading`` (a checkpoint or ensemble folder, several of them, or
shipped weights: the one model resolver), ``runner`` (probabilities at the model's training
scale), ``ensemble``, ``postprocess``, ``evaluate`` (metrics on a split, ``summary.json``,
``predictions``), ``predict`` (image files; ``predict_inputs`` checks them), ``volumes`` (NIfTI;
``montage``), ``export`` (ONNX) and ``onnx_runtime`` (``predict --onnx`` without torch).

The package imports nothing itself: the torch-free modules (``onnx_runtime``, ``predict_inputs``,
``postprocess``, ``predictions``, ``model_info``) stay importable without torch.
"""
