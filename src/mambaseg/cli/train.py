"""`mambaseg train`: train a model; parsing and printing only (the work is in training.trainer)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mambaseg.cli._common import add_command, add_device, add_option, add_output
from mambaseg.errors import MambasegError


def register(sub) -> None:
    """Add the `train` subcommand."""
    p = add_command(
        sub, "train",
        "Train a model on a split of the dataset. Writes RUN_DIR/config.json, metrics.jsonl, "
        "progress.png and the checkpoints last/ and best/. Under 'torchrun --nproc_per_node=N "
        "-m mambaseg train ...' it trains with DistributedDataParallel (--batch-size is the "
        "global batch, split over the N processes).",
        "mambaseg train --model ulvm_unet_v2 --data examples/lgg-sample --split patient "
        "--epochs 1 --batch-size 4 --device cpu -o runs/quick")
    add_model_and_data(p)
    p.add_argument("--split", help="paper (default), patient, or a split JSON file")
    p.add_argument("--fold", type=int, help="fold of a K-fold split file")
    p.add_argument("--split-seed", type=int, help="seed of the paper/patient split (default 37)")
    add_output(p, metavar="RUN_DIR", required=True, help="run folder")
    add_training_options(p)
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from "
                   "its last/ checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in RUN_DIR")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def add_model_and_data(p: argparse.ArgumentParser) -> None:
    """--model and --data, optional when resuming (`train` and `crossval`)."""
    p.add_argument("--model", help="model name (see 'mambaseg models'); optional with --resume")
    p.add_argument("--data", type=Path, help="dataset folder (kaggle_3m, its parent or a folder of "
                   "image/mask pairs); optional with --resume")


def add_training_options(p: argparse.ArgumentParser) -> None:
    """The hyperparameter, device and model options shared by `train` and `crossval`."""
    p.add_argument("--preset", choices=("paper", "recommended", "none"),
                   help="paper: each model's settings as in the paper (100 epochs, seed batch "
                        "size/loss/optimizer, no schedule, last-epoch weights); recommended: our "
                        "recipe for unseen patients (augmentation, tumour oversampling, warm-up "
                        "+ cosine, best validation per-patient Dice); explicit options override it")
    p.add_argument("--epochs", type=int, help="epochs (default 100)")
    p.add_argument("--batch-size", type=int, help="global batch size (default 16)")
    p.add_argument("--lr", type=float, help="learning rate (default 3e-4)")
    p.add_argument("--optimizer", choices=("adam", "adamw"), help="optimizer (default adamw)")
    p.add_argument("--weight-decay", type=float, help="weight decay (default 1e-2)")
    p.add_argument("--loss", choices=("dice", "bce_dice", "bce"),
                   help="dice: seed Dice (batch-pooled, smooth 100); bce_dice: BCE + per-sample "
                        "Dice (smooth 1); bce: BCE with logits (default bce_dice)")
    p.add_argument("--scheduler", choices=("none", "cosine"), help="learning-rate schedule "
                   "(default none)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random flips, rotation, zoom and intensity jitter (default off)")
    p.add_argument("--channels", choices=("all", "flair"), help="MRI channels to train on: all "
                   "(default: pre-contrast, FLAIR, post-contrast, the RGB slices) or flair "
                   "(channel 1 alone: a 1-channel model for FLAIR-only scans); recorded in "
                   "config.json and the checkpoints, so evaluate and predict feed the same")
    p.add_argument("--image-size", type=int, help="resize images and masks to SIZE x SIZE "
                   "(default: their own size; 224 for segformer with --preset paper)")
    p.add_argument("--warmup-epochs", type=int, help="linear learning-rate warm-up before the "
                   "cosine schedule (default 0)")
    p.add_argument("--tumour-fraction", type=float, metavar="P", help="oversample: tumour "
                   "slices make up P of each epoch on average (0, the default: as they come)")
    p.add_argument("--select", choices=("dice", "dice_patient"), help="validation score that "
                   "picks best/: pooled Dice (default) or mean per-patient Dice")
    add_option(p, "--eval-checkpoint", deprecated=("--checkpoint",), dest="checkpoint",
               choices=("last", "best"), help="checkpoint the evaluation protocol uses, and "
               "'evaluate --checkpoint RUN_DIR' picks (paper: last; default: best)")
    p.add_argument("--seed", type=int, help="seed of initialisation, data order and "
                   "augmentation (default 0)")
    add_device(p)
    p.add_argument("--amp", choices=("bf16", "off"),
                   help="mixed precision (default: bf16 on CUDA, off on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--cuda-graphs", choices=("auto", "on", "off"), default="auto",
                   help="replay each training and validation step as a CUDA graph (auto, the "
                        "default: on a single GPU without --compile; removes the kernel-launch "
                        "overhead that dominates small models at small batches)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="train in the channels_last memory format (auto, the default: on CUDA "
                        "for the convolution-only models); the same function, another speed")
    p.add_argument("--val-batch-size", type=int, help="validation batch size (default: "
                   "--batch-size)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="option for the model factory, e.g. pretrained=true or "
                        "scan_backend=reference (VALUE read as JSON if it parses); repeatable")


def _model_kwargs(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MambasegError(f"--model-arg {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the parsed arguments describe."""
    from mambaseg.training.config import TrainConfig

    if not args.resume and (args.model is None or args.data is None):
        raise MambasegError("--model and --data are required (except with --resume)")
    return TrainConfig(
        model=args.model, data=args.data, out=args.output, split=args.split,
        fold=getattr(args, "fold", None),
        split_seed=args.split_seed, preset=args.preset, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        weight_decay=args.weight_decay, loss=args.loss, scheduler=args.scheduler,
        augment=args.augment, image_size=args.image_size, checkpoint=args.checkpoint,
        warmup_epochs=args.warmup_epochs, tumour_fraction=args.tumour_fraction,
        select=args.select,
        seed=args.seed, device=args.device, amp=args.amp, compile=args.compile,
        cuda_graphs=args.cuda_graphs,
        channels_last={"on": True, "off": False}.get(getattr(args, "channels_last", "auto")),
        val_batch_size=args.val_batch_size, model_kwargs=_model_kwargs(args.model_arg),
        channels=getattr(args, "channels", None) or "all",
        resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    from mambaseg.training.history import format_record
    from mambaseg.training.trainer import train

    cfg = config_from_args(args)

    def show(record: dict, epochs: int) -> None:
        print(format_record(record, epochs), flush=True)

    result = train(cfg, on_epoch_end=show)
    if result.is_main:
        s = result.settings
        best = ("-" if result.best_val_dice is None
                else f"{result.best_val_dice:.4f} (epoch {result.best_epoch})")
        print(f"trained {s['model']} for {result.epochs} epochs on {s['device_name']}; "
              f"best validation Dice {best}")
        print(f"checkpoint for evaluation ({s['checkpoint']}): {result.checkpoint_dir}")
        print(f"run folder: {result.run_dir}", file=sys.stderr)
    return 0
