"""The Triton backend's kernels under the Triton interpreter (CPU), against the reference.

TRITON_INTERPRET must be set before triton is imported, so the cases run in one subprocess
(tests/ops/triton_interp_cases.py); each case is reported as its own test here. A failure's
message starts with the exception line (what a short summary keeps), then the case's traceback
and the tail of the subprocess's stderr. Where the Triton interpreter has triton-lang/triton#9171
(3.6.0 with NumPy >= 2.4) the subprocess patches that bug (see triton_interp_cases.py) and says
so in a warning.
"""
import importlib.util
import json
import os
import subprocess
import sys
import warnings
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
        err = proc.stderr.strip().splitlines()
        pytest.fail(f"interpreter subprocess failed (rc={proc.returncode}): "
                    f"{err[-1] if err else '(no stderr)'}\n"
                    f"--- stdout tail ---\n{proc.stdout[-4000:]}\n"
                    f"--- stderr tail ---\n{proc.stderr[-4000:]}")
    results = json.loads(out.read_text())
    results["_stderr_tail"] = proc.stderr[-3000:]
    if results.get("_compat"):
        warnings.warn(f"Triton interpreter workaround applied: {results['_compat']}", stacklevel=1)
    return results


def _summary(tb):
    """The exception line of a traceback (for kernel errors the interpreter's
    ``InterpreterError(repr(original))``; the original's traceback comes before it)."""
    lines = [ln for ln in tb.strip().splitlines() if ln and not ln.startswith(" ")]
    return lines[-1] if lines else tb.strip()[:300]


@pytest.mark.parametrize("case_id", ["dispatch", "autocast_bf16", "backward_twice"]
                         + [c[0] for c in INTERP_CASES])
def test_triton_interpreter(interp_results, case_id):
    result = interp_results.get(case_id)
    if result != "ok":
        result = result if result is not None else f"case {case_id!r} missing from the results"
        pytest.fail(f"{_summary(result)}\n--- case traceback ---\n{result}\n"
                    f"--- subprocess stderr tail ---\n{interp_results['_stderr_tail']}",
                    pytrace=False)
