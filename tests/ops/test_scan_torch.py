"""The PyTorch selective-scan backend against the float64 sequential reference (CPU)."""
import pytest
import torch
from scan_helpers import compare, detached_copy, make_inputs, run

from mambaseg.ops import scan_torch, selective_scan
from mambaseg.ops.reference import selective_scan_reference

SHAPES = [  # (batch, dim, L, N)
    (1, 1, 1, 1),
    (2, 3, 1, 4),  # L = 1
    (2, 4, 7, 4),  # odd L
    (2, 3, 100, 8),  # L not a power of two
    (1, 5, 129, 16),
]
FLAGS = [  # has_D, has_z, has_bias, softplus
    (True, True, True, True),
    (False, False, False, False),
    (True, False, True, False),
    (False, True, False, True),
]


def _reference(inputs, softplus, grad_out=None):
    ref_in = detached_copy(inputs)
    return run(selective_scan_reference, ref_in, softplus, grad_out)


def _flags_id(f):
    return "D{}-z{}-bias{}-sp{}".format(*(int(x) for x in f))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("flags", FLAGS, ids=_flags_id)
def test_torch_backend_fp32_matches_reference(shape, flags):
    has_D, has_z, has_bias, softplus = flags
    inputs = make_inputs(*shape, has_D=has_D, has_z=has_z, has_bias=has_bias, softplus=softplus,
                         seed=hash((shape, flags)) % 1000)
    y_ref, g_ref, gy = _reference(inputs, softplus)
    y, g, _ = run(selective_scan, inputs, softplus, gy, backend="torch")
    compare(y, g, y_ref, g_ref, torch.float32, f"torch {shape} {flags}")


@pytest.mark.parametrize("seg_steps", [1, 5, 16])
def test_torch_backend_several_segments(monkeypatch, seg_steps):
    """The state and the adjoint cross segment boundaries (segment length forced small)."""
    batch, dim, length, dstate = 2, 3, 61, 4
    monkeypatch.setitem(scan_torch._SEGMENT_ELEMS, "cpu", seg_steps * batch * dim * dstate)
    inputs = make_inputs(batch, dim, length, dstate, seed=seg_steps)
    y_ref, g_ref, gy = _reference(inputs, True)
    y, g, _ = run(selective_scan, inputs, True, gy, backend="torch")
    compare(y, g, y_ref, g_ref, torch.float32, f"torch seg={seg_steps}")


def test_torch_backend_recompute_path(monkeypatch):
    """Backward that recomputes decays and states (what large problems do) instead of keeping them."""
    monkeypatch.setitem(scan_torch._SAVE_ELEMS, "cpu", 0)
    inputs = make_inputs(2, 3, 45, 4, seed=4)
    y_ref, g_ref, gy = _reference(inputs, True)
    y, g, _ = run(selective_scan, inputs, True, gy, backend="torch")
    compare(y, g, y_ref, g_ref, torch.float32, "torch recompute")


def test_torch_backend_double_backward_graph_reuse():
    """retain_graph: a second backward through the same graph gives the same gradients."""
    inputs = make_inputs(1, 2, 20, 4, seed=6)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    y = selective_scan(*args, D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"],
                       delta_softplus=True, backend="torch")
    g1 = torch.autograd.grad(y.sum(), args, retain_graph=True)
    g2 = torch.autograd.grad(y.sum(), args)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_torch_backend_strong_and_weak_decay():
    for strong in (True, False):
        inputs = make_inputs(2, 4, 300, 16, strong=strong, seed=3)
        y_ref, g_ref, gy = _reference(inputs, True)
        y, g, _ = run(selective_scan, inputs, True, gy, backend="torch")
        compare(y, g, y_ref, g_ref, torch.float32, f"torch strong={strong}")


def test_torch_backend_gradcheck_float64():
    inputs = make_inputs(2, 2, 9, 3, dtype=torch.float64, weight_dtype=torch.float64, seed=1)
    names = list(inputs)

    def fn(*args):
        kw = dict(zip(names, args))
        return selective_scan(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"], kw["z"],
                              kw["delta_bias"], delta_softplus=True, backend="torch")

    assert torch.autograd.gradcheck(fn, tuple(inputs[k] for k in names))


def test_torch_backend_bf16_inputs():
    inputs = make_inputs(2, 4, 70, 8, dtype=torch.bfloat16, seed=5)
    y_ref, g_ref, gy = run(selective_scan_reference, detached_copy(inputs, torch.float64), True)
    y, g, _ = run(selective_scan, inputs, True, gy.to(torch.bfloat16), backend="torch")
    for k, v in g.items():
        assert v.dtype == inputs[k].dtype, k
    compare(y, g, y_ref, g_ref, torch.bfloat16, "torch bf16")


def test_torch_backend_long_sequence_16k():
    """L = 16384 with strong decays: finite, output equal to the reference; gradients equal to
    the float64 run of the same backend (itself checked against the reference above)."""
    batch, dim, length, dstate = 1, 2, 16384, 8
    for strong in (True, False):
        inputs = make_inputs(batch, dim, length, dstate, strong=strong, seed=11)
        y, g, gy = run(selective_scan, inputs, True, backend="torch")
        assert torch.isfinite(y).all() and all(torch.isfinite(v).all() for v in g.values())
        in64 = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()
                if v is not None}
        in64.update({k: None for k, v in inputs.items() if v is None})
        with torch.no_grad():
            y_ref = selective_scan_reference(*(in64[k] for k in ("u", "delta", "A", "B", "C")),
                                             D=in64["D"], z=in64["z"],
                                             delta_bias=in64["delta_bias"], delta_softplus=True)
        torch.testing.assert_close(y.double(), y_ref, rtol=6e-4, atol=2e-3)
        y64, g64, _ = run(selective_scan, in64, True, gy.double(), backend="torch")
        torch.testing.assert_close(y64, y_ref, rtol=1e-9, atol=1e-9)
        for k in g:
            atol = 2e-3 * max(1.0, float(g64[k].abs().max()) / 10.0)
            torch.testing.assert_close(g[k].double(), g64[k], rtol=6e-4, atol=atol)


def test_autocast_bf16_finite():
    """Under autocast(bf16) the scan runs on fp32 upcasts: finite output and gradients, and the
    gradients come back in the inputs' dtypes."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 8)
    inputs = make_inputs(2, 8, 257, 16, strong=True, seed=2)
    for backend in ("torch", "reference"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            u = lin(inputs["u"].transpose(1, 2)).transpose(1, 2)  # bf16 under autocast
            assert u.dtype == torch.bfloat16
            y = selective_scan(u, inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                               inputs["D"], inputs["z"], inputs["delta_bias"], True, backend=backend)
        assert y.dtype == torch.bfloat16
        assert torch.isfinite(y).all()
        grads = torch.autograd.grad(y.float().square().mean(), [lin.weight] + list(
            v for v in inputs.values() if v is not None))
        assert all(torch.isfinite(gr).all() for gr in grads)
        assert grads[0].dtype == torch.float32
