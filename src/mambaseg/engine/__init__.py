"""Training, evaluation and prediction: losses, metrics, trainer, inference."""
