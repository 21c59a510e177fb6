"""Shared fixtures: the bundled sample dataset and the full LGG dataset (restored once, cached).

- ``sample_root``: ``examples/lgg-sample`` (3 patients, 62 slices, 25 with tumour). Read only:
  tests that need a broken or modified dataset copy it into ``tmp_path`` first.
- ``full_lgg_root`` (session): the full dataset (110 patients, 3929 slices) restored from the
  ``shared/data/lgg`` folder beside the repository checkout into
  ``$MAMBASEG_TEST_CACHE/lgg`` (default ``~/.cache/mambaseg-tests/lgg``); restore.py is
  idempotent, so later sessions reuse it at once. Skipped only when that shared folder is absent.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "lgg-sample"
SHARED_LGG = REPO.parent / "shared" / "data" / "lgg"


@pytest.fixture
def sample_root() -> Path:
    """The bundled sample dataset's folder (the parent of its ``kaggle_3m``)."""
    assert (SAMPLE / "kaggle_3m").is_dir(), f"bundled sample missing: {SAMPLE}"
    return SAMPLE


def _cache_dir() -> Path:
    base = os.environ.get("MAMBASEG_TEST_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mambaseg-tests") / "lgg"


@pytest.fixture(scope="session")
def full_lgg_root() -> Path:
    """The full LGG dataset in the Kaggle layout (the parent of ``kaggle_3m``), cached."""
    restore = SHARED_LGG / "restore.py"
    if not restore.is_file():
        pytest.skip(f"full LGG dataset not available: {SHARED_LGG} does not exist "
                    "(expected a 'shared' folder beside the repository checkout)")
    dest = _cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / ".lgg.lock", "w") as lock:  # one restore at a time (pytest-xdist)
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run([sys.executable, str(restore), str(dest)],
                              capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"restoring the LGG dataset into {dest} failed:\n{done.stdout}{done.stderr}")
    return dest


@pytest.fixture
def one_thread():
    """Run the test with one torch thread: tiny models train faster (and bit-reproducibly) so on
    a busy 2-core machine. Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
