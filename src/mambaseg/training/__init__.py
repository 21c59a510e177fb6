"""What trains a model: ``trainer.train`` (one run: settings in ``config``/``presets``, data on
the device in ``build``, the epoch loops in ``loop``, CUDA-graph steps in ``graphs``, DDP in
``distributed``, losses, the run folder in ``rundir``, resumable state in ``train_state``,
metrics.jsonl and progress.png in ``history``), ``crossval`` (K-fold cross-validation and its
out-of-fold result) and ``ship`` (a cross-validation's fold models as the package's weights).

The package imports nothing itself: import the module you need.
"""
