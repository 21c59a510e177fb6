"""The Mamba block: mamba_ssm 1.x parameter layout and initialisation, forward, gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from mambaseg.nn import Mamba
from mambaseg.ops.reference import selective_scan_reference

# mamba_ssm.modules.mamba_simple.Mamba(d_model=16) state_dict: d_inner = 32, dt_rank = 1, N = 16
MAMBA_SSM_16 = {
    "A_log": (32, 16),
    "D": (32,),
    "in_proj.weight": (64, 16),
    "conv1d.weight": (32, 1, 4),
    "conv1d.bias": (32,),
    "x_proj.weight": (1 + 32, 32),
    "dt_proj.weight": (32, 1),
    "dt_proj.bias": (32,),
    "out_proj.weight": (16, 32),
}


def _mamba_ssm_layout(d_model, d_state=16, d_conv=4, expand=2):
    e = expand * d_model
    r = math.ceil(d_model / 16)
    return {"A_log": (e, d_state), "D": (e,), "in_proj.weight": (2 * e, d_model),
            "conv1d.weight": (e, 1, d_conv), "conv1d.bias": (e,),
            "x_proj.weight": (r + 2 * d_state, e), "dt_proj.weight": (e, r), "dt_proj.bias": (e,),
            "out_proj.weight": (d_model, e)}


def _slow_mamba_ssm_forward(m, hidden):
    """mamba_ssm 1.x ``Mamba.forward`` without the fused path, transcribed with plain layouts."""
    batch, length, _ = hidden.shape
    xz = (m.in_proj.weight @ hidden.reshape(batch * length, -1).t()).reshape(-1, batch, length)
    xz = xz.permute(1, 0, 2)  # "d (b l) -> b d l"
    A = -torch.exp(m.A_log.float())
    x, z = xz.chunk(2, dim=1)
    x = F.silu(m.conv1d(x)[..., :length])
    x_dbl = m.x_proj(x.permute(0, 2, 1).reshape(batch * length, -1))  # "(b l) d"
    dt, B, C = torch.split(x_dbl, [m.dt_rank, m.d_state, m.d_state], dim=-1)
    dt = (m.dt_proj.weight @ dt.t()).reshape(-1, batch, length).permute(1, 0, 2)
    B = B.reshape(batch, length, -1).permute(0, 2, 1).contiguous()
    C = C.reshape(batch, length, -1).permute(0, 2, 1).contiguous()
    y = selective_scan_reference(x, dt, A, B, C, m.D.float(), z=z,
                                 delta_bias=m.dt_proj.bias.float(), delta_softplus=True)
    return m.out_proj(y.permute(0, 2, 1))


def test_state_dict_layout_d16():
    m = Mamba(16)
    sd = m.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == MAMBA_SSM_16
    assert m.dt_rank == 1 and m.d_inner == 32


@pytest.mark.parametrize("d_model,d_state,d_conv,expand", [(40, 8, 3, 2), (64, 16, 4, 1)])
def test_state_dict_layout_other_sizes(d_model, d_state, d_conv, expand):
    m = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == \
        _mamba_ssm_layout(d_model, d_state, d_conv, expand)


def test_loads_mamba_ssm_state_dict_unchanged():
    g = torch.Generator().manual_seed(0)
    foreign = {k: torch.randn(*shape, generator=g) for k, shape in MAMBA_SSM_16.items()}
    m = Mamba(16)
    result = m.load_state_dict(foreign, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in m.state_dict().items():
        assert torch.equal(v, foreign[k])


def test_initialisation():
    torch.manual_seed(0)
    m = Mamba(32, d_state=8)
    e, n = m.d_inner, m.d_state
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1, n + 1.0)).repeat(e, 1))
    assert m.A_log.dtype == torch.float32
    torch.testing.assert_close(m.D, torch.ones(e))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    assert dt.min() < 0.01 < dt.max()  # log-uniform over [1e-3, 1e-1]
    bound = m.dt_rank ** -0.5
    assert m.dt_proj.weight.abs().max() <= bound
    assert m.in_proj.bias is None and m.out_proj.bias is None and m.x_proj.bias is None
    assert m.conv1d.bias is not None and m.conv1d.groups == e and m.conv1d.padding == (3,)
    assert getattr(m.A_log, "_no_weight_decay", False) and getattr(m.D, "_no_weight_decay", False)
    assert getattr(m.dt_proj.bias, "_no_reinit", False)


@pytest.mark.parametrize("shape", [(2, 37, 16), (1, 1, 24), (3, 64, 8)])
def test_forward_shape_and_grads(shape):
    torch.manual_seed(1)
    batch, length, d_model = shape
    m = Mamba(d_model)
    x = torch.randn(batch, length, d_model, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and y.is_contiguous()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if length > 1:  # with one step the decay A never acts (the state starts at 0)
            assert p.grad.abs().sum() > 0, name


def test_matches_mamba_ssm_computation():
    torch.manual_seed(2)
    m = Mamba(24, d_state=8)
    x = torch.randn(2, 45, 24)
    torch.testing.assert_close(m(x), _slow_mamba_ssm_forward(m, x), rtol=1e-5, atol=1e-5)


def test_torch_backend_equals_reference_backend():
    torch.manual_seed(3)
    m = Mamba(16, scan_backend="torch")
    x = torch.randn(2, 50, 16, requires_grad=True)
    outs, grads = [], []
    for backend in ("torch", "reference"):
        m.scan_backend = backend
        m.zero_grad()
        x.grad = None
        y = m(x)
        y.sin().sum().backward()
        outs.append(y.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in m.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=6e-4, atol=2e-3)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=6e-4, atol=2e-3)


def test_backend_is_passed_through():
    m = Mamba(16, scan_backend="no_such_backend")
    with pytest.raises(ValueError, match="no_such_backend"):
        m(torch.randn(1, 4, 16))


def test_autocast_bf16_finite():
    torch.manual_seed(4)
    m = Mamba(16)
    x = torch.randn(2, 300, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    y.float().square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad.dtype == p.dtype and torch.isfinite(p.grad).all(), name
