"""Dataset statistics per split part (the paper's Fig. 1): patients, slices, tumour slices.

``split_stats`` computes them (a plain dict, reused by the report package); ``format_stats`` makes
a text table and ``plot_stats`` a PNG bar chart.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mambaseg.data.io import read_mask
from mambaseg.data.layout import Slice, find_slices
from mambaseg.data.splits import resolve_split
from mambaseg.data.verify import default_workers
from mambaseg.errors import DataError
from mambaseg.files import save_figure

_COLUMNS = ("patients", "slices", "tumour", "no_tumour")


def _has_tumour(s: Slice) -> bool:
    if s.mask is None:
        raise DataError(f"{s.image}: image without mask (run 'mambaseg data verify')")
    return bool(read_mask(s.mask).any())


def split_stats(parts: dict[str, list[Slice]], workers: int | None = None) -> dict:
    """Counts per part and in total, reading every mask once.

    Returns ``{"parts": {name: {"patients", "slices", "tumour", "no_tumour"}}, "total": {...}}``
    with parts in the order given (e.g. train, val, test, or just ``all``).
    """
    every = [s for part in parts.values() for s in part]
    with ThreadPoolExecutor(workers or default_workers()) as pool:
        tumour = dict(zip((s.image for s in every), pool.map(_has_tumour, every)))

    def counts(slices: list[Slice]) -> dict[str, int]:
        t = sum(tumour[s.image] for s in slices)
        return {"patients": len({s.patient for s in slices}), "slices": len(slices),
                "tumour": t, "no_tumour": len(slices) - t}

    unique = list({s.image: s for s in every}.values())
    return {"parts": {name: counts(sl) for name, sl in parts.items()}, "total": counts(unique)}


def dataset_stats(root: str | os.PathLike, split: str | None = None, seed: int | None = None,
                  fold: int | None = None) -> dict:
    """``split_stats`` of a dataset: the whole of it (part ``all``) or each part of ``split``
    (``paper``, ``patient`` or a split JSON file, as for ``resolve_split``)."""
    if split is None:
        stats = split_stats({"all": find_slices(root)})
    else:
        stats = split_stats(resolve_split(root, split, seed=seed, fold=fold))
    stats["split"] = split
    return stats


def format_stats(stats: dict) -> str:
    """A text table: one row per part (and a total row when there are several parts)."""
    rows = list(stats["parts"].items())
    if len(rows) > 1:
        rows.append(("total", stats["total"]))
    header = ("part", "patients", "slices", "tumour", "no tumour")
    cells = [header] + [(name, *(str(c[k]) for k in _COLUMNS)) for name, c in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w)
                       in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_stats(stats: dict, path: str | os.PathLike, title: str | None = None) -> Path:
    """Save a bar chart of slices with and without tumour per part as PNG (atomic write)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(stats["parts"])
    parts = [stats["parts"][n] for n in names]
    fig = Figure(figsize=(1.6 + 1.4 * len(names), 3.6), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = range(len(names))
    width = 0.38
    for shift, key, label, colour in ((-width / 2, "tumour", "with tumour", "#c0392b"),
                                      (width / 2, "no_tumour", "without tumour", "#7f8c8d")):
        bars = ax.bar([i + shift for i in x], [p[key] for p in parts], width, label=label,
                      color=colour)
        ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks(list(x), [f"{n}\n({p['patients']} patients)" for n, p in zip(names, parts)])
    ax.set_ylabel("slices")
    split = stats.get("split")
    if title is None:
        title = f"slices per part ({Path(split).name} split)" if split else "slices"
    ax.set_title(title)
    ax.margins(y=0.12)
    ax.legend(frameon=False, fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    path = Path(path)
    return save_figure(fig, path)
