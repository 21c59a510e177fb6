"""CrossScan against the pixel orders written out by index, and MixerBlock's ablation switch."""
from __future__ import annotations

import pytest
import torch

from mambaseg.nn.cross_scan import CrossScan, MixerBlock


def _orders(height: int, width: int) -> dict[str, torch.Tensor]:
    """Flat pixel indices (row-major numbering) in the order each scan visits them."""
    idx = torch.arange(height * width).reshape(height, width)
    rows, cols = idx.flatten(), idx.t().flatten()
    return {"rows": rows, "cols": cols, "rows_rev": rows.flip(0), "cols_rev": cols.flip(0)}


@pytest.mark.parametrize("directions", [1, 2, 4])
def test_cross_scan_is_the_mean_of_the_mamba_over_each_order(directions):
    torch.manual_seed(0)
    layer = CrossScan(8, directions=directions, scan_backend="torch").double().eval()
    x = torch.randn(2, 8, 4, 6, dtype=torch.float64)
    flat = x.flatten(2).transpose(1, 2)  # (B, H*W, C), row-major
    expected = torch.zeros_like(flat)
    orders = _orders(4, 6)
    for name in layer.orders:
        order = orders[name]
        out = layer.mamba(layer.norm(flat[:, order]))  # scan the pixels in this order
        back = torch.empty_like(out)
        back[:, order] = out  # each output to its pixel
        expected += back / directions
    expected = expected.transpose(1, 2).reshape(2, 8, 4, 6)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def test_cross_scan_orders_differ():
    # the scan is causal, so a change in the last pixel of the row-major order reaches the first
    # pixel only through the reversed orders
    torch.manual_seed(0)
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    y = x.clone()
    y[..., -1, -1] += torch.randn(8, dtype=torch.float64)  # not a constant: LayerNorm removes that
    one = CrossScan(8, directions=1, scan_backend="torch").double()
    four = CrossScan(8, directions=4, scan_backend="torch").double()
    assert torch.equal(one(x)[..., 0, 0], one(y)[..., 0, 0])
    assert not torch.allclose(four(x)[..., 0, 0], four(y)[..., 0, 0])


def test_mixer_block_choices():
    assert isinstance(MixerBlock(8, "mamba").mixer, CrossScan)
    assert not any(isinstance(m, CrossScan) for m in MixerBlock(8, "conv").modules())
    with pytest.raises(ValueError, match="mixer must be"):
        MixerBlock(8, "attention")
    with pytest.raises(ValueError, match="directions must be one of"):
        CrossScan(8, directions=3)
