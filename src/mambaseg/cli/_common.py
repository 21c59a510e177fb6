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
