"""`train --channels flair` and `crossval --channels flair`: a one-channel model trained on the
FLAIR channel alone, recorded in config.json and the checkpoints, evaluated and used by predict
on the FLAIR channel."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mambaseg.cli import main
from toy_data import make_toy_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--model", "ulvm_unet", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
        "--no-progress", "--channels", "flair"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), per_patient=4)


def test_train_flair_records_the_channel_everywhere(toy, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(toy), "-o", str(run), "--split", "patient", *TINY]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["channels"] == "flair" and config["in_channels"] == 1
    ckpt = json.loads((run / "best" / "config.json").read_text())
    assert ckpt["in_channels"] == 1 and ckpt["metadata"]["training"]["channels"] == ["FLAIR"]
    assert main(["evaluate", "--checkpoint", str(run), "--device", "cpu"]) == 0
    assert main(["predict", "-i", str(toy / "P0"), "-o", str(tmp_path / "out"), "--checkpoint",
                 str(run), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["channels"] == ["FLAIR"]
    # a resumed run keeps its channels
    assert main(["train", "-o", str(run), "--resume", "--device", "cpu", "--epochs", "2"]) == 0
    ckpt = json.loads((run / "last" / "config.json").read_text())
    assert ckpt["in_channels"] == 1 and ckpt["metadata"]["training"]["epoch"] == 2
    assert json.loads((run / "config.json").read_text())["channels"] == "flair"


def test_crossval_forwards_the_channels(toy, tmp_path, capsys):
    out = tmp_path / "cv"
    assert main(["crossval", "--data", str(toy), "-o", str(out), "--folds", "3", *TINY]) == 0
    assert json.loads((out / "crossval.json").read_text())["settings"]["channels"] == "flair"
    ckpt = json.loads((out / "fold_0" / "best" / "config.json").read_text())
    assert ckpt["in_channels"] == 1 and ckpt["metadata"]["training"]["channels"] == ["FLAIR"]
