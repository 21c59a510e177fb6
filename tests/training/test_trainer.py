"""The trainer on tiny CPU data: files written, learning, presets, run folders, loop pieces."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from toy_data import make_toy_dataset
from mambaseg.training import distributed as D
from mambaseg.training.train_state import load_train_state
from mambaseg.training.config import TrainConfig, resolved_settings
from mambaseg.training.loop import DeviceData, epoch_batches, resize_arrays, validate
from mambaseg.training.losses import dice_loss
from mambaseg.metrics import pooled_dice
from mambaseg.training.history import METRIC_KEYS, read_metrics
from mambaseg.training.trainer import train
from mambaseg.errors import MambasegError
from mambaseg.models import from_pretrained

CONFIG_KEYS = ("model", "split", "seed", "epochs", "batch_size", "lr", "optimizer", "loss",
               "preset", "device_name", "mambaseg_version", "torch_version", "checkpoint",
               "weight_decay", "scheduler", "augment", "amp", "image_size", "world_size")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy"))


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="ulvm_unet", data=data, out=out, epochs=2, batch_size=4, seed=0,
                device="cpu", progress=False)
    base.update(kw)
    return TrainConfig(**base)


# ----------------------------------------------------------------------------- whole runs


def test_two_epoch_run_writes_every_file(toy, tmp_path):
    run = tmp_path / "run"
    seen = []
    result = train(_cfg(toy, run), on_epoch_end=lambda rec, n: seen.append((rec["epoch"], n)))
    assert seen == [(1, 2), (2, 2)]

    config = json.loads((run / "config.json").read_text())
    for key in CONFIG_KEYS:
        assert key in config, key
    assert config["model"] == "ulvm_unet" and config["epochs"] == 2 and config["checkpoint"] == "best"
    assert config["device_name"].startswith("CPU")
    assert config["torch_version"] == torch.__version__

    records = read_metrics(run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for rec in records:
        assert set(METRIC_KEYS) <= rec.keys()
        assert 0.0 <= rec["val_dice"] <= 1.0 and rec["train_loss"] > 0 and rec["images_per_s"] > 0
        assert rec["lr"] == pytest.approx(3e-4)
        assert rec["cuda_graphs"] is False  # CPU: eager steps
    assert config["cuda_graphs"] == "auto" and config["cuda_graphs_used"] is False
    assert (run / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    for name in ("last", "best"):
        model = from_pretrained(run / name)
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)
        meta = json.loads((run / name / "config.json").read_text())["metadata"]["training"]
        assert meta["protocol_checkpoint"] == "best"
    assert load_train_state(run / "last")["epoch"] == 2
    assert not (run / "best" / "train_state.pt").exists()
    assert result.checkpoint_dir == run / "best" and result.best_epoch in (1, 2)
    assert result.best_val_dice == max(r["val_dice"] for r in records)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no leftovers


def test_loss_decreases_on_an_easy_task(toy, tmp_path):
    result = train(_cfg(toy, tmp_path / "run", epochs=5, lr=3e-3))
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.history[-1]["val_dice"] > 0.5


def test_image_size_resizes_and_is_recorded(toy, tmp_path):
    run = tmp_path / "run"
    train(_cfg(toy, run, epochs=1, image_size=64, augment=True, scheduler="cosine",
               optimizer="adam", loss="dice"))
    config = json.loads((run / "config.json").read_text())
    assert config["input_size"] == [64, 64] and config["image_size"] == 64
    ckpt = json.loads((run / "last" / "config.json").read_text())
    assert ckpt["preprocessing"]["input_size"] == 64


def test_invalid_image_size_names_the_nearest_valid_one(toy, tmp_path):
    with pytest.raises(MambasegError, match="nearest valid size is 32x32"):
        train(_cfg(toy, tmp_path / "run", epochs=1, image_size=40))


def test_empty_validation_part_falls_back_to_last(toy, tmp_path):
    from mambaseg.data import find_slices

    rels = [s.rel for s in find_slices(toy)]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": rels[:8], "val": [], "test": rels[8:]}))
    result = train(_cfg(toy, tmp_path / "run", epochs=1, split=str(split)))
    assert result.history[0]["val_dice"] is None and result.best_dir is None
    assert result.checkpoint_dir == tmp_path / "run" / "last"


def test_new_run_refuses_an_existing_run_unless_overwrite(toy, tmp_path):
    run = tmp_path / "run"
    train(_cfg(toy, run, epochs=1))
    with pytest.raises(MambasegError, match="--resume .* or --overwrite"):
        train(_cfg(toy, run, epochs=1))
    (run / "best" / "stale.txt").write_text("old")
    train(_cfg(toy, run, epochs=1, overwrite=True))
    assert len(read_metrics(run / "metrics.jsonl")) == 1
    assert not (run / "best" / "stale.txt").exists()


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("model", ["ulvm_unet", "ulvm_unet_v3"])
def test_paper_preset_for_ultralight_models(model):
    s = resolved_settings(TrainConfig(model=model, preset="paper"))
    assert (s["batch_size"], s["loss"], s["optimizer"], s["lr"], s["weight_decay"]) == \
        (2, "bce_dice", "adamw", 3e-4, 1e-2)
    assert (s["epochs"], s["scheduler"], s["checkpoint"], s["augment"]) == (100, "none", "last", False)


def test_explicit_settings_override_the_preset():
    s = resolved_settings(TrainConfig(model="ulvm_unet", preset="paper", batch_size=8, lr=1e-3))
    assert (s["batch_size"], s["lr"], s["loss"]) == (8, 1e-3, "bce_dice")


@pytest.mark.parametrize("model,batch,loss,opt,lr,wd,size", [
    ("unet", 64, "dice", "adam", 3e-4, 0.0, None),
    ("resnet18", 64, "dice", "adam", 3e-4, 0.0, None),
    ("resnet50", 64, "dice", "adam", 3e-4, 0.0, None),
    ("umamba_bot_pp", 64, "dice", "adam", 3e-4, 0.0, None),
    ("umamba_bot", 32, "dice", "adam", 3e-4, 0.0, None),
    ("segformer", 16, "bce", "adamw", 1e-4, 5e-5, 224),
])
def test_paper_preset_table(model, batch, loss, opt, lr, wd, size):
    s = resolved_settings(TrainConfig(model=model, preset="paper"))
    assert (s["batch_size"], s["loss"], s["optimizer"], s["lr"], s["weight_decay"],
            s["image_size"], s["checkpoint"], s["epochs"]) == (batch, loss, opt, lr, wd, size,
                                                               "last", 100)


def test_preset_covers_every_registered_model():
    from mambaseg.models import list_models

    for name in list_models():
        assert resolved_settings(TrainConfig(model=name, preset="paper"))["epochs"] == 100


def test_cli_arguments_resolve_through_the_preset():
    from mambaseg.cli import build_parser
    from mambaseg.cli.train import config_from_args

    args = build_parser().parse_args(["train", "--model", "ulvm_unet", "--data", "d", "--out", "o",
                                      "--preset", "paper"])
    s = resolved_settings(config_from_args(args))
    assert (s["batch_size"], s["loss"], s["optimizer"], s["weight_decay"]) == (2, "bce_dice",
                                                                                "adamw", 1e-2)
    args = build_parser().parse_args(["train", "--model", "ulvm_unet", "--data", "d", "--out", "o",
                                      "--preset", "paper", "--batch-size", "16", "--no-augment"])
    s = resolved_settings(config_from_args(args))
    assert s["batch_size"] == 16 and s["augment"] is False


def test_channels_last_option_and_its_default():
    from mambaseg.cli import build_parser
    from mambaseg.cli.train import config_from_args
    from mambaseg.training.build import use_channels_last

    base = ["train", "--model", "mambaseg_s", "--data", "d", "--out", "o"]
    for flag, value in ((None, None), ("on", True), ("off", False)):
        extra = ["--channels-last", flag] if flag else []
        assert config_from_args(build_parser().parse_args(base + extra)).channels_last is value
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_channels_last("unet", cuda, None) and use_channels_last("mambaseg_s", cuda, None)
    assert not use_channels_last("ulvm_unet_v6", cuda, None)
    assert not use_channels_last("mambaseg_s", cpu, None) and use_channels_last("ulvm_unet", cpu, True)
    assert not use_channels_last("unet", cuda, False)


def test_channels_last_gives_the_same_logits_and_gradients():
    """The memory format changes speed only (checked for our own model, the one it now defaults
    to on CUDA)."""
    from mambaseg.models import create_model

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    out = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(1)
        net = create_model("mambaseg_t", directions=1).to(memory_format=fmt)
        logits = net(x.contiguous(memory_format=fmt))
        logits.square().mean().backward()
        out[fmt] = (logits.detach(), {k: p.grad.clone() for k, p in net.named_parameters()})
    (la, ga), (lb, gb) = out.values()
    assert torch.allclose(la, lb, atol=1e-5)
    for key in ga:
        assert torch.allclose(ga[key], gb[key], atol=1e-5, rtol=1e-4), key


# ----------------------------------------------------------------------------- pieces


def test_validation_dice_is_pooled_dice():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (10, 3, 8, 8), generator=g, dtype=torch.uint8)
    masks = (torch.rand(10, 1, 8, 8, generator=g) > 0.7).to(torch.uint8)
    conv = torch.nn.Conv2d(3, 1, 3, padding=1)
    data = DeviceData(images, masks)
    stats = validate(conv, data, batch_size=3, loss_fn=dice_loss)
    with torch.no_grad():
        x, y = data.batch(torch.arange(10))
        logits = conv(x)
    assert stats.dice == pytest.approx(pooled_dice(torch.sigmoid(logits), y), abs=1e-12)
    batch_losses = [dice_loss(logits[i:i + 3], y[i:i + 3]).item() * len(y[i:i + 3])
                    for i in range(0, 10, 3)]
    assert stats.loss == pytest.approx(sum(batch_losses) / 10, abs=1e-6)
    assert stats.images == 10


def test_epoch_batches_shard_the_same_permutation_over_ranks():
    per_rank = []
    for rank in range(2):
        g = torch.Generator().manual_seed(7)
        per_rank.append(epoch_batches(11, 4, g, torch.device("cpu"), D.DistInfo(rank, 2, rank)))
    g = torch.Generator().manual_seed(7)
    single = epoch_batches(11, 4, g, torch.device("cpu"))
    assert [len(b) for b in single] == [4, 4, 3]
    assert [len(b) for b in per_rank[0]] == [2, 2, 2] and [len(b) for b in per_rank[1]] == [2, 2, 1]
    for i, whole in enumerate(single):
        assert torch.equal(torch.cat([per_rank[0][i], per_rank[1][i]]), whole)


def test_resize_keeps_masks_binary():
    images = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8)
    masks = (torch.rand(3, 1, 20, 20) > 0.5).to(torch.uint8)
    small_i, small_m = resize_arrays(images, masks, 8, chunk=2)
    assert small_i.shape == (3, 3, 8, 8) and small_i.dtype == torch.uint8
    assert small_m.shape == (3, 1, 8, 8) and set(small_m.unique().tolist()) <= {0, 1}


def test_epoch_benchmark_runs_on_tiny_random_data(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "train_epoch.py"
    spec = importlib.util.spec_from_file_location("train_epoch_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.txt"
    assert bench.main(["--device", "cpu", "--models", "ulvm_unet", "nonexistent", "--n-train", "6",
                       "--n-val", "2", "--size", "32", "--batch-size", "4", "--warmup-steps", "1",
                       "--probe-steps", "1", "--epochs", "1", "--output", str(out)]) == 0
    table = out.read_text()
    assert "ulvm_unet" in table and "0.05M" in table and "nonexistent" in table and "ERROR" in table
    assert "CPU" in capsys.readouterr().out
    # a model spec with factory options, the memory format flag and the kernel profile
    assert bench.main(["--device", "cpu", "--models", "mambaseg_t:directions=1", "--n-train", "4",
                       "--n-val", "2", "--size", "32", "--batch-size", "4", "--warmup-steps", "1",
                       "--probe-steps", "1", "--epochs", "1", "--channels-last", "on",
                       "--profile", "1"]) == 0
    printed = capsys.readouterr().out
    assert "mambaseg_t:directions=1 CL" in printed and "Self CPU time total" in printed
