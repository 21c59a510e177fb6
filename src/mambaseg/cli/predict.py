"""`mambaseg predict`: segment image files or folders into mask PNGs, NIfTI volumes into mask
volumes."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mambaseg.cli._common import (add_command, add_device, check_threshold_and_batch,
                                  resolve_checkpoints)
from mambaseg.cli.evaluate import (add_postprocess_options, describe_postprocess,
                                   postprocess_from_args)

#: notes and skipped files listed one by one up to this many, then summarised
SHOW = 10


def register(sub) -> None:
    """Add the `predict` subcommand."""
    p = add_command(sub, "predict", "Segment tumours in MRI slices: an image file, a folder "
                    "(searched recursively) or a dataset root. Writes OUTDIR/<name>_mask.png "
                    "(0/255, the input's size) per image and OUTDIR/summary.json; where "
                    "ground-truth masks (<name>_mask.*) sit beside the images, prints the Dice "
                    "against them. NIfTI volumes (.nii, .nii.gz; a case's channels on the last "
                    "axis or in CASE_0000..0002 files; a FLAIR volume alone for a FLAIR-only "
                    "model) give OUTDIR/<case>_mask.nii.gz on the input's grid and a per-case "
                    "record in summary.json (tumour mL, components, slices; docs/volumes.md). "
                    "With no --model or --checkpoint, the shipped model matching the input's "
                    "channels runs: RGB slices and 3-channel volumes the default one, grayscale "
                    "(FLAIR) slices and one-channel volumes a shipped FLAIR-only one, else an "
                    "error (exit status 2); a folder mixing grayscale and RGB slices is refused: "
                    "segment them separately or name one model. "
                    "Exit status 1 if an input could not be read.",
                    "mambaseg predict -i examples/lgg-sample -o runs/predictions --overlay")
    p.add_argument("-i", "--input", type=Path, required=True, metavar="INPUT",
                   help="image file, folder of images, dataset root (kaggle_3m), NIfTI file "
                        "or folder of NIfTI volumes")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR",
                   help="folder to write into (created; must not be inside INPUT nor hold an "
                        "input image)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="NAME", help="use the shipped weights of this model "
                     "(default: the shipped model for the input's channels: the default one "
                     "for RGB, a FLAIR-only one for grayscale; see 'mambaseg models')")
    src.add_argument("--checkpoint", type=Path, metavar="DIR", nargs="+",
                     help="checkpoint directory written by 'mambaseg train' (a training run "
                     "folder stands for the checkpoint it evaluates, best/ by default), or "
                     "ensemble folder; several: average their probabilities (an ensemble)")
    src.add_argument("--onnx", type=Path, metavar="FILE",
                     help="run this file written by 'mambaseg export' in onnxruntime, without "
                     "PyTorch (same pre- and post-processing; pip install 'mambaseg[onnx]')")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    p.add_argument("--probabilities", action="store_true",
                   help="also write <name>_prob.png (probability x 255); for a volume, "
                        "<case>_prob.nii.gz (float32)")
    p.add_argument("--overlay", action="store_true",
                   help="also write <name>_overlay.png (the image with the mask in red); for a "
                        "volume, a montage of its slices with tumour, outlined")
    add_device(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default "
                   "8; PyTorch on the CPU runs at most 2 at once, faster per slice there)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-resize", dest="rescale", action="store_false",
                   help="run the model at each image's own scale (zero padding only) instead of "
                        "resizing it to the size the model was trained at and the mask back")
    p.add_argument("--nan-policy", choices=("error", "zero"), default="error",
                   help="images with NaN/Inf pixels: error (default: skipped, or exit status 2 "
                        "for a single input) or zero (replace them by 0, noted in summary.json)")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, metavar="N",
                   help="skip an image the model would run on at more than N pixels, after "
                        "resizing and padding (default 4096*4096; matters with --no-resize)")
    add_postprocess_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_threshold_and_batch(args)
    common = dict(threshold=args.threshold, probabilities=args.probabilities,
                  overlay=args.overlay, device=args.device, batch_size=args.batch_size,
                  overwrite=args.overwrite, progress=not args.no_progress,
                  rescale=args.rescale, postprocess=postprocess_from_args(args),
                  nan_policy=args.nan_policy, max_pixels=args.max_pixels)
    from mambaseg.data.nifti import holds_volumes

    volumes = holds_volumes(args.input)
    if args.onnx is not None and volumes:
        from mambaseg.errors import MambasegError

        raise MambasegError(f"{args.input}: NIfTI volumes are segmented with PyTorch models "
                            "(--model or --checkpoint); --onnx takes slice images")
    if args.onnx is not None:  # onnxruntime: this path never imports torch
        from mambaseg.inference.onnx_runtime import run_predict_onnx

        res = run_predict_onnx(args.input, args.output, args.onnx, **common)
    else:
        from mambaseg.inference.predict import run_predict

        res = run_predict(args.input, args.output, model=args.model,
                          checkpoint=resolve_checkpoints(args.checkpoint), **common)
    s = res.summary
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if volumes:
        return _print_volumes(res)
    _print_notes(res.written)
    for item in res.skipped[:SHOW]:
        print(f"skipped {item['input']}: {item['reason']}", file=sys.stderr)
    if len(res.skipped) > SHOW:
        print(f"... and {len(res.skipped) - SHOW} more skipped (see summary.json)", file=sys.stderr)
    removed = s.get("postprocess_removed_pixels")
    print(describe_postprocess(s) + (f": {removed} predicted pixel(s) removed" if removed else ""))
    c = s["counts"]
    print(f"{s['model']} ({s['checkpoint']}, {s['device']}): {c['written']} of {c['inputs']} "
          f"image(s) segmented into {res.outdir}" + (f", {c['skipped']} skipped" if c["skipped"]
                                                     else ""))
    if len(res.written) == 1:
        r = res.written[0]
        print(f"{r['input']}: {r['tumour_pixels']} tumour pixel(s) -> {r['mask']}")
    d = s["dice"]
    if d:
        print(f"Dice against the {d['n']} ground-truth mask(s) found: pooled {d['pooled']:.4f}, "
              f"per-slice mean {d['slice_mean']:.4f} ({d['n_tumour']} with tumour)")
    print(f"wrote {res.outdir / 'summary.json'}")
    return res.exit_status


def _print_notes(records: list[dict]) -> None:
    noted = [r for r in records if r["notes"]]
    for r in noted[:SHOW]:
        print(f"note: {r['input']}: {r['notes']}", file=sys.stderr)
    if len(noted) > SHOW:
        kinds = sorted({r["notes"] for r in noted})
        print(f"note: ... {len(noted) - SHOW} more converted image(s) ({'; '.join(kinds)})",
              file=sys.stderr)


def _print_volumes(res) -> int:
    """What ``predict`` prints for NIfTI volumes (``inference.volumes``)."""
    s = res.summary
    for r in res.written:
        for n in r["notes"][:SHOW]:
            print(f"note: {r['case']}: {n}", file=sys.stderr)
    for item in res.skipped[:SHOW]:
        print(f"skipped {item['input']}: {item['reason']}", file=sys.stderr)
    if len(res.skipped) > SHOW:
        print(f"... and {len(res.skipped) - SHOW} more skipped (see summary.json)", file=sys.stderr)
    for r in res.written[:SHOW]:
        dice = f", Dice {r['dice']:.4f} against {r['truth']}" if "dice" in r else ""
        print(f"{r['case']}: {r['tumour_volume_ml']:.2f} mL of tumour in {r['components']} "
              f"component(s) on {len(r['slices_with_tumour'])} slice(s) -> {r['mask']}{dice}")
    c = s["counts"]
    print(f"{s['model']} ({s['checkpoint']}, {s['device']}): {c['written']} of {c['inputs']} "
          f"volume(s) segmented into {res.outdir}"
          + (f", {c['skipped']} skipped" if c["skipped"] else ""))
    print(f"wrote {res.outdir / 'summary.json'}")
    return res.exit_status
