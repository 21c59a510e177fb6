"""The Triton backend's kernels under the Triton interpreter (CPU), against the reference.

TRITON_INTERPRET must be set before triton is imported, so the cases run in one subprocess
(tests/ops/triton_interp_cases.py); each case is reported as its own test here.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scan_helpers import INTERP_CASES

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not importable")


@pytest.fixture(scope="module")
def interp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton_interp") / "results.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("MAMBASEG_SCAN_BACKEND", None)
    src = str(HERE.parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(HERE / "triton_interp_cases.py"), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"interpreter subprocess failed (rc={proc.returncode}):\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


@pytest.mark.parametrize("case_id", ["dispatch", "autocast_bf16"] + [c[0] for c in INTERP_CASES])
def test_triton_interpreter(interp_results, case_id):
    result = interp_results.get(case_id)
    assert result == "ok", result
