"""Dataset statistics (Fig. 1) and their bar chart."""
from __future__ import annotations

from mambaseg.data.stats import dataset_stats, format_stats, plot_stats


def test_whole_sample_stats(sample_root):
    stats = dataset_stats(sample_root)
    assert stats["parts"] == {"all": {"patients": 3, "slices": 62, "tumour": 25,
                                      "no_tumour": 37}}
    assert stats["total"] == stats["parts"]["all"] and stats["split"] is None
    table = format_stats(stats)
    assert "all" in table and "62" in table and "total" not in table


def test_patient_split_stats_add_up(sample_root):
    stats = dataset_stats(sample_root, split="patient")
    parts = stats["parts"]
    assert list(parts) == ["train", "val", "test"]
    assert [parts[p]["patients"] for p in parts] == [1, 1, 1]
    for key in ("slices", "tumour", "no_tumour"):
        assert sum(parts[p][key] for p in parts) == stats["total"][key]
    assert stats["total"]["tumour"] == 25
    assert format_stats(stats).splitlines()[-1].split() == ["total", "3", "62", "25", "37"]


def test_plot_writes_png_atomically(sample_root, tmp_path):
    stats = dataset_stats(sample_root, split="paper")
    out = plot_stats(stats, tmp_path / "fig" / "fig1.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert [p.name for p in out.parent.iterdir()] == ["fig1.png"]
