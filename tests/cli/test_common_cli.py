"""One vocabulary across the subcommands: -o/--output, --split-seed, --eval-checkpoint,
--amp {bf16,off} and --device, each new spelling working and each old one still working with a
deprecation note (``cli._common.add_option``); parsing only, nothing runs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mambaseg.cli import build_parser, main
from mambaseg.cli._common import device_type

#: (command with its required arguments, new spelling, old spelling, value, dest, parsed)
RENAMES = [
    (["train"], ["-o"], ["--out"], "r", "output", Path("r")),
    (["train"], ["--output"], ["--out"], "r", "output", Path("r")),
    (["train", "-o", "r"], ["--eval-checkpoint"], ["--checkpoint"], "last", "checkpoint", "last"),
    (["crossval"], ["-o"], ["--out"], "cv", "output", Path("cv")),
    (["crossval", "-o", "cv"], ["--eval-checkpoint"], ["--checkpoint"], "best", "checkpoint",
     "best"),
    (["evaluate", "--model", "m"], ["-o"], ["--out"], "s.json", "output", Path("s.json")),
    (["evaluate", "--model", "m"], ["--split-seed"], ["--seed"], "5", "split_seed", 5),
    (["evaluate", "--model", "m"], ["--amp"], ["--amp"], "bf16", "amp", "bf16"),
    (["data", "stats", "p"], ["--split-seed"], ["--seed"], "5", "split_seed", 5),
    (["data", "split", "p", "-o", "f"], ["--split-seed"], ["--seed"], "5", "split_seed", 5),
    (["demo"], ["-o"], ["--out"], "d", "output", Path("d")),
    (["report", "results"], ["-o"], ["--out"], "d", "output", Path("d")),
]
NOTES = {"--out": "note: --out is deprecated; use -o/--output\n",
         "--seed": "note: --seed is deprecated; use --split-seed\n",
         "--checkpoint": "note: --checkpoint is deprecated; use --eval-checkpoint\n"}
#: the commands with --device, with their required arguments
DEVICE_COMMANDS = [["train", "-o", "r"], ["crossval", "-o", "cv"], ["evaluate", "--model", "m"],
                   ["predict", "-i", "in", "-o", "out"], ["demo"]]


def parse(argv: list[str]):
    return build_parser().parse_args(argv)


@pytest.mark.parametrize("cmd, new, old, value, dest, parsed", RENAMES,
                         ids=[f"{r[0][0]}{r[1][0]}" for r in RENAMES])
def test_new_spelling_works_quietly(capsys, cmd, new, old, value, dest, parsed):
    args = parse([*cmd, *new, value])
    assert getattr(args, dest) == parsed
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("cmd, new, old, value, dest, parsed",
                         [r for r in RENAMES if r[1] != r[2]],
                         ids=[f"{r[0][0]}{r[2][0]}" for r in RENAMES if r[1] != r[2]])
def test_old_spelling_works_with_a_note_and_is_hidden(capsys, cmd, new, old, value, dest,
                                                      parsed):
    args = parse([*cmd, *old, value])
    assert getattr(args, dest) == parsed
    assert capsys.readouterr().err == NOTES[old[0]]
    name = [c for c in cmd if not c.startswith("-")][:2 if cmd[0] == "data" else 1]
    with pytest.raises(SystemExit):
        main([*name, "--help"])
    text = capsys.readouterr().out
    assert f"{new[0]} " in text and f"{old[0]} " not in text.replace("--checkpoint RUN_DIR", "")


def test_old_spelling_also_works_with_equals(capsys):
    assert parse(["evaluate", "--model", "m", "--out=x.json"]).output == Path("x.json")
    assert capsys.readouterr().err == NOTES["--out"]


def test_amp_takes_a_value_and_a_bare_amp_still_means_bf16(capsys):
    assert parse(["evaluate", "--model", "m"]).amp == "off"
    assert parse(["evaluate", "--model", "m", "--amp", "off"]).amp == "off"
    assert capsys.readouterr().err == ""
    assert parse(["evaluate", "--model", "m", "--amp", "--no-progress"]).amp == "bf16"
    assert capsys.readouterr().err == ("note: --amp without a value is deprecated; use --amp "
                                       "bf16\n")
    with pytest.raises(SystemExit) as exc:
        parse(["evaluate", "--model", "m", "--amp", "fp8"])
    assert exc.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err
    for cmd in (["train", "-o", "r"], ["crossval", "-o", "cv"]):
        assert parse([*cmd, "--amp", "bf16"]).amp == "bf16"


@pytest.mark.parametrize("cmd", DEVICE_COMMANDS, ids=[c[0] for c in DEVICE_COMMANDS])
def test_bogus_device_exits_2_in_every_command(capsys, cmd):
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--device", "bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"mambaseg {cmd[0]}: error: argument --device: 'bogus' is not a device: use auto, " \
           "cpu, cuda or cuda:N" in err
    assert parse([*cmd, "--device", "CPU"]).device == "cpu"
    assert parse(cmd).device == "auto"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("cmd", DEVICE_COMMANDS, ids=[c[0] for c in DEVICE_COMMANDS])
def test_cuda_without_cuda_exits_2_in_every_command(capsys, cmd):
    for device in ("cuda", "cuda:0"):
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--device", device])
        assert exc.value.code == 2
        assert "CUDA is not available on this machine" in capsys.readouterr().err


def test_device_values():
    import argparse

    for ok in ("auto", "cpu", " CPU "):
        assert device_type(ok) == ok.strip().lower()
    for bad in ("gpu", "cuda:", "cuda:x", "mps", "cpu:0"):
        with pytest.raises(argparse.ArgumentTypeError):
            device_type(bad)
    if torch.cuda.is_available():
        assert device_type("cuda:0") == "cuda:0"
        with pytest.raises(argparse.ArgumentTypeError, match="does not exist"):
            device_type(f"cuda:{torch.cuda.device_count()}")
