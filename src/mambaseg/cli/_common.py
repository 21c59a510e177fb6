"""Small helpers shared by the subcommand modules."""
from __future__ import annotations

import argparse


def add_command(sub, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """Add a subcommand parser whose --help ends with a worked example."""
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def check_threshold_and_batch(args: argparse.Namespace) -> None:
    """The --threshold and --batch-size checks shared by evaluate and predict."""
    from mambaseg.errors import MambasegError

    if not 0.0 <= args.threshold <= 1.0:
        raise MambasegError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.batch_size < 1:
        raise MambasegError(f"--batch-size must be at least 1, got {args.batch_size}")
