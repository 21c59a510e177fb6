"""Hand-written explanations: ``results/notes.md``, one ``## <model>`` section per model."""
from __future__ import annotations

import re
from pathlib import Path

NOTES_FILE = "notes.md"
_HEADING = re.compile(r"^(#{1,2})\s+(.*?)\s*#*\s*$")


def parse_notes(text: str) -> dict[str, str]:
    """Map each ``## <model>`` heading (first word, lower-cased) to the text under it.

    A section ends at the next level-1 or level-2 heading; deeper headings stay inside it.
    """
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            if len(m.group(1)) == 2 and m.group(2):
                key = m.group(2).split()[0].strip("`*_:").lower()
                current = sections.setdefault(key, [])
            else:
                current = None
            continue
        if current is not None:
            current.append(line)
    return {k: "\n".join(v).strip() for k, v in sections.items() if "\n".join(v).strip()}


def load_notes(results_dir: str | Path) -> dict[str, str]:
    """Sections of ``RESULTS_DIR/notes.md``; empty when the file does not exist."""
    path = Path(results_dir) / NOTES_FILE
    if not path.is_file():
        return {}
    return parse_notes(path.read_text(encoding="utf-8"))
