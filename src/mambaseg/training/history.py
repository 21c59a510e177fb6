"""What a run records while it trains: ``metrics.jsonl``, ``progress.png`` and the epoch line.

``metrics.jsonl`` holds one JSON object per finished epoch (see :data:`METRIC_KEYS`).
``progress.png`` is redrawn after every epoch: loss curves (train, validation) and the
validation Dice, with the best epoch marked. Both are written atomically.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from mambaseg.files import save_figure, to_json, write_text

#: keys of every metrics.jsonl record
METRIC_KEYS = ("epoch", "train_loss", "val_loss", "val_dice", "val_dice_patient", "lr",
               "epoch_time_s", "train_time_s", "val_time_s", "images_per_s", "train_images",
               "checkpoint_time_s", "cuda_graphs")
#: keys that depend on timing (left out when comparing runs)
TIME_KEYS = ("epoch_time_s", "train_time_s", "val_time_s", "images_per_s", "checkpoint_time_s")


def write_metrics(path: str | os.PathLike, history: Iterable[dict[str, Any]]) -> None:
    """(Re)write ``metrics.jsonl`` from a list of epoch records, atomically; strict JSON (a
    non-finite number is written as null, see ``mambaseg.files.to_json``)."""
    text = "".join(to_json(rec) + "\n" for rec in history)
    write_text(path, text)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file ([] if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_progress(path: str | os.PathLike, history: list[dict[str, Any]], title: str = "") -> None:
    """Draw loss and Dice curves of ``history`` into ``path`` (PNG, atomic, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_dice = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker=".", label="train")
    val = [(r["epoch"], r["val_loss"]) for r in history if r.get("val_loss") is not None]
    if val:
        ax_loss.plot(*zip(*val), marker=".", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    dice = [(r["epoch"], r["val_dice"]) for r in history if r.get("val_dice") is not None]
    if dice:
        ax_dice.plot(*zip(*dice), marker=".", color="tab:green", label="validation Dice")
        best = max(dice, key=lambda p: p[1])
        ax_dice.scatter([best[0]], [best[1]], color="tab:red", zorder=3,
                        label=f"best {best[1]:.4f} (epoch {best[0]})")
    per_patient = [(r["epoch"], r["val_dice_patient"]) for r in history
                   if r.get("val_dice_patient") is not None]
    if per_patient:
        ax_dice.plot(*zip(*per_patient), marker=".", color="tab:purple",
                     label="validation Dice per patient (mean)")
    if dice:
        ax_dice.legend(loc="lower right")
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="validation Dice (pooled, threshold 0.5)")
    ax_dice.grid(alpha=0.3)
    for ax in (ax_loss, ax_dice):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def format_record(rec: dict[str, Any], epochs: int) -> str:
    """One line summarising an epoch record."""
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    return (f"epoch {rec['epoch']}/{epochs}  train_loss {f(rec['train_loss'], '.4f')}  "
            f"val_loss {f(rec['val_loss'], '.4f')}  val_dice {f(rec['val_dice'], '.4f')}  "
            + (f"per patient {f(rec['val_dice_patient'], '.4f')}  "
               if rec.get("val_dice_patient") is not None else "")
            + f"lr {rec['lr']:.3g}  {rec['epoch_time_s']:.2f} s  "
            f"({rec['images_per_s']:.0f} img/s)")
