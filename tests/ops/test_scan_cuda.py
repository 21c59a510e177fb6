"""GPU checks of the selective-scan backends (skipped without CUDA).

At the five benchmark shapes (N = 16, with z, D, delta_bias, softplus) the triton and torch
backends (and mamba_ssm when installed) are compared with the float64 reference, in fp32 and
bf16, output and gradients of every input. The backends run at the full shape (so their launch
configuration is the real one: split along L for the small-channel shapes, one pass for the
large ones); the reference runs on the first batch element only, and the upstream gradient is
zero on the other batch elements so that the weight gradients are comparable too.

Also runs without pytest: ``python tests/ops/test_scan_cuda.py`` (prints one line per case).
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scan_helpers import NAMES, TOL, make_inputs  # noqa: E402

from mambaseg.ops import available_backends, selective_scan  # noqa: E402
from mambaseg.ops.reference import selective_scan_reference  # noqa: E402

try:
    import pytest
except ImportError:  # the script mode below does not need pytest
    pytest = None

SHAPES = [(32, 1024, 256), (8, 12, 1024), (8, 16, 4096), (128, 12, 1024), (8, 1024, 4096)]
DSTATE = 16
SUB = 1  # batch elements checked against the reference
_REF_CACHE = {}


def _inputs(shape):
    """fp32 inputs whose (u, delta, B, C, z) values are exactly representable in bf16."""
    inp = make_inputs(*shape, DSTATE, seed=sum(shape))
    out = {}
    for k, v in inp.items():
        v = v.detach()
        if k not in ("A", "D", "delta_bias"):
            v = v.to(torch.bfloat16).float()
        out[k] = v.cuda()
    return out


def _grad_out(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(7)).cuda()
    g[SUB:] = 0
    return g


def _reference(shape):
    if shape not in _REF_CACHE:
        base = _inputs(shape)
        sub = {k: (v[:SUB] if k not in ("A", "D", "delta_bias") else v).double().requires_grad_(True)
               for k, v in base.items()}
        y = selective_scan_reference(sub["u"], sub["delta"], sub["A"], sub["B"], sub["C"],
                                     D=sub["D"], z=sub["z"], delta_bias=sub["delta_bias"],
                                     delta_softplus=True)
        gy = _grad_out(shape)[:SUB].double()
        grads = torch.autograd.grad(y, [sub[k] for k in NAMES], gy)
        _REF_CACHE[shape] = (base, y.detach(), dict(zip(NAMES, grads)))
    return _REF_CACHE[shape]


def check_backend(shape, backend, dtype):
    base, y_ref, g_ref = _reference(shape)
    inp = {k: (v.to(dtype) if k not in ("A", "D", "delta_bias") else v.clone()).requires_grad_(True)
           for k, v in base.items()}
    y = selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], D=inp["D"],
                       z=inp["z"], delta_bias=inp["delta_bias"], delta_softplus=True,
                       backend=backend)
    assert y.dtype == dtype and y.shape == base["u"].shape
    assert torch.isfinite(y).all(), "non-finite output"
    gy = _grad_out(shape).to(dtype)
    grads = dict(zip(NAMES, torch.autograd.grad(y, [inp[k] for k in NAMES], gy)))
    tol = TOL[dtype]
    what = f"{backend} {shape} {dtype}"
    torch.testing.assert_close(y[:SUB].double(), y_ref, **tol, msg=lambda m: f"{what} out: {m}")
    for k in NAMES:
        g = grads[k]
        assert g.dtype == inp[k].dtype, f"{what}: grad {k} dtype {g.dtype}"
        assert torch.isfinite(g).all(), f"{what}: non-finite grad {k}"
        batched = k not in ("A", "D", "delta_bias")
        if batched:
            assert (g[SUB:] == 0).all(), f"{what}: grad {k} leaks into other batch elements"
            g = g[:SUB]
        atol = tol["atol"] * max(1.0, float(g_ref[k].abs().max()) / 10.0)
        torch.testing.assert_close(g.double(), g_ref[k], rtol=tol["rtol"], atol=atol,
                                   msg=lambda m, k=k: f"{what} grad {k}: {m}")


def _backends():
    names = available_backends("cuda") if torch.cuda.is_available() else []
    return [b for b in ("triton", "torch", "mamba_ssm") if b in names]


def check_mamba_block(backend):
    from mambaseg.nn import Mamba

    torch.manual_seed(0)
    m = Mamba(64, scan_backend=backend).cuda()
    x = torch.randn(4, 333, 64, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    m.scan_backend = "reference"
    with torch.no_grad():
        y_ref = m(x)
        m.scan_backend = backend
        y32 = m(x)
    torch.testing.assert_close(y32, y_ref, rtol=6e-4, atol=2e-3)


if pytest is not None:
    pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
    @pytest.mark.parametrize("backend", ["triton", "torch", "mamba_ssm"])
    @pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
    def test_backend_matches_reference(shape, backend, dtype):
        if backend not in _backends():
            pytest.skip(f"backend {backend} not available")
        check_backend(shape, backend, dtype)

    @pytest.mark.parametrize("backend", ["triton", "torch"])
    def test_mamba_block_cuda(backend):
        if backend not in _backends():
            pytest.skip(f"backend {backend} not available")
        check_mamba_block(backend)

    def test_default_backend_on_cuda():
        from mambaseg.ops.selective_scan import resolve_backend

        # triton first: faster than mamba_ssm's kernels at the benchmark shapes (on the GPU
        # alone at all five; benchmarks/results/scan_h100_h200.txt)
        expected = "triton" if "triton" in _backends() else \
            "mamba_ssm" if "mamba_ssm" in _backends() else "torch"
        assert resolve_backend(None, torch.device("cuda")) == expected


def main():
    if not torch.cuda.is_available():
        print("no CUDA: nothing to run")
        return 0
    failures = 0
    for shape in SHAPES:
        for backend in _backends():
            for dtype in (torch.float32, torch.bfloat16):
                t0 = time.perf_counter()
                try:
                    check_backend(shape, backend, dtype)
                    status = "ok"
                except Exception as exc:  # report and go on
                    failures += 1
                    status = f"FAIL {type(exc).__name__}: {str(exc)[:2000]}"
                print(f"{backend:9s} {str(shape):18s} {str(dtype):15s} {time.perf_counter() - t0:6.1f}s "
                      f"{status}", flush=True)
    for backend in [b for b in _backends() if b != "mamba_ssm"]:
        try:
            check_mamba_block(backend)
            print(f"Mamba block {backend}: ok")
        except Exception as exc:
            failures += 1
            print(f"Mamba block {backend}: FAIL {type(exc).__name__}: {exc}")
    print("failures:", failures)
    return 1 if failures else 0


def _layout_inputs(shape, layout):
    """fp32 CUDA inputs of ``shape`` (N = 16) in a given memory layout: "contiguous";
    "misaligned" (u, delta, B start 4 bytes past a 16-byte boundary); "strided" (z and C
    every other element along time, u with its batch stride not divisible by 16)."""
    inp = {k: v.cuda() if v is not None else None
           for k, v in make_inputs(*shape, DSTATE, seed=3).items()}
    if layout == "misaligned":
        for k in ("u", "delta", "B"):
            buf = torch.empty(inp[k].numel() + 1, device="cuda")[1:]
            inp[k] = buf.view(inp[k].shape).copy_(inp[k])
    elif layout == "strided":
        for k in ("z", "C"):
            inp[k] = torch.repeat_interleave(inp[k], 2, dim=-1)[..., ::2]
        b, d, l = inp["u"].shape
        inp["u"] = torch.empty(b, d * l + 3, device="cuda")[:, :d * l].view(b, d, l) \
            .copy_(inp["u"])
    return {k: v.requires_grad_(True) if v is not None else None for k, v in inp.items()}


def check_triton_layouts_and_repeats(shape, layout):
    """Outputs and gradients against the reference, then the same call twice more (the direct
    launches of mambaseg.ops.triton.fast_launch: pointers as ints) giving the same results."""
    from mambaseg.ops.triton.launch import selective_scan_triton

    inp = _layout_inputs(shape, layout)
    gy = torch.randn(shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    ref_in = {k: v.detach().double().requires_grad_(True) for k, v in inp.items()}
    y_ref = selective_scan_reference(*(ref_in[k] for k in ("u", "delta", "A", "B", "C")),
                                     D=ref_in["D"], z=ref_in["z"],
                                     delta_bias=ref_in["delta_bias"], delta_softplus=True)
    g_ref = torch.autograd.grad(y_ref, [ref_in[k] for k in NAMES], gy.double())
    runs = []
    for _ in range(3):
        y = selective_scan_triton(*(inp[k] for k in ("u", "delta", "A", "B", "C")), D=inp["D"],
                                  z=inp["z"], delta_bias=inp["delta_bias"], delta_softplus=True)
        runs.append((y.detach(), torch.autograd.grad(y, [inp[k] for k in NAMES], gy)))
    what = f"{shape} {layout}"
    torch.testing.assert_close(runs[0][0].double(), y_ref, **TOL[torch.float32],
                               msg=lambda m: f"{what} out: {m}")
    for k, g, r in zip(NAMES, runs[0][1], g_ref):
        atol = TOL[torch.float32]["atol"] * max(1.0, float(r.abs().max()) / 10.0)
        torch.testing.assert_close(g.double(), r, rtol=TOL[torch.float32]["rtol"], atol=atol,
                                   msg=lambda m, k=k: f"{what} grad {k}: {m}")
    for y, grads in runs[1:]:  # outputs bit-equal; gradients up to the order of atomic adds
        assert torch.equal(y, runs[0][0]), f"{what}: repeated call changed the output"
        for k, g, g0 in zip(NAMES, grads, runs[0][1]):
            torch.testing.assert_close(g, g0, rtol=1e-5, atol=1e-5,
                                       msg=lambda m, k=k: f"{what} repeat grad {k}: {m}")


if pytest is not None:
    @pytest.mark.parametrize("layout", ["contiguous", "misaligned", "strided"])
    @pytest.mark.parametrize("shape", [(2, 64, 256), (2, 12, 1024), (1, 8, 200)],
                             ids=lambda s: "x".join(map(str, s)))
    def test_triton_layouts_and_repeated_calls(shape, layout):
        if "triton" not in _backends():
            pytest.skip("triton not available")
        check_triton_layouts_and_repeats(shape, layout)

    @pytest.mark.parametrize("shape", [(2, 12, 1024), (8, 16, 4096)],
                             ids=lambda s: "x".join(map(str, s)))
    def test_triton_eager_and_graphed_configs_agree(shape):
        """Where eager calls and CUDA-graph captures take different forward configurations
        (make_config's ``graphed``: one forward launch, or a split forward), both give the
        same results (run here eagerly, the graphed one named explicitly)."""
        if "triton" not in _backends():
            pytest.skip("triton not available")
        from mambaseg.ops.triton.config import make_config
        from mambaseg.ops.triton.launch import selective_scan_triton

        cfg = {k: make_config(*shape, DSTATE, torch.device("cuda"), graphed=g)
               for k, g in (("eager", False), ("graphed", True))}
        assert cfg["eager"]["P_FWD"] == 1 and cfg["graphed"]["P_FWD"] > 1, cfg
        inp = _layout_inputs(shape, "contiguous")
        gy = torch.randn(shape, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
        res = []
        for config in (None, {"P_FWD": cfg["graphed"]["P_FWD"]}):
            y = selective_scan_triton(*(inp[k] for k in ("u", "delta", "A", "B", "C")),
                                      D=inp["D"], z=inp["z"], delta_bias=inp["delta_bias"],
                                      delta_softplus=True, config=config)
            res.append((y,) + torch.autograd.grad(y, [inp[k] for k in NAMES], gy))
        for name, a, b in zip(("out",) + tuple(NAMES), *res):
            torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4,
                                       msg=lambda m, name=name: f"{shape} {name}: {m}")

    @pytest.mark.parametrize("shape,config", [
        ((2, 12, 1024), {}), ((8, 16, 4096), {}),
        # 16384 programs, far more than the GPU runs at once: the parts must wait only for
        # programs that started before them
        ((16, 256, 2048), {"P": 16}),
        ((3, 5, 999), {"P": 7}),  # odd L, a partial last part, a partial channel block
    ], ids=["2x12x1024", "8x16x4096", "16x256x2048_P16", "3x5x999_P7"])
    def test_triton_split_backward_lookback_matches_carry_pass(shape, config):
        """The split backward in one launch (look-back between the parts, LB=1, the default)
        gives the gradients of the carry pass (LB=0), call after call."""
        if "triton" not in _backends():
            pytest.skip("triton not available")
        from mambaseg.ops.triton.config import make_config
        from mambaseg.ops.triton.launch import selective_scan_triton

        assert make_config(*shape, DSTATE, torch.device("cuda"), config)["LB"] == 1
        inp = _layout_inputs(shape, "contiguous")
        gy = torch.randn(shape, device="cuda", generator=torch.Generator("cuda").manual_seed(3))

        def grads(cfg):
            y = selective_scan_triton(*(inp[k] for k in ("u", "delta", "A", "B", "C")),
                                      D=inp["D"], z=inp["z"], delta_bias=inp["delta_bias"],
                                      delta_softplus=True, config=cfg)
            return torch.autograd.grad(y, [inp[k] for k in NAMES], gy)

        want = grads(dict(config, LB=0))
        for _ in range(5):
            for name, a, b in zip(NAMES, grads(config), want):
                torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4,
                                           msg=lambda m, name=name: f"{shape} {name}: {m}")

    def test_triton_tensors_on_two_devices_error():
        if "triton" not in _backends():
            pytest.skip("triton not available")
        inp = _layout_inputs((1, 4, 32), "contiguous")
        with pytest.raises(ValueError, match="B is on cpu"):
            selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"].detach().cpu(), inp["C"],
                           backend="triton")


if __name__ == "__main__":
    sys.exit(main())
