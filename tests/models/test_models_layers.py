"""The building blocks against straightforward transcriptions of the seed's code."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambaseg.models import create_model
from mambaseg.nn import PVMLayer, PyramidPooling, ResidualBlock


def _pvm_seed_style(layer: PVMLayer, x: torch.Tensor) -> torch.Tensor:
    """The seed's PVMLayer.forward: one Mamba call per chunk (torch.chunk)."""
    if layer.ppm is not None:
        x = layer.ppm(x)
    b, c = x.shape[:2]
    dims = x.shape[2:]
    x_norm = layer.norm(x.reshape(b, c, -1).transpose(-1, -2))
    parts = [layer.mamba(p) + layer.skip_scale * p for p in torch.chunk(x_norm, layer.chunks, dim=2)]
    y = layer.proj(layer.norm(torch.cat(parts, dim=2)))
    return y.transpose(-1, -2).reshape(b, layer.out_dim, *dims)


@pytest.mark.parametrize("chunks, ppm", [(4, False), (8, False), (8, True)])
def test_pvm_layer_matches_one_call_per_chunk(chunks, ppm):
    torch.manual_seed(0)
    layer = PVMLayer(32, 24, chunks=chunks, ppm=ppm)
    with torch.no_grad():
        layer.skip_scale.fill_(0.7)
    x = torch.randn(2, 32, 4, 6)
    torch.testing.assert_close(layer(x), _pvm_seed_style(layer, x), rtol=1e-5, atol=1e-6)


def test_pvm_layer_parameters():
    layer = PVMLayer(64, 48, chunks=4)
    assert layer.mamba.d_model == 16
    n_mamba = sum(p.numel() for p in layer.mamba.parameters())
    assert sum(p.numel() for p in layer.parameters()) == 2 * 64 + n_mamba + 64 * 48 + 48 + 1
    with pytest.raises(ValueError, match="cannot be split"):
        PVMLayer(24, 8, chunks=5)


def test_pyramid_pooling():
    ppm = PyramidPooling(512, (64, 128, 256, 64))
    assert sum(p.numel() for p in ppm.parameters()) == 262_656
    x = torch.randn(2, 512, 5, 7)
    y = ppm(x)
    assert y.shape == (2, 512, 5, 7) and (y >= 0).all()
    # bin 1: the global average, projected, constant over the image
    expected = F.relu(ppm.convs[0](x.mean(dim=(2, 3), keepdim=True)))
    torch.testing.assert_close(y[:, :64], expected.expand(-1, -1, 5, 7))
    assert PyramidPooling.psp(256).out_channels == 256
    with pytest.raises(ValueError):
        PyramidPooling(16, (8, 8), bins=(1, 2, 3))


def test_residual_block_shortcut():
    block = ResidualBlock(32, 64, stride=2)
    assert isinstance(block.skip[0], torch.nn.AvgPool2d)
    assert block.skip[1].conv.bias is None and block.skip[1].conv.kernel_size == (1, 1)
    assert block(torch.randn(1, 32, 8, 8)).shape == (1, 64, 4, 4)
    assert isinstance(ResidualBlock(16, 16).skip, torch.nn.Identity)


def _sc_bridge_seed_style(bridge, ts):
    """The seed's SC_Att_Bridge / Spatial_Att_Bridge / Channel_Att_Bridge ('fc')."""
    sat = []
    for t in ts:
        att = torch.cat([torch.mean(t, dim=1, keepdim=True), torch.max(t, dim=1, keepdim=True)[0]], dim=1)
        sat.append(torch.sigmoid(bridge.spatial.conv(att)))
    r = list(ts)
    ts = [a * t for a, t in zip(sat, ts)]
    r_ = list(ts)
    ts = [t + ri for t, ri in zip(ts, r)]
    att = torch.cat([F.adaptive_avg_pool2d(t, 1) for t in ts], dim=1)
    att = bridge.channel.mix(att.squeeze(-1).transpose(-1, -2))
    cat = [torch.sigmoid(fc(att)).transpose(-1, -2).unsqueeze(-1).expand_as(t) for fc, t in zip(bridge.channel.fcs, ts)]
    return [c * t + ri for c, t, ri in zip(cat, ts, r_)]


def test_attention_bridge_matches_seed():
    torch.manual_seed(0)
    model = create_model("ulvm_unet")
    shapes = [(8, 32), (16, 16), (24, 8), (32, 4), (48, 2)]
    ts = [torch.randn(2, c, s, s) for c, s in shapes]
    for a, b in zip(model.bridge(ts), _sc_bridge_seed_style(model.bridge, ts)):
        torch.testing.assert_close(a, b)


def _ultralight_seed_style(m, x):
    """The seed's UltraLight_VM_UNet.forward for any number of levels, written out step by step
    as in ultralightVMUNet.py (6 levels) / ultralightVMUNet_v1.py (5 levels), without the sigmoid."""
    n = len(m.encoders)
    t = []
    out = x
    for i in range(n - 1):
        out = F.gelu(F.max_pool2d(m.encoder_norms[i](m.encoders[i](out)), 2, 2))
        t.append(out)
    t = _sc_bridge_seed_style(m.bridge, t)
    out = F.gelu(m.encoders[n - 1](out))
    out = F.gelu(m.decoder_norms[0](m.decoders[0](out))) + t[n - 2]
    for j in range(1, n - 1):
        out = F.gelu(F.interpolate(m.decoder_norms[j](m.decoders[j](out)), scale_factor=(2, 2),
                                   mode="bilinear", align_corners=True)) + t[n - 2 - j]
    return F.interpolate(m.final(out), scale_factor=(2, 2), mode="bilinear", align_corners=True)


@pytest.mark.parametrize("name, pvm_encoders, pvm_decoders", [
    ("ulvm_unet", [3, 4, 5], [0, 1, 2]),
    ("ulvm_unet_v1", [2, 3, 4], [0, 1, 2]),
    ("ulvm_unet_v6", [3, 4, 5], [0, 1, 2]),
])
def test_ultralight_layout_and_forward(name, pvm_encoders, pvm_decoders):
    torch.manual_seed(0)
    m = create_model(name).eval()
    assert [i for i, e in enumerate(m.encoders) if isinstance(e, PVMLayer)] == pvm_encoders
    assert [j for j, d in enumerate(m.decoders) if isinstance(d, PVMLayer)] == pvm_decoders
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _ultralight_seed_style(m, x))


def test_ultralight_ppm_placement():
    with torch.device("meta"):
        v4, v5, v6 = (create_model(f"ulvm_unet_v{i}") for i in (4, 5, 6))
    pvms = lambda m: [e for e in [*m.encoders, *m.decoders] if isinstance(e, PVMLayer)]  # noqa: E731
    assert all(p.ppm is not None for p in pvms(v4))
    assert all(p.ppm is None for p in pvms(v5))
    assert [p.ppm is not None for p in pvms(v6)] == [False, False, True, False, False, False]
    assert v6.encoders[-1].ppm.out_channels == 256


def test_ultralight_initialisation_follows_the_original():
    torch.manual_seed(0)
    m = create_model("ulvm_unet_v5")
    proj = m.encoders[-1].proj
    assert proj.bias.abs().max() == 0 and abs(proj.weight.std().item() - 0.02) < 0.002  # trunc normal, std 0.02
    assert m.encoders[-1].mamba.dt_proj.bias.abs().max() == 0  # the original re-initialises Mamba's Linears too
    assert m.encoders[0].bias.abs().max() == 0
    assert abs(m.encoders[0].weight.std().item() - (2 / (9 * 16)) ** 0.5) < 0.03


def test_umamba_bot_structure():
    torch.manual_seed(0)
    m = create_model("umamba_bot_pp").eval()
    assert m.encoder.strides == (1, 2, 2, 2, 2) and m.encoder.features == (32, 64, 128, 256, 512)
    assert m.mamba.d_model == 512 and m.norm.normalized_shape == (512,)
    assert not any(isinstance(mod, torch.nn.InstanceNorm2d) and mod.affine for mod in m.modules())
    # the Mamba output replaces the bottleneck features: a hook sees the decoder get it unchanged
    seen = {}
    m.decoder.upsamples[0].register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    m.mamba.register_forward_hook(lambda mod, args, out: seen.setdefault("mamba", out))
    with torch.no_grad():
        m(torch.rand(1, 3, 64, 64))
    assert seen["x"].shape == (1, 512, 4, 4)
    torch.testing.assert_close(seen["x"].flatten(2).transpose(1, 2), seen["mamba"])


def test_fast_max_pool_equals_max_pool2d():
    import torch.nn.functional as F

    from mambaseg.models.ultralight import max_pool2x2

    x = torch.randn(2, 8, 32, 48)
    with torch.no_grad():
        assert torch.equal(max_pool2x2(x), F.max_pool2d(x, 2, 2))
    y = torch.randn(1, 4, 16, 16, requires_grad=True)
    max_pool2x2(y).sum().backward()  # with autograd: the indexed max-pool, gradients flow
    assert y.grad is not None and y.grad.sum().item() == 4 * 8 * 8  # one input per output window
