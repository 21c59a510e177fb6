"""The paper's published numbers (``results/paper_table1.json``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mambaseg.errors import DataError

#: file name of the published table inside a results folder
PAPER_TABLE = "paper_table1.json"

#: the paper's 13 models in Table I order (registry names); used when the JSON file is absent
PAPER_MODELS = (
    "unet", "resnet18", "resnet50", "segformer", "umamba_bot", "umamba_bot_pp",
    "ulvm_unet", "ulvm_unet_v1", "ulvm_unet_v2", "ulvm_unet_v3", "ulvm_unet_v4",
    "ulvm_unet_v5", "ulvm_unet_v6",
)


@dataclass(frozen=True)
class PaperEntry:
    """One model's row of the paper's table; any value may be None when not published."""

    model: str
    parameters: int | None
    dice: float | None
    train_time_s: float | None = None
    hardware: str | None = None


@dataclass(frozen=True)
class PaperTable:
    """The published table, in the paper's model order, and where it came from."""

    entries: dict[str, PaperEntry]
    source: str
    epochs: int | None = None

    def get(self, model: str) -> PaperEntry | None:
        return self.entries.get(model)


def load_paper_table(results_dir: str | Path) -> PaperTable:
    """Read ``RESULTS_DIR/paper_table1.json``; an absent file gives an empty table."""
    path = Path(results_dir) / PAPER_TABLE
    if not path.is_file():
        return PaperTable(entries={}, source=f"{PAPER_TABLE} not found in {results_dir}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = {}
        for row in doc["models"]:
            entries[row["model"]] = PaperEntry(
                model=row["model"],
                parameters=row.get("parameters"),
                dice=row.get("dice"),
                train_time_s=row.get("train_time_s"),
                hardware=row.get("hardware"),
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a valid paper table ({exc})") from exc
    src = doc.get("source", {})
    origin = src.get("numbers_from", {})
    source = f"{src.get('repository', '?')}: {origin.get('path', '?')} @ {origin.get('commit', '?')[:12]}"
    return PaperTable(entries=entries, source=source, epochs=doc.get("epochs"))
