"""Run the Triton backend under TRITON_INTERPRET=1 on CPU against the float64 reference.

Not a test module: tests/ops/test_scan_triton_interp.py runs it in a subprocess (the variable
must be set before triton is imported, and must not leak into the rest of the test session).
Usage: TRITON_INTERPRET=1 python triton_interp_cases.py OUT.json [CASE_ID ...]
Writes {case_id: "ok" | error text}, plus "_compat": the interpreter workaround applied, if any.

Triton 3.6 with NumPy >= 2.4 (triton-lang/triton#9171; fixed in the 3.8 interpreter): the
interpreter stores every scalar as a shape-(1,) array and its ``tensor.__index__`` is
``int(self.handle.data)``, which NumPy 2.4 rejects; so every kernel whose ``for`` loop has a
runtime bound (ours: the chunk loops, ``range(c0, c1)``) fails under TRITON_INTERPRET=1 there,
with ``InterpreterError: TypeError('only 0-dimensional arrays can be converted to Python
scalars')``. Compiled kernels are unaffected. ``_interpreter_compat`` detects exactly this with a
probe kernel and, only then, applies Triton's own fix (``int(data.squeeze())``, as in Triton 3.8)
for this process.
"""
import json
import os
import sys
import traceback

if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
    sys.exit("set TRITON_INTERPRET=1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from scan_helpers import INTERP_CASES, compare, detached_copy, make_inputs, run  # noqa: E402

from mambaseg.ops import available_backends, selective_scan  # noqa: E402
from mambaseg.ops.reference import selective_scan_reference  # noqa: E402
from mambaseg.ops.triton.launch import _Plan, selective_scan_triton  # noqa: E402

_NUMPY_INDEX_ERR = "only 0-dimensional arrays can be converted to Python scalars"


@triton.jit
def _probe(out_ptr, n):
    for i in range(0, n):  # runtime loop bound: calls tensor.__index__ in the interpreter
        tl.store(out_ptr + i, i)


def _probe_loop():
    out = torch.zeros(3, dtype=torch.int32)
    _probe[(1,)](out, 3)
    assert out.tolist() == [0, 1, 2], out


def _interpreter_compat():
    """Detect triton-lang/triton#9171 and patch the interpreter's tensor.__index__ (see above)."""
    try:
        _probe_loop()
        return None
    except Exception as e:  # InterpreterError(TypeError(...))
        if _NUMPY_INDEX_ERR not in repr(e):
            raise
    import numpy as np
    from triton.runtime import interpreter

    orig = interpreter._patch_lang_tensor

    def _patch_lang_tensor(tensor, scope):
        orig(tensor, scope)
        # the scope restores its changes last-in first-out, so this layering is undone cleanly
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = _patch_lang_tensor
    _probe_loop()
    return (f"triton {triton.__version__} + numpy {np.__version__}: interpreter tensor.__index__ "
            f"raised TypeError({_NUMPY_INDEX_ERR!r}) (triton-lang/triton#9171); patched to "
            "int(data.squeeze()) as in triton 3.8")


def _count_plan_calls():
    """Count the plans' forward and backward calls, so that a case can check that the kernels
    really ran (and no fallback did)."""
    calls = {"forward": 0, "backward": 0}
    for name in calls:
        fn = getattr(_Plan, name)

        def wrapped(plan, *args, _fn=fn, _name=name, **kwargs):
            calls[_name] += 1
            return _fn(plan, *args, **kwargs)

        setattr(_Plan, name, wrapped)
    return calls


PLAN_CALLS = _count_plan_calls()


def run_case(shape, flags, config):
    flags = dict(flags)
    dtype = flags.pop("dtype", torch.float32)
    softplus = flags.get("softplus", True)
    inputs = make_inputs(*shape, dtype=dtype, seed=sum(shape), **flags)
    y_ref, g_ref, gy = run(selective_scan_reference, detached_copy(inputs, torch.float64), softplus)
    before = dict(PLAN_CALLS)
    y, g, _ = run(selective_scan_triton, inputs, softplus, gy.to(dtype), config=config)
    ran = {k: PLAN_CALLS[k] - before[k] for k in PLAN_CALLS}
    assert ran == {"forward": 1, "backward": 1}, f"plan calls {ran}"
    for k, v in g.items():
        assert v.dtype == inputs[k].dtype, f"grad {k} dtype {v.dtype} != {inputs[k].dtype}"
    compare(y, g, y_ref, g_ref, dtype, f"triton {shape} {flags} {config}")
    with torch.no_grad():  # the forward without autograd (no saved states): the same output
        y2 = selective_scan_triton(*(inputs[k] for k in ("u", "delta", "A", "B", "C")),
                                   D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"],
                                   delta_softplus=softplus, config=config)
    torch.testing.assert_close(y2, y, rtol=0, atol=0)


def main():
    out_path, wanted = sys.argv[1], set(sys.argv[2:])
    results = {}
    compat = _interpreter_compat()
    if compat:
        results["_compat"] = compat
        print(f"interpreter workaround applied: {compat}", file=sys.stderr)
    # the dispatcher offers triton on CPU tensors only under the interpreter
    assert "triton" in available_backends("cpu"), available_backends("cpu")
    try:
        inputs = make_inputs(1, 2, 5, 2, seed=0)
        y = selective_scan(*(inputs[k] for k in ("u", "delta", "A", "B", "C")), backend="triton")
        assert y.shape == (1, 2, 5)
        results["dispatch"] = "ok"
    except Exception:
        results["dispatch"] = traceback.format_exc()
    try:  # autocast(bf16) around the call: the kernels still run on fp32 state
        inputs = make_inputs(2, 3, 19, 4, seed=1, strong=True)
        lin = torch.nn.Linear(3, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            u = lin(inputs["u"].transpose(1, 2)).transpose(1, 2)
            y = selective_scan(u, inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                               inputs["D"], inputs["z"], inputs["delta_bias"], True, backend="triton")
        assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
        grads = torch.autograd.grad(y.float().square().sum(), [lin.weight] + [
            v for v in inputs.values() if v is not None])
        assert all(torch.isfinite(g).all() for g in grads)
        results["autocast_bf16"] = "ok"
    except Exception:
        results["autocast_bf16"] = traceback.format_exc()
    try:  # the accumulator the forward zeroes serves one backward; a second backward through
        # the same graph (retain_graph) gets a fresh one
        inputs = make_inputs(1, 3, 21, 4, seed=2)
        y = selective_scan_triton(*(inputs[k] for k in ("u", "delta", "A", "B", "C")),
                                  D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"],
                                  delta_softplus=True, config={"T": 8, "P": 2})
        leaves = [v for v in inputs.values() if v is not None]
        gy = torch.randn_like(y)
        first = torch.autograd.grad(y, leaves, gy, retain_graph=True)
        second = torch.autograd.grad(y, leaves, gy)
        for a, b in zip(first, second):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        results["backward_twice"] = "ok"
    except Exception:
        results["backward_twice"] = traceback.format_exc()
    for case_id, shape, flags, config in INTERP_CASES:
        if wanted and case_id not in wanted:
            continue
        try:
            run_case(shape, flags, config)
            results[case_id] = "ok"
        except Exception:
            results[case_id] = traceback.format_exc()
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
