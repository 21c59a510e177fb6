"""The tqdm progress bar that long loops (training epochs, evaluation, predict) show on stderr."""
from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "batch"):
    """A tqdm bar on stderr (a no-op bar when ``enabled`` is False)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled,
                leave=False, dynamic_ncols=True, mininterval=0.5)
