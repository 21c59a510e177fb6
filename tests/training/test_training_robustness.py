"""No silent garbage (issue #22) in training: a non-finite loss stops the run naming the epoch,
the step and the slices, keeping the last good checkpoint; NaN pixels stop it at loading."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
import torch

from mambaseg.errors import DataError, MambasegError
from mambaseg.training.config import TrainConfig
from mambaseg.training.loop import DeviceData, train_epoch
from mambaseg.training.train_state import load_train_state
from mambaseg.training.trainer import train
from toy_data import make_toy_dataset, nan_loss_at


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity."""
    def refuse(name):
        raise AssertionError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_train_epoch_flags_the_first_non_finite_step():
    data = DeviceData(torch.zeros(8, 3, 8, 8, dtype=torch.uint8),
                      torch.zeros(8, 1, 8, 8, dtype=torch.uint8))
    model = torch.nn.Conv2d(3, 1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []

    def loss_fn(logits, y):
        calls.append(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        return loss * math.nan if len(calls) == 3 else loss

    batches = list(torch.arange(8).split(2))
    t = train_epoch(model, data, batches, opt, loss_fn)
    assert t.bad_step == 3 and t.bad_batch == [4, 5]
    t = train_epoch(torch.nn.Conv2d(3, 1, 1), data, batches, opt,
                    torch.nn.functional.binary_cross_entropy_with_logits)
    assert t.bad_step is None and t.bad_batch is None


def test_nan_loss_stops_training_keeping_the_last_good_checkpoint(tmp_path, monkeypatch):
    toy = make_toy_dataset(tmp_path / "toy", per_patient=4)
    monkeypatch.setattr("mambaseg.training.trainer.get_loss", nan_loss_at(2, 2))
    run = tmp_path / "run"
    cfg = TrainConfig(model="ulvm_unet", data=toy, out=run, epochs=3, batch_size=4, seed=0,
                      device="cpu", progress=False)
    with pytest.raises(MambasegError) as err:
        train(cfg)
    msg = str(err.value)
    assert "the training loss became NaN/Inf at epoch 2, step 2 of " in msg
    assert f"{run / 'last'} still holds epoch 1, the last good checkpoint" in msg
    assert "mambaseg data verify" in msg and "P" in msg.split("(batch of slices ")[1]
    assert load_train_state(run / "last")["epoch"] == 1
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [strict_json(line)["epoch"] for line in lines] == [1]
    strict_json((run / "config.json").read_text())


def test_nan_pixels_in_training_data_stop_at_loading(tmp_path):
    toy = make_toy_dataset(tmp_path / "toy", per_patient=4)
    bad = toy / "P0" / "P0_1.png"
    bad.unlink()
    arr = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    arr[0:20, 0:20] = np.nan
    tifffile.imwrite(bad.with_suffix(".tif"), arr, photometric="rgb")
    cfg = TrainConfig(model="ulvm_unet", data=toy, out=tmp_path / "run", epochs=1,
                      batch_size=4, seed=0, device="cpu", progress=False)
    with pytest.raises(DataError, match=r"P0_1.tif: non-finite pixels \(NaN/Inf\): 400 of "
                                        r"1024; training never reads"):
        train(cfg)
    assert not (tmp_path / "run" / "last").exists()
