"""Fixtures for the report tests: a synthetic results folder and a way to call the CLI."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fake_results  # noqa: E402


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return fake_results.make_results(tmp_path / "results")


def run_cli(argv: list[str]) -> int:
    """``mambaseg.cli.main(argv)``; while other subcommand modules are not written yet, the same
    call through a parser holding only ``report`` (same error handling as ``main``)."""
    try:
        from mambaseg.cli import build_parser, main

        build_parser()
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("mambaseg"):
            raise
    else:
        return main(argv)
    from mambaseg.cli import report
    from mambaseg.errors import MambasegError

    parser = argparse.ArgumentParser(prog="mambaseg")
    sub = parser.add_subparsers(dest="command")
    report.register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MambasegError as exc:
        print(f"mambaseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


@pytest.fixture
def cli():
    return run_cli
