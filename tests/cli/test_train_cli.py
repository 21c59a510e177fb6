"""`mambaseg train` on the command line: a short run, every user error, and torchrun (gloo)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from toy_data import make_toy_dataset
from mambaseg.cli import main

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), per_patient=4)


def _args(data, out, *extra) -> list[str]:
    return ["train", "--model", "ulvm_unet", "--data", str(data), "-o", str(out),
            "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress", *extra]


def _fails(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mambaseg train: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_train_runs_and_prints_each_epoch(toy, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(toy, run, "--epochs", "2", "--preset", "paper", "--batch-size", "4",
                      "--checkpoint", "best")) == 0
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "val_dice" in out
    assert f"checkpoint for evaluation (best): {run / 'best'}" in out
    config = json.loads((run / "config.json").read_text())
    assert (config["preset"], config["batch_size"], config["loss"], config["epochs"]) == \
        ("paper", 4, "bce_dice", 2)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_cuda_graphs_option_is_recorded(toy, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(toy, run, "--cuda-graphs", "off")) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["cuda_graphs"] == "off" and config["cuda_graphs_used"] is False
    with pytest.raises(SystemExit):
        main(_args(toy, tmp_path / "other", "--cuda-graphs", "sometimes"))
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "example:" in out and "--preset" in out and "--resume" in out


def test_resume_without_checkpoint(toy, tmp_path, capsys):
    _fails(capsys, _args(toy, tmp_path / "run", "--resume"), "no checkpoint to resume from")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(toy, tmp_path, capsys):
    argv = _args(toy, tmp_path / "run")
    argv[argv.index("cpu")] = "cuda"
    with pytest.raises(SystemExit) as exc:                # refused while parsing the options
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--device cuda" in err and "no CUDA GPU" in err
    assert not (tmp_path / "run").exists()


def test_unknown_model_lists_the_valid_ones(toy, tmp_path, capsys):
    argv = _args(toy, tmp_path / "run")
    argv[argv.index("ulvm_unet")] = "unet3000"
    _fails(capsys, argv, "unknown model 'unet3000'", "ulvm_unet", "resnet18", "segformer")
    assert not (tmp_path / "run").exists()


def test_missing_data_folder(tmp_path, capsys):
    _fails(capsys, _args(tmp_path / "nowhere", tmp_path / "run"), "nowhere", "does not exist")


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _fails(capsys, _args(tmp_path / "empty", tmp_path / "run"), "empty", "no images found")


def test_output_folder_not_writable(toy, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file")
    _fails(capsys, _args(toy, blocker / "run"), "cannot write the run", "file.txt")


def test_existing_run_needs_resume_or_overwrite(toy, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(toy, run)) == 0
    capsys.readouterr()
    _fails(capsys, _args(toy, run), "already holds a training run", "--resume", "--overwrite")
    assert main(_args(toy, run, "--overwrite")) == 0
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_bad_model_arg(toy, tmp_path, capsys):
    _fails(capsys, _args(toy, tmp_path / "run", "--model-arg", "novalue"), "KEY=VALUE")


def _torchrun() -> list[str] | None:
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if exe is None:
        try:
            import torch.distributed.run  # noqa: F401
        except ImportError:
            return None
        return [sys.executable, "-m", "torch.distributed.run"]
    return [exe]


@pytest.mark.skipif(_torchrun() is None or not torch.distributed.is_available(),
                    reason="torchrun / torch.distributed unavailable")
def test_torchrun_two_processes_on_cpu(toy, tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "mambaseg",
           *_args(toy, run, "--epochs", "2")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 2/2") == 1  # only rank 0 prints
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["per_rank_batch_size"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "progress.png").is_file() and (run / "last" / "train_state.pt").is_file()
    assert (run / "best" / "model.safetensors").is_file()
