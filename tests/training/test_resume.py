"""Resuming: a run killed with SIGKILL mid-epoch and resumed ends exactly like an uninterrupted one."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from toy_data import make_toy_dataset
from mambaseg.training.train_state import load_train_state
from mambaseg.training.history import TIME_KEYS, read_metrics
from mambaseg.training.trainer import TrainConfig, train
from mambaseg.errors import CheckpointError, MambasegError

REPO = Path(__file__).resolve().parents[2]


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mambaseg", "train", "--model", "ulvm_unet", "--data", str(data),
            "--out", str(out), "--epochs", "3", "--batch-size", "4", "--seed", "5",
            "--device", "cpu", "--no-progress", "--augment", *extra]


def _env(**extra: str) -> dict[str, str]:
    """Child environment: one thread per process (bitwise-equal CPU maths whatever the load)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MKL_DYNAMIC="FALSE")
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last" / "model.safetensors"))


def _untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in records]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"tensor {key} differs"
    assert _untimed(read_metrics(a / "metrics.jsonl")) == _untimed(read_metrics(b / "metrics.jsonl"))
    sa, sb = load_train_state(a / "last"), load_train_state(b / "last")
    for key, value in sa["optimizer"]["state"].items():
        for name, t in value.items():
            assert torch.equal(t, sb["optimizer"]["state"][key][name]), f"optimizer {key}.{name}"


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    data = make_toy_dataset(tmp_path / "data", per_patient=6)  # 14 training slices: 4 steps
    ref, run = tmp_path / "ref", tmp_path / "run"

    # the uninterrupted reference runs alongside
    full = subprocess.Popen(_cmd(data, ref), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    # slow the steps down, wait for epoch 1's checkpoint, kill inside epoch 2
    proc = subprocess.Popen(_cmd(data, run), env=_env(MAMBASEG_TEST_SLEEP_PER_STEP="0.4"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if (len(read_metrics(run / "metrics.jsonl")) >= 1
                    and (run / "last" / "train_state.pt").is_file()):
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
        else:
            pytest.fail("epoch 1 never finished")
        time.sleep(0.7)  # one or two steps into epoch 2 (4 steps of >= 0.4 s each)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert len(read_metrics(run / "metrics.jsonl")) == 1, "killed after epoch 2 had finished"
        assert load_train_state(run / "last")["epoch"] == 1

        resumed = subprocess.run(_cmd(data, run, "--resume"), env=_env(), capture_output=True,
                                 text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        _, err = full.communicate(timeout=120)
        assert full.returncode == 0, err
    finally:
        for child in (proc, full):
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stderr.close()
    assert len(read_metrics(run / "metrics.jsonl")) == 3
    assert_same_run(ref, run)


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="ulvm_unet", data=data, out=out, epochs=2, batch_size=4, seed=3,
                device="cpu", progress=False, augment=True)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_extends_a_finished_run_exactly(tmp_path):
    """A 2-epoch run resumed to 3 epochs equals a 3-epoch run (in-process, no kill)."""
    data = make_toy_dataset(tmp_path / "data", per_patient=5)
    train(_cfg(data, tmp_path / "ref", epochs=3))
    part = tmp_path / "part"
    train(_cfg(data, part, epochs=2))
    result = train(TrainConfig(out=part, resume=True, epochs=3, progress=False))
    assert result.epochs == 3 and [r["epoch"] for r in result.history] == [1, 2, 3]
    assert_same_run(tmp_path / "ref", part)


def test_resume_repairs_an_interrupted_checkpoint_swap(tmp_path):
    data = make_toy_dataset(tmp_path / "data", per_patient=4)
    run = tmp_path / "run"
    train(_cfg(data, run, epochs=1, scheduler="cosine"))
    # crash between "rename last aside" and "rename the new one in", plus a half-written temp
    os.replace(run / "last", run / ".last.old")
    (run / ".last.tmp").mkdir()
    (run / ".last.tmp" / "model.safetensors").write_bytes(b"half")
    result = train(TrainConfig(out=run, resume=True, epochs=2, progress=False))
    assert result.history[-1]["epoch"] == 2
    assert not (run / ".last.old").exists() and not (run / ".last.tmp").exists()
    assert load_train_state(run / "last")["epoch"] == 2


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        train(TrainConfig(model="ulvm_unet", data=tmp_path, out=tmp_path / "run", resume=True))


def test_resume_refuses_changed_settings(tmp_path):
    data = make_toy_dataset(tmp_path / "data", patients=3, per_patient=4)
    run = tmp_path / "run"
    train(_cfg(data, run, epochs=1))
    with pytest.raises(MambasegError, match="--lr"):
        train(TrainConfig(out=run, resume=True, lr=0.1, progress=False))


def test_train_state_holds_everything_needed_to_resume(tmp_path):
    data = make_toy_dataset(tmp_path / "data", patients=3, per_patient=4)
    run = tmp_path / "run"
    train(_cfg(data, run, epochs=1))
    state = load_train_state(run / "last")
    for key in ("optimizer", "scheduler", "scaler", "epoch", "best_val_dice", "best_epoch",
                "history", "rng"):
        assert key in state
    rng = state["rng"][0]
    assert {"torch", "cuda", "numpy", "python", "generators"} <= rng.keys()
    assert {"shuffle", "augment"} <= rng["generators"].keys()
    config = json.loads((run / "config.json").read_text())
    assert config["checkpoint"] == "best"
    shutil.rmtree(run)


def test_resume_rebuilds_best_lost_between_the_two_checkpoint_writes(tmp_path):
    data = make_toy_dataset(tmp_path / "data", patients=3, per_patient=4)
    run = tmp_path / "run"
    train(_cfg(data, run, epochs=1))
    shutil.rmtree(run / "best")  # crash after last/ (epoch 1 = best) but before best/
    result = train(TrainConfig(out=run, resume=True, progress=False))
    assert result.best_epoch == 1 and result.best_dir == run / "best"
    best, last = load_file(str(run / "best" / "model.safetensors")), _weights(run)
    assert all(torch.equal(best[k], last[k]) for k in last)
