"""`mambaseg demo`: segment the bundled LGG sample end to end and print the Dice.

With shipped weights: segment the sample with the default shipped model (``models.pretrained.
default_shipped``: possibly an ensemble of cross-validation fold models; masks + overlays, Dice
against the sample's masks). With ``--train`` (or when the package ships no weights): first
train a small model for a few epochs on the sample on the CPU, then segment with it.
"""
from __future__ import annotations

from pathlib import Path

from mambaseg.cli._common import add_command, add_device, add_output
from mambaseg.errors import MambasegError

#: marks a folder written by the demo, which the demo may therefore overwrite
MARKER = ".mambaseg-demo"


def bundled_sample() -> Path | None:
    """The bundled sample (examples/lgg-sample/kaggle_3m of a source checkout), if present."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "examples" / "lgg-sample" / "kaggle_3m"
        if cand.is_dir():
            return cand
    return None


def register(sub) -> None:
    p = add_command(sub, "demo", "Segment the bundled sample images and print the Dice.",
                    "mambaseg demo -o runs/demo")
    p.add_argument("--data", help="dataset to segment (default: the bundled 3-patient sample)")
    add_output(p, metavar="DIR", default=Path("mambaseg-demo"),
               help="output folder (default: ./mambaseg-demo); a folder an earlier demo "
                    "wrote is replaced, any other existing folder is refused")
    p.add_argument("--train", action="store_true",
                   help="train a small model on the data first instead of using shipped weights")
    p.add_argument("--model", default="ulvm_unet", help="model to train with --train")
    p.add_argument("--epochs", type=int, default=30, help="epochs with --train (default 30)")
    add_device(p)
    p.set_defaults(func=run)


def _out_dir(path: str) -> tuple[Path, bool]:
    out = Path(path)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise MambasegError(f"{out} exists and was not written by 'mambaseg demo'; "
                            "choose another folder with -o")
    return out, out.exists()


def run(args) -> int:
    from mambaseg.data.verify import verify_dataset
    from mambaseg.inference.predict import run_predict
    from mambaseg.models.pretrained import default_shipped

    data = Path(args.data) if args.data else bundled_sample()
    if data is None:
        raise MambasegError("the bundled sample is not here (it lives in a source checkout under "
                            "examples/lgg-sample); pass --data PATH")
    out, existed = _out_dir(args.output)
    report = verify_dataset(data)
    print(report.summary())
    if not report.ok:
        raise MambasegError(f"{data} has problems; run 'mambaseg data verify {data}'")

    checkpoint, model, info = None, default_shipped(), None
    if args.train or model is None:
        checkpoint, model = _train(data, out, args), None
        print(f"trained {args.model} for {args.epochs} epochs: {checkpoint}")
    else:
        info = _describe_shipped(model)
        print(f"using the shipped {model} weights{info['about']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    res = run_predict(data, out / "predictions", model=model, checkpoint=checkpoint,
                      overlay=True, device=args.device, overwrite=existed, progress=True)
    dice = res.summary.get("dice") or {}
    print(f"segmented {len(res.written)} slices into {out / 'predictions'} "
          f"(masks *_mask.png, overlays *_overlay.png)")
    if dice:
        print(f"Dice against the sample's masks: pooled {dice['pooled']:.4f}, "
              f"per-slice mean {dice['slice_mean']:.4f} over {dice['n']} slices")
        if checkpoint is not None:
            print("note: the model was trained on part of these slices, so this Dice is optimistic")
        elif info and info["note"] and args.data is None:
            print(info["note"])
    return res.exit_status


def _describe_shipped(name: str) -> dict:
    """``about``: what the shipped weights ``name`` are (appended to "using the shipped NAME
    weights"); ``note``: why the sample's Dice is optimistic for a cross-validation ensemble
    (its fold models were trained on every patient but one fold's), else None."""
    from mambaseg.models.pretrained import shipped_models

    info = shipped_models().get(name) or {}
    about, note = "", None
    if info.get("kind") == "ensemble":
        k = info.get("members")
        about = f": an ensemble of {k} {info['model_name']} models"
        if info.get("cv_dice") is not None:
            n = f" over {info['cv_patients']} patients" if info.get("cv_patients") else ""
            folds = info.get("cv_folds") or k
            about += (f" (the fold models of a {folds}-fold cross-validation; out-of-fold "
                      f"per-patient Dice {info['cv_dice']:.4f}{n})")
            note = (f"note: where the cross-validation's data held the sample's patients (the "
                    f"full LGG dataset does), {folds - 1} of its {folds} fold models were "
                    f"trained on each of them, so this Dice is optimistic; the out-of-fold Dice "
                    f"{info['cv_dice']:.4f} estimates the Dice on new patients")
    elif info.get("test_dice") is not None:
        about = f" (test per-patient Dice {info['test_dice']:.4f})"
    return {"about": about, "note": note}


def _train(data: Path, out: Path, args) -> Path:
    from mambaseg.training.config import TrainConfig
    from mambaseg.training.trainer import train

    run_dir = out / "run"
    cfg = TrainConfig(model=args.model, data=data, out=run_dir, split="patient",
                      epochs=args.epochs, batch_size=4, lr=3e-3, optimizer="adamw",
                      weight_decay=1e-2, loss="bce_dice", augment=True, seed=0,
                      device=args.device, overwrite=True, checkpoint="last")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    result = train(cfg)
    return result.last_dir
