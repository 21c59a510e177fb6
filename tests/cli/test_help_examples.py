"""Every subcommand's ``--help`` example, run as written from a copy of the repository root.

The examples are read from the parsers' epilogs (``cli._common.add_command``) and run in the
order of ``ORDER`` (``evaluate``'s example reads the run ``train``'s example writes), with the
working directory a temporary folder holding links to the repository's ``examples/`` (the
bundled sample) and ``results/``, so every output lands in the temporary folder.

One substitution keeps the test quick on two CPU cores: the examples that use the *default*
shipped model (``demo`` and ``predict`` without ``--model``/``--checkpoint``; ``DEFAULT_MODEL``)
run with a tiny two-member ensemble marked default in place of the shipped 5-fold ensemble,
which tests/cli/test_demo_cli.py runs for real. Nothing else is changed or skipped.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest

from mambaseg.cli import SUBCOMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[2]

#: every command with an example, in the order the examples run
ORDER = ("models", "data", "data verify", "data stats", "data split", "data convert", "train",
         "evaluate", "crossval", "compare", "predict", "export", "demo", "report")
#: examples that use the default shipped model (run with a tiny stand-in, see the docstring)
DEFAULT_MODEL = ("predict", "demo")

pytestmark = pytest.mark.usefixtures("one_thread")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every command and subcommand parser by name (``"data verify"`` for nested ones)."""
    found = {}
    for name, p in _subparsers(build_parser()).items():
        found[name] = p
        for sub, q in _subparsers(p).items():
            found[f"{name} {sub}"] = q
    return found


def examples(parser: argparse.ArgumentParser) -> list[list[str]]:
    """The example command lines of a parser's epilog, as argv lists (``mambaseg`` dropped)."""
    lines = (parser.epilog or "").splitlines()
    assert lines and lines[0] in ("example:", "examples:"), parser.prog
    out = []
    for line in lines[1:]:
        argv = shlex.split(line, comments=True)
        assert argv[0] == "mambaseg", line
        out.append(argv[1:])
    return out


def test_every_command_has_an_example_in_the_table():
    found = commands()
    assert set(found) == set(ORDER), "add the new command to ORDER (and to README.md)"
    assert [c for c in ORDER if " " not in c] == sorted(SUBCOMMANDS, key=ORDER.index)
    for name, parser in found.items():
        for argv in examples(parser):
            assert " ".join(argv[: len(name.split())]) == name, (name, argv)


def test_help_prints_the_example_and_no_doubled_percent(capsys):
    for name in ORDER:
        with pytest.raises(SystemExit) as exc:
            main([*name.split(), "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "example" in text and "mambaseg " + name in text, name
        assert "%%" not in text, name


@pytest.fixture
def tiny_default_weights(tmp_path) -> Path:
    """A weights folder whose only entry is a tiny ensemble marked default."""
    import torch

    from mambaseg.inference.loading import save_ensemble
    from mambaseg.models import create_model

    weights = tmp_path / "weights"
    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        members.append(create_model("unet", features=(4, 8)))
    save_ensemble(weights / "tiny_cv2", members, metadata={"default": True})
    return weights


def test_help_examples_run_as_written(tmp_path, monkeypatch, capsys, tiny_default_weights):
    from mambaseg.models import pretrained

    root = tmp_path / "repo"
    root.mkdir()
    for name in ("examples", "results"):
        (root / name).symlink_to(REPO / name, target_is_directory=True)
    monkeypatch.chdir(root)
    found = commands()
    for name in ORDER:
        for argv in examples(found[name]):
            with monkeypatch.context() as m:
                if name in DEFAULT_MODEL:
                    assert "--model" not in argv and "--checkpoint" not in argv, argv
                    m.setattr(pretrained, "WEIGHTS_DIR", tiny_default_weights)
                code = main(argv)
            out, err = capsys.readouterr()
            assert code == 0, f"mambaseg {shlex.join(argv)} exited {code}:\n{out}\n{err}"
            assert "Traceback" not in err and "deprecated" not in err, (argv, err)
            if name == "evaluate":
                assert "runs/quick is a training run: using its checkpoint runs/quick/best" in err
    # what the examples wrote, all inside the temporary folder
    runs = root / "runs"
    assert (runs / "quick" / "best" / "summary.json").is_file()          # train, then evaluate
    assert json.loads((runs / "folds.json").read_text())["folds"]
    assert (runs / "fig1.png").is_file() and (runs / "report" / "README.md").is_file()
    assert (runs / "cv-quick" / "summary.json").is_file()
    assert len(list((runs / "predictions").rglob("*_mask.png"))) == 62
    assert len(list((runs / "demo" / "predictions").rglob("*_overlay.png"))) == 62
    assert sorted(p.name for p in root.iterdir()) == ["examples", "results", "runs"], \
        "an example wrote outside runs/ (which git ignores)"
