"""Launch configurations of the Triton scan (mambaseg.ops.triton.config.make_config): defaults
per problem, overrides, and errors. Pure host code: no GPU needed (Triton must import)."""
import pytest
import torch

pytest.importorskip("triton")
from mambaseg.ops.triton import config  # noqa: E402
from mambaseg.ops.triton.config import make_config  # noqa: E402


@pytest.fixture
def h100(monkeypatch):
    """make_config as on a 132-SM GPU (without one: the SM count is all it asks the device)."""
    monkeypatch.setattr(config, "_sm_count", lambda device: 132)
    monkeypatch.delenv("MAMBASEG_TRITON_CONFIG", raising=False)
    config._make_config.cache_clear()
    yield torch.device("cuda", 0)
    config._make_config.cache_clear()


@pytest.mark.parametrize("shape, P, fmaxnreg", [
    ((8, 1024, 4096), 1, 64),   # 2048 forward programs: more than 6 per SM, capped
    ((32, 1024, 256), 1, 64),
    ((128, 12, 1024), 1, None),  # 384 programs fit at once: no cap (it would only spill)
    ((8, 12, 1024), 8, None),   # 24 channel blocks: split along L into 8 parts
    ((8, 16, 4096), 16, None),
])
def test_lean_defaults(h100, shape, P, fmaxnreg):
    cfg = make_config(*shape, 16, h100, graphed=True)
    assert (cfg["T"], cfg["BD"], cfg["BD_BWD"], cfg["NP"]) == (128, 4, 4, 16)
    assert cfg["P"] == P and cfg["n_chunks"] == shape[2] // 128
    assert cfg["PF"] == 1 and cfg["MAXNREG"] == 128 and cfg["BC"] == 2
    assert cfg.get("FMAXNREG") == fmaxnreg
    # a split backward is one launch (look-back between its parts); LB=0: the carry pass
    assert cfg["LB"] == (1 if P > 1 else 0)
    assert make_config(*shape, 16, h100, {"LB": 0})["LB"] == 0

    # the forward's chunks are the backward's
    assert (cfg["T_FWD"], cfg["P_FWD"], cfg["n_chunks_fwd"]) == (128, P, shape[2] // 128)
    eager = make_config(*shape, 16, h100)
    if P == 1:  # eager calls that the backward does not split: the same configuration
        assert eager == cfg
    else:  # eager calls that it splits: the forward in one launch, one channel per program
        assert {k: v for k, v in eager.items() if k not in ("T_FWD", "P_FWD", "cpp_fwd",
                                                             "n_chunks_fwd", "BD")} == \
            {k: v for k, v in cfg.items() if k not in ("T_FWD", "P_FWD", "cpp_fwd",
                                                       "n_chunks_fwd", "BD")}
        assert (eager["T_FWD"], eager["P_FWD"], eager["BD"]) == (1024, 1, 1)
        assert eager["n_chunks_fwd"] == eager["cpp_fwd"] == shape[2] // 1024


def test_lookback_only_where_its_tickets_are_exact(h100):
    """The look-back's tickets count in fp32, exact below 2**24 programs: from there on the
    split backward takes the carry pass."""
    at_limit = make_config(1024, 4096, 4096, 16, h100, {"P": 16})  # 1024 x 1024 blocks x 16
    assert at_limit["P"] == 16 and at_limit["LB"] == 0
    assert make_config(1024, 4092, 4096, 16, h100, {"P": 16})["LB"] == 1  # 1024 x 1023 x 16

def test_forward_chunks_of_its_own(h100):
    cfg = make_config(8, 16, 4096, 16, h100, {"T_FWD": 512, "BD": 2}, graphed=True)
    assert (cfg["T_FWD"], cfg["P_FWD"], cfg["n_chunks_fwd"], cfg["BD"]) == (512, 1, 8, 2)
    cfg = make_config(8, 16, 4096, 16, h100, {"P_FWD": 4})  # an explicit split: kept
    assert (cfg["T_FWD"], cfg["P_FWD"], cfg["cpp_fwd"], cfg["BD"]) == (128, 4, 8, 4)
    # short sequences: T_FWD = L (a power of two, at least T)
    assert make_config(8, 16, 256, 16, h100)["T_FWD"] == 256
    with pytest.raises(ValueError, match="T_FWD=256 > T=128 needs P_FWD=1, got P_FWD=2"):
        make_config(8, 16, 4096, 16, h100, {"T_FWD": 256, "P_FWD": 2})


def test_unaligned_length_defaults(h100):
    # L % 16 != 0: loads not vectorised, one step per lane: T = 32 and no register caps
    cfg = make_config(64, 1024, 1000, 16, h100)
    assert cfg["T"] == 32 and cfg["n_chunks"] == 32
    assert "MAXNREG" not in cfg and "FMAXNREG" not in cfg


def test_overrides_and_environment(h100, monkeypatch):
    cfg = make_config(8, 1024, 4096, 16, h100, {"PF": 0, "FMAXNREG": 0, "MAXNREG": 0, "P": 4})
    assert cfg["PF"] == 0 and "FMAXNREG" not in cfg and "MAXNREG" not in cfg
    assert cfg["P"] == 4 and cfg["cpp"] == 8
    monkeypatch.setenv("MAMBASEG_TRITON_CONFIG", "fmaxnreg=72, PF=0")
    cfg = make_config(8, 1024, 4096, 16, h100)
    assert cfg["FMAXNREG"] == 72 and cfg["PF"] == 0
    # an explicit config wins over the environment
    assert make_config(8, 1024, 4096, 16, h100, {"PF": 1})["PF"] == 1


def test_bad_keys_are_named(h100, monkeypatch):
    monkeypatch.setenv("MAMBASEG_TRITON_CONFIG", "PF=1,BLOCK=3")
    with pytest.raises(ValueError, match="MAMBASEG_TRITON_CONFIG: unknown key 'BLOCK'"):
        make_config(8, 1024, 4096, 16, h100)
    monkeypatch.setenv("MAMBASEG_TRITON_CONFIG", "KERNEL=1")  # the tile layout: deleted
    with pytest.raises(ValueError, match="MAMBASEG_TRITON_CONFIG: unknown key 'KERNEL'"):
        make_config(8, 1024, 4096, 16, h100)
