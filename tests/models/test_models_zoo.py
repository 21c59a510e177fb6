"""Every registered model: parameter count, forward, backward, save/load, one input channel."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambaseg.models import count_parameters, create_model, from_pretrained, list_models
from mambaseg.models.umamba import DEEP_SUPERVISION_PARAMS

#: parameter counts of the seed's classes (lxaw/mamba-tumor-seg), 3 input channels, 1 class
SEED_PARAMS = {
    "unet": 7_765_985,
    "resnet18": 13_930_497,
    "resnet50": 42_909_633,
    "segformer": 17_782_913,
    "umamba_bot": 9_813_700,
    "umamba_bot_pp": 10_076_356,
    "ulvm_unet": 49_457,
    "ulvm_unet_v1": 217_165,
    "ulvm_unet_v2": 42_737,
    "ulvm_unet_v3": 176_453,
    "ulvm_unet_v4": 1_135_309,
    "ulvm_unet_v5": 703_885,
    "ulvm_unet_v6": 769_677,
}

EXPECTED_PARAMS = SEED_PARAMS
#: models built on a library whose layers differ from the seed's: relative tolerance
LIBRARY_TOLERANCE = {"segformer": 0.02}


def test_every_registered_model_has_a_reference_count():
    assert sorted(SEED_PARAMS) == list_models()


def _input_size(model) -> int:
    return 64 if model.is_valid_size(64, 64) else model.smallest_size


@pytest.mark.parametrize("name", list_models())
def test_model(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name)
    assert model.model_name == name

    # parameter count: exact (or within the library tolerance), and the cheap meta-device count agrees
    n_params = sum(p.numel() for p in model.parameters())
    assert count_parameters(name) == n_params
    if name in LIBRARY_TOLERANCE:
        assert abs(n_params - SEED_PARAMS[name]) <= LIBRARY_TOLERANCE[name] * SEED_PARAMS[name], n_params
    else:
        assert n_params == EXPECTED_PARAMS[name]

    # forward: finite logits of the input's size
    size = _input_size(model)
    x = torch.rand(2, 3, size, size)
    model.train()
    logits = model(x)
    assert logits.shape == (2, 1, size, size)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()

    # backward: every parameter gets a finite gradient (U-Mamba's deep-supervision layers, which
    # the plain forward does not use, are trained through the deep-supervision outputs)
    target = (torch.rand_like(logits) > 0.5).float()
    loss = F.binary_cross_entropy_with_logits(logits, target)
    if hasattr(model, "deep_supervision"):
        model.deep_supervision = True
        outputs = model(x)
        assert [o.shape[-1] for o in outputs] == [size // 2 ** k for k in range(len(outputs))]
        assert torch.equal(outputs[0], logits)  # the full-resolution output is the plain one
        loss = loss + sum(o.float().mean() for o in outputs[1:])
        model.deep_supervision = False
    loss.backward()
    no_grad = [k for k, p in model.named_parameters() if p.grad is None]
    not_finite = [k for k, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert not not_finite, f"parameters with non-finite gradient: {not_finite[:5]}"

    # save -> load gives identical outputs (eval mode)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    model.save_pretrained(tmp_path / "ckpt", metadata={"metrics": {"test": {"dice": 0.5}}})
    loaded = from_pretrained(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.model_name == name
    assert not loaded.training
    assert loaded.checkpoint_config["num_parameters"] == n_params
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)

    # one input channel
    mono = create_model(name, in_channels=1).eval()
    with torch.no_grad():
        out = mono(torch.rand(1, 1, size, size))
    assert out.shape == (1, 1, size, size) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["umamba_bot", "umamba_bot_pp"])
def test_umamba_plain_forward_leaves_only_the_deep_supervision_layers_untrained(name):
    model = create_model(name)
    x = torch.rand(1, 3, 64, 64)
    model(x).mean().backward()
    idle = [(k, p.numel()) for k, p in model.named_parameters() if p.grad is None]
    assert all(k.startswith("decoder.seg_layers.") for k, _ in idle)
    assert sum(n for _, n in idle) == DEEP_SUPERVISION_PARAMS == 451
