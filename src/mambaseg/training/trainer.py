"""``train(config)``: one training run, from settings to checkpoints.

A run folder gets ``config.json`` (fully resolved settings), ``metrics.jsonl`` (one line per
epoch), ``progress.png`` (redrawn each epoch), ``last/`` (every epoch, with ``train_state.pt``)
and ``best/`` (best validation Dice). ``config.checkpoint`` records which of the two the
evaluation protocol asks for (``last`` for the paper preset); at the end of the run
``config.json`` also records the one it gets, ``evaluation_checkpoint`` (``last`` when ``best``
was asked for but no epoch had a validation score) and its ``evaluation_epoch``: what
``TrainResult.checkpoint_dir``, ``crossval`` and ``evaluate --checkpoint RUN_DIR`` evaluate.

Resuming (``resume=True``) continues from ``last/`` exactly: model, optimizer, scheduler, RNG
states (torch CPU/CUDA, numpy, python, and the explicit shuffling and augmentation generators)
and the metric history are restored, so on the CPU (deterministic algorithms) the final weights
and metrics equal those of an uninterrupted run with the same seed.

No silent garbage: an image with NaN/Inf pixels stops the run at loading (DataError naming the
file), and a NaN/Inf training loss stops it after that epoch's training pass, before anything
of the epoch is written (MambasegError naming the epoch, the step and the batch's slices):
``last/`` keeps the previous epoch. The JSON files are strict (no bare NaN/Infinity).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from torch.nn.parallel import DistributedDataParallel as DDP

from mambaseg._version import __version__
from mambaseg.data.augment import augment_batch
from mambaseg.data.channels import channel_names
from mambaseg.data.io import NonFiniteError
from mambaseg.data.splits import resolve_split
from mambaseg.device import device_name, resolve_device
from mambaseg.errors import DataError, MambasegError
from mambaseg.files import json_ready, write_json
from mambaseg.models import count_parameters, from_pretrained, get_entry
from mambaseg.progress import progress_bar
from mambaseg.training import build as B
from mambaseg.training import distributed as D
from mambaseg.training import graphs as G
from mambaseg.training import history as P
from mambaseg.training import rundir as R
from mambaseg.training import train_state as C
from mambaseg.training.config import TrainConfig, resolved_settings
from mambaseg.training.loop import epoch_batches, train_epoch, validate
from mambaseg.training.losses import get_loss

__all__ = ["TrainConfig", "TrainResult", "train"]

#: seconds to sleep after each training step (tests that interrupt a run mid-epoch)
SLEEP_ENV = "MAMBASEG_TEST_SLEEP_PER_STEP"


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    #: the checkpoint the evaluation protocol uses (``last`` or ``best``)
    checkpoint_dir: Path
    last_dir: Path
    best_dir: Path | None
    epochs: int
    best_epoch: int | None
    best_val_dice: float | None
    history: list[dict[str, Any]]
    settings: dict[str, Any]
    #: False on the non-zero ranks of a torchrun job (they write nothing)
    is_main: bool = True


@contextlib.contextmanager
def _numerics(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on the CPU, cuDNN autotuning on CUDA; restored afterwards."""
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    bench = torch.backends.cudnn.benchmark
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        torch.backends.cudnn.benchmark = bench


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _normalised(cfg: TrainConfig) -> TrainConfig:
    cfg = dataclasses.replace(cfg)
    cfg.split = cfg.split or "paper"
    cfg.seed = 0 if cfg.seed is None else int(cfg.seed)
    if cfg.data is not None:
        cfg.data = R.normalise("data", cfg.data)
    cfg.split = R.normalise("split", cfg.split)
    return cfg


def _environment(device: torch.device, info: D.DistInfo) -> dict[str, Any]:
    return {
        "device_type": device.type,
        "device_name": device_name(device),
        "world_size": info.world_size,
        "mambaseg_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "cuda_version": torch.version.cuda,
        "host": platform.node(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def train(config: TrainConfig,
          on_epoch_end: Callable[[dict[str, Any], int], None] | None = None) -> TrainResult:
    """Train ``config.model`` on ``config.data``; see the module docstring.

    ``on_epoch_end(record, epochs)`` is called (rank 0 only) after each epoch with its metrics
    record and the total number of epochs.
    Under ``torchrun`` this runs DistributedDataParallel (see :mod:`.distributed`).
    """
    info = D.detect()
    run_dir = Path(config.out)
    cfg = R.resume_config(run_dir, config) if config.resume else _normalised(config)
    if not cfg.model:
        raise MambasegError("no model given (--model NAME)")
    get_entry(cfg.model)  # unknown names: MambasegError listing the valid ones
    settings = resolved_settings(cfg)
    B.check_data_path(cfg.data)
    device = resolve_device(cfg.device, info.local_rank if info.enabled else None)
    if settings["batch_size"] < info.world_size:
        raise MambasegError(f"--batch-size {settings['batch_size']} is smaller than the number of "
                            f"processes ({info.world_size}); each needs at least one sample")
    if not cfg.resume:
        R.check_new_run(run_dir, cfg.overwrite)
    R.check_writable(run_dir)
    D.init(info, device)
    try:
        with _numerics(device):
            return _run(cfg, settings, device, info, run_dir, on_epoch_end)
    finally:
        D.shutdown(info)


def _run(cfg: TrainConfig, s: dict[str, Any], device: torch.device, info: D.DistInfo,
         run_dir: Path, on_epoch_end) -> TrainResult:
    main = info.is_main
    D.barrier(info)  # every rank has checked the folder before rank 0 changes it
    if main and not cfg.resume and cfg.overwrite:
        R.clear_run(run_dir)
    amp = cfg.amp or ("bf16" if device.type == "cuda" else "off")
    amp_dtype = torch.bfloat16 if amp == "bf16" else None
    channels_last = B.use_channels_last(cfg.model, device, cfg.channels_last)

    _seed_everything(cfg.seed)
    try:
        data, counts = B.load_split_arrays(cfg.data, cfg.split, cfg.fold, s["image_size"],
                                           device, channels_last, progress=cfg.progress and main,
                                           split_seed=cfg.split_seed, channels=cfg.channels)
    except NonFiniteError as exc:
        raise DataError(f"{exc}; training never reads such an image: fix or remove the file "
                        "('mambaseg data verify' lists every one)") from None
    train_data, val_data = data["train"], data["val"]
    raw = _model(cfg, train_data, device, channels_last, run_dir / R.LAST)
    graphs = G.use_cuda_graphs(cfg.cuda_graphs, device, info.world_size, cfg.compile)
    optimizer = B.build_optimizer(raw.parameters(), s["optimizer"], float(s["lr"]),
                                  float(s["weight_decay"]), device, capturable=graphs)
    scheduler = B.build_scheduler(optimizer, s["scheduler"], int(s["epochs"]),
                                  int(s["warmup_epochs"]))
    weights = train_data.sample_weights(s["tumour_fraction"])
    loss_fn = get_loss(s["loss"])
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + 17 + info.rank)
    generators = {"shuffle": shuffle_gen, "augment": aug_gen}
    _, height, width = train_data.images.shape[1:]
    full = _full_settings(cfg, s, device, info, amp, channels_last, train_data, counts, raw)
    full["cuda_graphs_used"] = graphs
    meta = {"run": str(run_dir), "model": cfg.model, "preset": cfg.preset, "loss": s["loss"],
            "image_size": int(height), "protocol_checkpoint": s["checkpoint"],
            "channels": channel_names(cfg.channels)}

    prog = _Progress(run_dir, main)
    if cfg.resume:
        prog.restore(C.load_train_state(run_dir / R.LAST), optimizer, scheduler, generators,
                     device, info, raw, meta)
    elif main:
        write_json(run_dir / R.CONFIG, full, indent=2, default=str)

    train_model: torch.nn.Module = raw
    if info.enabled:
        train_model = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None)
    eval_model: torch.nn.Module = raw  # validation runs unwrapped: no DDP collectives
    if cfg.compile:  # static shapes: the last, smaller batch gets its own graph
        train_model = torch.compile(train_model, dynamic=False)
        eval_model = torch.compile(raw, dynamic=False)

    step = G.GraphedTrainStep(raw, optimizer, loss_fn, amp_dtype) if graphs else None
    forward = G.GraphedForward(raw, amp_dtype) if graphs else None
    augment = augment_batch if s["augment"] else None
    step_delay = float(os.environ.get(SLEEP_ENV, "0") or 0)
    epochs, batch_size = int(s["epochs"]), int(s["batch_size"])
    val_bs = int(cfg.val_batch_size or batch_size)

    for epoch in range(prog.epoch + 1, epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        batches = epoch_batches(len(train_data), batch_size, shuffle_gen, device, info, weights)
        with progress_bar(len(batches), f"epoch {epoch}/{epochs}", cfg.progress and main) as bar:
            t = train_epoch(train_model, train_data, batches, optimizer, loss_fn,
                            amp_dtype=amp_dtype, augment=augment, aug_generator=aug_gen,
                            info=info, bar=bar, step_delay=step_delay, step=step)
            if t.bad_step is not None:  # before anything of this epoch is written
                raise MambasegError(_nonfinite_loss(cfg, epoch, len(batches), t, prog))
            v = validate(eval_model, val_data, val_bs, loss_fn, amp_dtype=amp_dtype, info=info,
                         forward=forward)
        if scheduler is not None:
            scheduler.step()
        record = {"epoch": epoch, "train_loss": t.loss, "val_loss": v.loss, "val_dice": v.dice,
                  "val_dice_patient": v.dice_patient,
                  "lr": lr, "epoch_time_s": t.seconds + v.seconds, "train_time_s": t.seconds,
                  "val_time_s": v.seconds, "images_per_s": t.images / max(t.seconds, 1e-9),
                  "train_images": t.images, "checkpoint_time_s": None,
                  "cuda_graphs": step is not None and step.failed is None}
        rngs = D.gather_objects(C.rng_state(device, generators), info)
        prog.end_epoch(record, raw, optimizer, scheduler, rngs, info, meta,
                       title=f"{cfg.model}  ({run_dir.name})", select=s["select"])
        if main and on_epoch_end is not None:
            on_epoch_end(record, epochs)
    D.barrier(info)
    result = prog.result(s["checkpoint"], epochs, full)
    if main:
        _record_evaluation_checkpoint(run_dir, result)
    return result


def _record_evaluation_checkpoint(run_dir: Path, result: TrainResult) -> None:
    """Add the checkpoint the protocol evaluates (``best`` or ``last``) and its epoch to the
    run's ``config.json`` (kept as written at the run's start otherwise)."""
    config = R.read_config(run_dir)
    best = result.best_dir is not None and result.checkpoint_dir == result.best_dir
    config["evaluation_checkpoint"] = result.checkpoint_dir.name
    last = result.history[-1]["epoch"] if result.history else None
    config["evaluation_epoch"] = result.best_epoch if best else last
    write_json(run_dir / R.CONFIG, config, indent=2, default=str)


def _nonfinite_loss(cfg: TrainConfig, epoch: int, steps: int, t, prog: "_Progress") -> str:
    """The message for a NaN/Inf training loss: epoch, step, the batch's slices (or indices)."""
    batch = t.bad_batch or []
    try:
        train = resolve_split(cfg.data, cfg.split, seed=cfg.split_seed, fold=cfg.fold)["train"]
        names = [train[i].rel for i in batch]
    except Exception:  # noqa: BLE001 - the message must not fail: fall back to indices
        names = []
    shown = names or [str(i) for i in batch]
    what = "slices" if names else "training slice indices"
    listed = ", ".join(shown[:8]) + (f" and {len(shown) - 8} more" if len(shown) > 8 else "")
    kept = (f"{prog.last_dir} still holds epoch {prog.epoch}, the last good checkpoint"
            if prog.epoch else "no checkpoint was written")
    return (f"the training loss became NaN/Inf at epoch {epoch}, step {t.bad_step} of {steps} "
            f"(batch of {what} {listed}); training stopped and {kept}. Check the data with "
            "'mambaseg data verify', or lower --lr")


def _model(cfg: TrainConfig, train_data, device: torch.device, channels_last: bool,
           last_dir: Path) -> torch.nn.Module:
    """A fresh model (seeded), or the one in ``last/`` when resuming; on ``device``, checked
    against the training images' size."""
    in_channels, height, _ = train_data.images.shape[1:]
    if cfg.resume:
        raw = from_pretrained(last_dir, **_runtime_kwargs(cfg.model_kwargs))
    else:
        raw = B.build_model(cfg.model, int(in_channels), cfg.model_kwargs)
    raw.input_size = int(height)  # recorded in checkpoints' preprocessing
    raw.to(device)
    if channels_last:
        raw.to(memory_format=torch.channels_last)
    if hasattr(raw, "check_input"):
        raw.check_input(train_data.batch(torch.zeros(1, dtype=torch.long, device=device))[0])
    return raw


def _full_settings(cfg, s, device, info, amp, channels_last, train_data, counts, raw
                   ) -> dict[str, Any]:
    """Everything ``config.json`` records: settings, data sizes, device and versions."""
    in_channels, height, width = train_data.images.shape[1:]
    full = {**dataclasses.asdict(cfg), **s, "amp": amp, "channels_last": channels_last,
            "device": cfg.device, "device_used": str(device), **_environment(device, info),
            "per_rank_batch_size": s["batch_size"] / info.world_size,
            "input_size": [int(height), int(width)], "in_channels": int(in_channels),
            "train_slices": counts["train"], "val_slices": counts["val"],
            "test_slices": counts["test"],
            "num_parameters": count_parameters(raw)}
    for key in ("resume", "overwrite", "progress", "out"):
        full.pop(key, None)
    return full


class _Progress:
    """The run's history and best epoch; writes checkpoints, metrics and the plot (rank 0)."""

    def __init__(self, run_dir: Path, main: bool):
        self.run_dir, self.main = run_dir, main
        self.last_dir, self.best_dir = run_dir / R.LAST, run_dir / R.BEST
        self.history: list[dict[str, Any]] = []
        self.epoch = 0
        self.best_dice: float | None = None
        self.best_epoch: int | None = None

    def restore(self, state, optimizer, scheduler, generators, device, info, raw, meta) -> None:
        """Take up a saved training state (all ranks); rank 0 rewrites metrics.jsonl from it
        (dropping epochs after the checkpoint) and repairs ``best/`` if a crash came between
        writing ``last/`` and ``best/``."""
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        self.best_dice, self.best_epoch = state["best_val_dice"], state["best_epoch"]
        rngs = state["rng"]
        C.set_rng_state(rngs[info.rank] if info.rank < len(rngs) else rngs[0], device, generators)
        if not self.main:
            return
        P.write_metrics(self.run_dir / R.METRICS, self.history)
        if self.best_epoch == self.epoch and _saved_epoch(self.best_dir) != self.epoch:
            last = self.history[-1]
            C.save_checkpoint(self.best_dir, raw, {"training": {
                **meta, "epoch": self.epoch, "val_dice": last["val_dice"],
                "val_loss": last["val_loss"]}})

    def end_epoch(self, record, raw, optimizer, scheduler, rngs, info, meta, title,
                  select: str = "dice") -> None:
        """Track the best epoch by the validation score ``select`` (``val_dice`` or
        ``val_dice_patient``); on rank 0 write last/ (then best/ if improved), metrics, plot."""
        dice = record[f"val_{select}"]
        improved = dice is not None and (self.best_dice is None or dice > self.best_dice)
        if improved:
            self.best_dice, self.best_epoch = dice, record["epoch"]
        self.epoch = record["epoch"]
        if not self.main:
            return
        t0 = time.perf_counter()
        self.history.append(record)
        ckpt_meta = json_ready({"training": {**meta, "epoch": record["epoch"], "val_dice": dice,
                                             "val_loss": record["val_loss"]}})
        state = {"format": C.STATE_FORMAT, "epoch": record["epoch"],
                 "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "scaler": None,  # bf16 autocast needs no gradient scaler
                 "best_val_dice": self.best_dice, "best_epoch": self.best_epoch,
                 "history": self.history, "rng": rngs, "world_size": info.world_size}
        # last/ first: if a crash follows, resuming rebuilds best/ from last/ (same weights)
        C.save_checkpoint(self.last_dir, raw, ckpt_meta, train_state=state)
        if improved:
            C.save_checkpoint(self.best_dir, raw, ckpt_meta)
        record["checkpoint_time_s"] = time.perf_counter() - t0
        P.write_metrics(self.run_dir / R.METRICS, self.history)
        P.plot_progress(self.run_dir / R.PROGRESS, self.history, title=title)

    def result(self, checkpoint: str, epochs: int, full: dict[str, Any]) -> TrainResult:
        has_best = self.best_epoch is not None and self.best_dir.is_dir()
        chosen = self.best_dir if checkpoint == "best" and has_best else self.last_dir
        return TrainResult(run_dir=self.run_dir, checkpoint_dir=chosen, last_dir=self.last_dir,
                           best_dir=self.best_dir if has_best else None, epochs=epochs,
                           best_epoch=self.best_epoch, best_val_dice=self.best_dice,
                           history=self.history, settings=full, is_main=self.main)


def _saved_epoch(folder: Path) -> int | None:
    """The training epoch recorded in a checkpoint's config.json (None if unknown)."""
    try:
        meta = json.loads((folder / "config.json").read_text())["metadata"]["training"]
        return int(meta["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _runtime_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Options that change how a model runs, not what it is (allowed on from_pretrained)."""
    return {k: v for k, v in kwargs.items() if k == "scan_backend"}
