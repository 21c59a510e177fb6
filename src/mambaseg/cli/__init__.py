"""The `mambaseg` command line: one module per subcommand, parsing and printing only.

Each subcommand module defines ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit status.

Imports: the subcommand modules import the package's working modules (``training``,
``inference``, ``data``, ...) inside their ``run`` functions, not at the top. Building the
parser then costs no torch, numpy or model import, so ``mambaseg --help`` answers at once and
``predict --onnx`` runs where torch is not installed (tests/cli/test_onnx_cli.py checks it).
A command that needs a module of an optional extra that is missing (PyTorch: every command but
``predict --onnx``) fails with one line naming the ``pip install 'mambaseg[EXTRA]'`` to run,
exit status 2 (``_common.missing_extra``).
Outside ``cli/``, imports sit at the top of modules; tests/test_imports.py lists the few
exceptions (the package root's public names, optional extras such as triton) and checks that
the package has no import cycle.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from mambaseg._version import __version__
from mambaseg.cli._common import missing_extra
from mambaseg.errors import MambasegError

#: subcommands in the order `mambaseg --help` lists them
SUBCOMMANDS = ("demo", "data", "models", "train", "crossval", "evaluate", "compare", "predict",
               "export", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mambaseg",
        description="Brain-tumour segmentation in MRI with Mamba models and their baselines.",
        epilog="Run 'mambaseg COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"mambaseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"mambaseg.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except MambasegError as exc:
        print(f"mambaseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an optional extra (PyTorch for all but predict --onnx)
        message = missing_extra(exc, args.command)
        if message is None:
            raise
        print(f"mambaseg {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mambaseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
