"""mambaseg.files: atomic files and folders, strict JSON, the writability probe."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from mambaseg.errors import MambasegError
from mambaseg.files import atomic_dir, atomic_path, prepare_dir, recover_dir, to_json, write_json
from mambaseg.training.history import read_metrics, write_metrics


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity."""
    def refuse(name):
        raise AssertionError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_atomic_path_replaces_on_success_only(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".txt"
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_dir_replaces_and_recovers(tmp_path):
    target = tmp_path / "last"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
    assert (target / "a").read_text() == "2"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("3")
            raise RuntimeError("crash while writing")
    assert (target / "a").read_text() == "2" and not (tmp_path / ".last.tmp").exists()

    # crash after "rename old aside", before "rename new in": the old one comes back
    os.replace(target, tmp_path / ".last.old")
    (tmp_path / ".last.tmp").mkdir()
    recover_dir(target)
    assert (target / "a").read_text() == "2"
    assert not (tmp_path / ".last.old").exists() and not (tmp_path / ".last.tmp").exists()
    # crash after "rename new in", before "delete old": the new one stays
    (tmp_path / ".last.old").mkdir()
    recover_dir(target)
    assert (target / "a").read_text() == "2" and not (tmp_path / ".last.old").exists()


def test_json_writers_never_write_bare_nan(tmp_path):
    obj = {"a": math.nan, "b": [np.float32(np.inf), -math.inf, 1.5], "c": np.int64(2),
           "d": Path("x")}
    write_json(tmp_path / "x.json", obj, default=str)
    assert strict_json((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, None, 1.5],
                                                               "c": 2, "d": "x"}
    write_metrics(tmp_path / "m.jsonl", [{"epoch": 1, "train_loss": math.nan}])
    strict_json((tmp_path / "m.jsonl").read_text())
    assert read_metrics(tmp_path / "m.jsonl") == [{"epoch": 1, "train_loss": None}]
    with pytest.raises(ValueError):  # whatever slips past json_ready is refused, not written
        json.dumps(math.nan, allow_nan=False)
    assert to_json({"x": (math.nan,)}) == '{"x": [null]}'


def test_prepare_dir_creates_checks_and_leaves_nothing(tmp_path):
    out = prepare_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []      # the probe file is removed
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(MambasegError, match=r"output directory .*file.txt.* cannot be created: "
                                            r".*file.txt is a file, not a directory"):
        prepare_dir(tmp_path / "file.txt" / "out")
    with pytest.raises(MambasegError, match=r"^cannot write the run to .*: .*file.txt is a file"):
        prepare_dir(tmp_path / "file.txt" / "run", prefix=f"cannot write the run to {tmp_path}")
