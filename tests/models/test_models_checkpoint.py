"""save_pretrained / from_pretrained: contents, atomicity, dtype, and clear errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

import mambaseg
from mambaseg.errors import CheckpointError, MambasegError
from mambaseg.models import create_model, from_pretrained, read_config


@pytest.fixture
def ul_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("ulvm_unet")
    path = model.save_pretrained(tmp_path / "ul", metadata={"metrics": {"test": {"dice": 0.87}}, "epochs": 3})
    return model, path


def test_config_contents(ul_checkpoint):
    model, path = ul_checkpoint
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    config = json.loads((path / "config.json").read_text())
    assert config["model_name"] == "ulvm_unet"
    assert config["model_kwargs"] == {}
    assert config["in_channels"] == 3 and config["num_classes"] == 1
    assert config["family"] == "ultralight"
    assert config["num_parameters"] == 49_457
    assert config["mambaseg_version"] == mambaseg.__version__
    assert config["weights_dtype"] == "float32"
    assert config["preprocessing"]["input_size"] == 256
    assert config["preprocessing"]["scale"] == "divide by 255"
    assert config["metadata"] == {"metrics": {"test": {"dice": 0.87}}, "epochs": 3}
    assert read_config(path) == config
    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        assert fh.metadata()["model_name"] == "ulvm_unet"
        assert set(fh.keys()) == set(model.state_dict())


def test_kwargs_round_trip(tmp_path):
    model = create_model("ulvm_unet", in_channels=1, num_classes=2, chunks=8, channels=[8, 8, 8, 8, 8, 8])
    path = model.save_pretrained(tmp_path / "tiny")
    loaded = from_pretrained(path, scan_backend="reference")
    assert loaded.model_kwargs == {"chunks": 8, "channels": [8, 8, 8, 8, 8, 8]}
    assert loaded.in_channels == 1 and loaded.num_classes == 2
    assert loaded.encoders[-1].mamba.scan_backend == "reference"
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_save_overwrites_atomically(ul_checkpoint):
    _, path = ul_checkpoint
    other = create_model("ulvm_unet_v2")
    other.save_pretrained(path)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert from_pretrained(path).model_name == "ulvm_unet_v2"


def test_fp16_weights_load_into_fp32_model(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet").eval()
    path = model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        assert fh.get_tensor("head.weight").dtype == torch.float16
        assert fh.get_tensor("encoders.0.1.num_batches_tracked").dtype == torch.int64
    assert read_config(path)["weights_dtype"] == "float16"
    loaded = from_pretrained(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=5e-2, rtol=5e-2)
    as_half = from_pretrained(path, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in as_half.parameters())


def test_weights_of_another_architecture_fail_clearly(tmp_path, ul_checkpoint):
    _, path = ul_checkpoint
    other = create_model("ulvm_unet_v3").save_pretrained(tmp_path / "v3")
    shutil.copy(other / "model.safetensors", path / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        from_pretrained(path)
    msg = str(info.value)
    assert str(path) in msg and "do not belong to model ulvm_unet" in msg
    assert "missing keys (first:" in msg and "unexpected keys (first:" in msg
    assert "the file says it holds ulvm_unet_v3 weights" in msg


def test_same_keys_wrong_shapes_fail_clearly(tmp_path, ul_checkpoint):
    _, path = ul_checkpoint
    other = create_model("ulvm_unet", num_classes=2).save_pretrained(tmp_path / "two")
    shutil.copy(other / "model.safetensors", path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"wrong shape \(first: final.bias is \(2,\), expected \(1,\)\)"):
        from_pretrained(path)


def test_truncated_weights_fail_naming_the_file(ul_checkpoint):
    _, path = ul_checkpoint
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        from_pretrained(path)
    assert str(weights) in str(info.value)
    weights.write_bytes(b"")
    with pytest.raises(CheckpointError, match=str(weights)):
        from_pretrained(path)


def test_missing_directory_config_or_weights(tmp_path, ul_checkpoint):
    _, path = ul_checkpoint
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        from_pretrained(path / "config.json")
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors are missing"):
        from_pretrained(path)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        from_pretrained(path)


def test_bad_config_fails_clearly(ul_checkpoint):
    _, path = ul_checkpoint
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read .*config.json"):
        from_pretrained(path)
    config_path.write_text(json.dumps({**config, "model_name": "ulvm_unet_v99"}))
    with pytest.raises(CheckpointError, match="names a model this version of mambaseg does not have"):
        from_pretrained(path)
    config_path.write_text(json.dumps({**config, "model_kwargs": {"no_such_option": 1}}))
    with pytest.raises(CheckpointError, match="cannot rebuild the model"):
        from_pretrained(path)


def test_metadata_must_be_json(tmp_path):
    model = create_model("ulvm_unet_v2")
    with pytest.raises(MambasegError, match="JSON-serialisable"):
        model.save_pretrained(tmp_path / "x", metadata={"bad": object()})
    assert not (tmp_path / "x" / "config.json").exists()
    # numpy-like / tensor scalars are converted
    path = model.save_pretrained(tmp_path / "y", metadata={"dice": torch.tensor(0.5)})
    assert read_config(path)["metadata"] == {"dice": 0.5}


def test_pretrained_kwarg_is_not_reapplied_on_load(tmp_path, monkeypatch):
    model = create_model("resnet18")
    path = model.save_pretrained(tmp_path / "r18")
    config = json.loads((path / "config.json").read_text())
    config["model_kwargs"] = {"pretrained": True}  # e.g. written by an older version
    (path / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    assert from_pretrained(path).model_name == "resnet18"  # no attempt to read ImageNet weights
