"""Registry, input-size checks and model descriptions."""
from __future__ import annotations

import pytest
import torch

import mambaseg
from mambaseg.errors import MambasegError
from mambaseg.models import SegModel, count_parameters, create_model, get_entry, list_models, register_model
from mambaseg.models import registry


def test_list_models_is_sorted_and_complete():
    names = list_models()
    assert names == sorted(names)
    assert {"unet", "resnet18", "resnet50", "segformer", "umamba_bot", "umamba_bot_pp", "ulvm_unet"} <= set(names)
    assert list_models(family="ultralight") == [f"ulvm_unet{s}" for s in ("", "_v1", "_v2", "_v3", "_v4", "_v5", "_v6")]
    assert mambaseg.list_models() == names  # the package-level lazy alias


def test_unknown_name_lists_valid_names_and_suggests():
    with pytest.raises(MambasegError) as info:
        create_model("ulvm_unet_v9")
    msg = str(info.value)
    assert "unknown model 'ulvm_unet_v9'" in msg
    assert "did you mean 'ulvm_unet_v" in msg
    for name in list_models():
        assert name in msg


def test_unknown_option_is_a_clear_error():
    with pytest.raises(MambasegError, match="unet.*does not take.*colour"):
        create_model("unet", colour="red")


def test_kwargs_are_recorded_but_runtime_options_are_not():
    model = create_model("ulvm_unet", num_classes=2, chunks=8, scan_backend="reference")
    assert model.model_kwargs == {"chunks": 8}
    assert model.num_classes == 2 and model.in_channels == 3
    pvm = model.encoders[-1]
    assert pvm.chunks == 8 and pvm.mamba.scan_backend == "reference"


def test_register_model_decorator_and_duplicates(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class Tiny(SegModel):
        size_multiple = 1

        def __init__(self, in_channels=3, num_classes=1, width=4):
            super().__init__(in_channels, num_classes)
            self.conv = torch.nn.Conv2d(in_channels, num_classes, 1)

        def forward(self, x):
            self.check_input(x)
            return self.conv(x)

    @register_model(family="test")
    def tiny_test_model(in_channels=3, num_classes=1, **kwargs):
        """A one-layer model."""
        return Tiny(in_channels, num_classes, **kwargs)

    assert "tiny_test_model" in list_models()
    assert get_entry("tiny_test_model").family == "test"
    assert get_entry("tiny_test_model").description == "A one-layer model."
    model = create_model("tiny_test_model", width=8)
    assert model.model_kwargs == {"width": 8}
    assert count_parameters("tiny_test_model") == 4
    with pytest.raises(ValueError, match="already registered"):
        register_model(name="tiny_test_model")(lambda in_channels=3, num_classes=1: Tiny())


@pytest.mark.parametrize("name, multiple, smallest", [
    ("unet", 16, 32), ("resnet18", 32, 64), ("segformer", 32, 32), ("umamba_bot", 16, 32),
    ("ulvm_unet", 32, 32), ("ulvm_unet_v1", 16, 16), ("ulvm_unet_v3", 16, 16), ("ulvm_unet_v6", 32, 32),
])
def test_declared_input_sizes(name, multiple, smallest):
    with torch.device("meta"):
        model = create_model(name)
    assert model.size_multiple == multiple and model.smallest_size == smallest
    assert model.is_valid_size(256, 256) and model.is_valid_size(multiple * 9, multiple * 10)
    assert not model.is_valid_size(256, 250)
    assert model.valid_size(250, 257) == (256, 256 + multiple)
    assert model.valid_size(1, 1) == (smallest, smallest)


def test_wrong_size_names_the_nearest_valid_size():
    model = create_model("ulvm_unet")
    with pytest.raises(MambasegError) as info:
        model(torch.rand(1, 3, 250, 250))
    msg = str(info.value)
    assert "ulvm_unet" in msg and "250x250" in msg and "multiples of 32" in msg
    assert "nearest valid size is 256x256" in msg
    with pytest.raises(MambasegError, match=r"nearest valid size is 224x224 \(or pad to 256x256\)"):
        model(torch.rand(1, 3, 230, 230))
    with pytest.raises(MambasegError, match="nearest valid size is 32x64"):
        model(torch.rand(1, 3, 8, 64))


def test_wrong_channels_or_rank_is_a_clear_error():
    model = create_model("unet")
    with pytest.raises(MambasegError, match="3-channel images, got 1 channels"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(MambasegError, match=r"shaped \(B, 3, H, W\)"):
        model(torch.rand(3, 64, 64))


def test_preprocessing_description():
    assert create_model("unet").preprocessing == {
        "input_size": 256, "size_multiple": 16, "min_size": 32, "scale": "divide by 255",
        "value_range": [0.0, 1.0], "channels": ["pre-contrast", "FLAIR", "post-contrast"],
    }
    with torch.device("meta"):
        seg = create_model("segformer")
        mono = create_model("ulvm_unet", in_channels=1)
    assert seg.preprocessing["input_size"] == 224
    assert mono.preprocessing["channels"] is None


def test_pyramid_pooling_adds_exactly_262656_parameters_to_umamba_bot():
    assert count_parameters("umamba_bot_pp") - count_parameters("umamba_bot") == 262_656
    with torch.device("meta"):
        plain, pp = create_model("umamba_bot"), create_model("umamba_bot", ppm=True)
    assert sum(p.numel() for p in pp.parameters()) - sum(p.numel() for p in plain.parameters()) == 262_656


@pytest.mark.parametrize("name", ["unet", "ulvm_unet", "umamba_bot"])
def test_multiclass_output(name):
    model = create_model(name, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_models_accept_non_square_inputs():
    model = create_model("ulvm_unet_v2").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 96)).shape == (1, 1, 32, 96)
