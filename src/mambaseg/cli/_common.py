"""Small helpers shared by the subcommand modules: the parser of a subcommand, options with
deprecated spellings, and the options every command spells the same way (``-o/--output``,
``--device``)."""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence


#: modules of the optional extras: top-level module -> (what it is, the extra that installs it)
EXTRAS = {"torch": ("PyTorch", "torch"), "torchvision": ("torchvision", "torch"),
          "safetensors": ("safetensors", "torch"), "matplotlib": ("matplotlib", "torch"),
          "onnx": ("the onnx package", "export"), "onnxruntime": ("onnxruntime", "onnx"),
          "nibabel": ("nibabel", "nifti"), "transformers": ("transformers", "segformer")}


def missing_extra(exc: ImportError, command: str | None = None) -> str | None:
    """The one-line error for a command failing on ``exc``, the import of a module of an
    optional extra, naming the ``pip install 'mambaseg[EXTRA]'`` to run; None for any other
    import error."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if name not in EXTRAS:
        return None
    what, extra = EXTRAS[name]
    if command == "export":         # export's extra brings PyTorch and onnx together
        extra = "export"
    hint = ""
    if name == "torch" and command == "predict":
        hint = " (or predict --onnx FILE with a model written by 'mambaseg export')"
    return (f"this command needs {what}, which is not installed: pip install "
            f"'mambaseg[{extra}]'{hint}")


def add_command(sub, name: str, help: str, example: str | Sequence[str]) -> argparse.ArgumentParser:
    """Add a subcommand parser whose --help ends with worked examples.

    ``help`` is shown both in the parent's command list (where argparse %-formats it: write
    ``%%`` for a percent sign) and as the description (printed as is). ``example``: one command
    line or several; each runs as written from the repository root (tests/cli/
    test_help_examples.py runs them all).
    """
    examples = [example] if isinstance(example, str) else list(example)
    head = "example:" if len(examples) == 1 else "examples:"
    return sub.add_parser(
        name,
        help=help,
        description=help.replace("%%", "%"),
        epilog="\n  ".join([head, *examples]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def note(message: str) -> None:
    """Print ``note: MESSAGE`` to stderr."""
    print(f"note: {message}", file=sys.stderr)


#: stands for a bare option (no value) given where a value is expected, see ``add_option``
_BARE = object()


class _Store(argparse.Action):
    """``store``, noting the use of a deprecated spelling or of the deprecated bare form."""

    def __init__(self, option_strings, dest, deprecated=(), bare=None, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.deprecated = tuple(deprecated)
        self.bare = bare

    def __call__(self, parser, namespace, values, option_string=None):
        new = "/".join(self.option_strings)
        if option_string in self.deprecated:
            note(f"{option_string} is deprecated; use {new}")
        if values is _BARE:
            note(f"{option_string} without a value is deprecated; use {new} {self.bare}")
            values = self.bare
        setattr(namespace, self.dest, values)


def add_option(parser, *flags: str, deprecated: Sequence[str] = (), bare: str | None = None,
               **kwargs) -> argparse.Action:
    """``parser.add_argument(*flags, **kwargs)`` (a value-taking option), plus:

    ``deprecated``: old spellings that still work, hidden from --help; using one prints
    ``note: OLD is deprecated; use NEW`` to stderr. ``bare``: the value a bare option (no value)
    still stands for, with a deprecation note (a flag that became an option with a value).
    This is the one place deprecated spellings are made; ``parser`` may be an argument group or
    a mutually exclusive group.
    """
    if bare is not None:
        kwargs.update(nargs="?", const=_BARE)
    action = parser.add_argument(*flags, *deprecated, action=_Store, deprecated=deprecated,
                                 bare=bare, **kwargs)
    # hidden: --help and error messages name only the new spellings, while the parser still
    # maps the old ones to this action
    action.option_strings = [s for s in action.option_strings if s not in deprecated]
    return action


def add_output(parser, *, metavar: str, help: str, required: bool = False, type=None,
               default=None, old: Sequence[str] = ("--out",)) -> argparse.Action:
    """``-o/--output``: what the command writes (``--out``, its old spelling, still works)."""
    from pathlib import Path

    return add_option(parser, "-o", "--output", deprecated=old, dest="output",
                      type=type or Path, metavar=metavar, required=required, default=default,
                      help=help)


#: what ``--device`` accepts
DEVICE_HELP = "auto (the default: CUDA if available, else the CPU), cpu, cuda or cuda:N"


def device_type(value: str) -> str:
    """The ``--device`` value, checked: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device
    must exist here (argparse error, exit status 2, otherwise). Imports torch only for a CUDA
    value, and only where torch is installed (``predict --onnx`` runs without it)."""
    name = value.strip().lower()
    if name in ("auto", "cpu"):
        return name
    if not re.fullmatch(r"cuda(:\d+)?", name):
        raise argparse.ArgumentTypeError(f"{value!r} is not a device: use auto, cpu, cuda or "
                                         "cuda:N")
    try:
        from mambaseg.device import resolve_device
    except ImportError:             # no torch: whatever runs the model checks the device
        return name
    from mambaseg.errors import MambasegError

    try:
        resolve_device(name)
    except MambasegError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def add_device(parser, help: str = DEVICE_HELP) -> argparse.Action:
    """``--device``, validated the same way in every command (see ``device_type``)."""
    return parser.add_argument("--device", type=device_type, default="auto", metavar="DEVICE",
                               help=help)


def check_threshold_and_batch(args: argparse.Namespace) -> None:
    """The --threshold and --batch-size checks shared by evaluate and predict."""
    from mambaseg.errors import MambasegError

    if not 0.0 <= args.threshold <= 1.0:
        raise MambasegError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.batch_size < 1:
        raise MambasegError(f"--batch-size must be at least 1, got {args.batch_size}")


def resolve_checkpoints(paths):
    """``--checkpoint`` folders with training-run folders replaced by their ``best/`` (see
    ``inference.loading.resolve_run_dir``), noting each replacement on stderr; None stays None."""
    if paths is None:
        return None
    from mambaseg.inference.loading import resolve_run_dir

    out = []
    for p in paths:
        resolved = resolve_run_dir(p)
        if resolved != p:
            note(f"{p} is a training run: using its checkpoint {resolved}")
        out.append(resolved)
    return out
