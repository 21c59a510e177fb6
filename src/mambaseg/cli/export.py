"""`mambaseg export`: write a model, a checkpoint or an ensemble as one ONNX file."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mambaseg.cli._common import add_command, add_output, resolve_checkpoints

#: ``inference.export.DEFAULT_OPSET`` (kept here so that --help needs no torch import)
DEFAULT_OPSET = 17


def register(sub) -> None:
    """Add the `export` subcommand."""
    p = add_command(sub, "export", "Export a model to ONNX, Mamba models and fold ensembles "
                    "included (an ensemble is one graph averaging its members' probabilities). "
                    "The graph takes 'image' float32 (batch, channels, height, width) in [0, 1] "
                    "of any batch and valid size and returns 'logits' (batch, 1, height, width), "
                    "sigmoid(logits) = tumour probability; its metadata record the training "
                    "scale, channels, normalisation, threshold and recommended post-processing, "
                    "which 'mambaseg predict --onnx FILE' uses with onnxruntime (no PyTorch).",
                    "mambaseg export --model ulvm_unet_v6 -o runs/ulvm_unet_v6.onnx")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="NAME", help="export the shipped weights of this model "
                     "or shipped ensemble (see 'mambaseg models')")
    src.add_argument("--checkpoint", type=Path, metavar="DIR", nargs="+",
                     help="checkpoint directory written by 'mambaseg train', or ensemble folder; "
                     "several: one graph averaging their probabilities (an ensemble)")
    add_output(p, metavar="FILE", required=True, old=(), help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset version (default {DEFAULT_OPSET}; every model exports at "
                        "14 to 20, all but segformer at 11 too)")
    p.add_argument("--fp16", action="store_true",
                   help="store the weights as float16 (half the file; the shipped weights are "
                        "float16 already); the graph still computes in float32")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip running the file in onnxruntime against PyTorch after writing it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambaseg.inference.export import run_export

    res = run_export(args.output, model=args.model,
                     checkpoint=resolve_checkpoints(args.checkpoint),
                     opset=args.opset, fp16=args.fp16, overwrite=args.overwrite,
                     check=args.check)
    m = res.metadata
    members = int(m["members"])
    what = f"{m['model_name']}" + (f" ({members}-model ensemble)" if members > 1 else "")
    print(f"exported {what} from {m['source']} to {res.path} ({res.size_bytes / 1e6:.1f} MB, "
          f"opset {res.opset}, {m['weights_dtype']} weights, {res.seconds:.1f} s)")
    print(f"input '{m['input_name']}': float32 (batch, {m['in_channels']}, height, width) in "
          f"[0, 1]; height and width multiples of {m['size_multiple']}, at least "
          f"{m['min_size']}; trained at {m['input_size']}")
    print(f"output '{m['output_name']}': (batch, 1, height, width) logits, tumour where "
          f"sigmoid(logits) > {m['threshold']}; recommended post-processing: "
          f"{m['postprocess_description']}")
    for note in res.notes:
        print(f"note: {note}")
    if res.max_abs_diff is not None:
        print(f"checked: onnxruntime's probabilities match PyTorch's within "
              f"{res.max_abs_diff:.2g} at "
              f"{'x'.join(map(str, json.loads(m['example_size'])))}")
    return 0
