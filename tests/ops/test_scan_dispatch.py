"""Backend selection of `selective_scan`: argument, environment variable, defaults, errors."""
import importlib
import importlib.util

import pytest
import torch
from scan_helpers import make_inputs

import mambaseg.ops.scan_torch as scan_torch
from mambaseg.ops import available_backends, selective_scan
from mambaseg.ops.reference import selective_scan_reference
from mambaseg.ops.selective_scan import ENV_VAR, resolve_backend

# the module (the package attribute of that name is the function)
dispatch = importlib.import_module("mambaseg.ops.selective_scan")


def _args(**kw):
    inp = make_inputs(1, 2, 6, 3, **kw)
    return [inp[k] for k in ("u", "delta", "A", "B", "C")], inp


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture
def spy(monkeypatch):
    """Record which backend function runs."""
    calls = []
    real_torch = scan_torch.selective_scan_torch

    def fake_torch(*a, **k):
        calls.append("torch")
        return real_torch(*a, **k)

    monkeypatch.setattr(dispatch, "selective_scan_torch", fake_torch)
    real_ref = dispatch.selective_scan_reference

    def fake_ref(*a, **k):
        calls.append("reference")
        return real_ref(*a, **k)

    monkeypatch.setattr(dispatch, "selective_scan_reference", fake_ref)
    return calls


def test_available_on_cpu():
    names = available_backends("cpu")
    assert names[:2] == ["reference", "torch"]
    assert "triton" not in names  # CPU tensors need the interpreter
    assert "mamba_ssm" not in names  # CUDA only


def test_default_on_cpu_is_torch(spy):
    args, _ = _args()
    assert resolve_backend(None, "cpu") == "torch"
    selective_scan(*args)
    assert spy == ["torch"]


def test_env_var_selects_backend(monkeypatch, spy):
    args, _ = _args()
    monkeypatch.setenv(ENV_VAR, "reference")
    y = selective_scan(*args)
    assert spy == ["reference"]
    torch.testing.assert_close(y, selective_scan_reference(*args))
    monkeypatch.setenv(ENV_VAR, "auto")
    selective_scan(*args)
    assert spy == ["reference", "torch"]


def test_argument_overrides_env_var(monkeypatch, spy):
    args, _ = _args()
    monkeypatch.setenv(ENV_VAR, "reference")
    selective_scan(*args, backend="torch")
    assert spy == ["torch"]


def test_unknown_backend_errors(monkeypatch):
    args, _ = _args()
    with pytest.raises(ValueError, match=r"unknown.*'cuda_magic'.*available on cpu: reference, torch"):
        selective_scan(*args, backend="cuda_magic")
    monkeypatch.setenv(ENV_VAR, "nope")
    with pytest.raises(ValueError, match=rf"'nope'.*{ENV_VAR}.*reference, torch"):
        selective_scan(*args)


def test_unavailable_backend_errors():
    args, _ = _args()
    with pytest.raises(ValueError, match=r"'triton'.*not available.*available: reference, torch"):
        selective_scan(*args, backend="triton")
    if importlib.util.find_spec("mamba_ssm") is None:
        with pytest.raises(ValueError, match=r"'mamba_ssm'.*not available.*available: reference, torch"):
            selective_scan(*args, backend="mamba_ssm")


def test_shape_errors():
    args, inp = _args()
    u, delta, A, B, C = args
    with pytest.raises(ValueError, match="delta"):
        selective_scan(u, delta[:, :, :-1], A, B, C)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:1], B, C)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(u, delta, A, B[:, :2], C)
    with pytest.raises(ValueError, match="D must be"):
        selective_scan(u, delta, A, B, C, D=torch.ones(5))
    with pytest.raises(ValueError, match="u must be"):
        selective_scan(u[0], delta, A, B, C)

