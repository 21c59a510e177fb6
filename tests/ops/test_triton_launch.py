"""The direct-launch cache of mambaseg.ops.triton_launch, with stand-ins for Triton's objects
(the real launches run in tests/ops/test_scan_cuda.py on a GPU)."""
import pytest
import torch

from mambaseg.ops import triton_launch


class FakeCompiled:
    def __init__(self, log):
        self.function, self.packed_metadata = "fn-handle", "packed"
        self.run = lambda *a: log.append(("direct", a))


class FakeKernel:
    """Parameters x_ptr, n, s, then the constexprs BLOCK and FLAG, like a @triton.jit kernel."""

    arg_names = ["x_ptr", "n", "s", "BLOCK", "FLAG"]

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.log.append(("triton", grid, args, meta))
            return FakeCompiled(self.log)
        return run


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setattr(triton_launch, "_CACHE", {})
    monkeypatch.setattr(triton_launch, "_N_PTR", {})
    monkeypatch.setattr(triton_launch, "current_stream", lambda dev: 1000 + dev)
    monkeypatch.setattr(triton_launch, "_hooks_active", lambda: False)
    monkeypatch.delenv("MAMBASEG_TRITON_FAST_LAUNCH", raising=False)
    return FakeKernel()


def test_first_call_through_triton_then_direct_with_triton_argument_order(kernel):
    x = torch.zeros(64)
    meta = dict(BLOCK=32, FLAG=True, num_warps=4)
    triton_launch.launch(kernel, (3, 2), (x, 100, 1), meta, 0)
    assert kernel.log == [("triton", (3, 2), (x, 100, 1), meta)]
    triton_launch.launch(kernel, (5, 1), (x, 100, 1), meta, 0)  # same specialisation, other grid
    kind, call = kernel.log[1]
    # grid x, y, z, stream, function, packed metadata, launch metadata, enter/exit hooks, then
    # every parameter in order with the constexprs' values (the launcher skips them)
    assert kind == "direct"
    assert call == (5, 1, 1, 1000, "fn-handle", "packed", None, None, None, x, 100, 1, 32, True)


@pytest.mark.parametrize("change", ["misaligned", "dtype", "int_one", "int_div16", "int64",
                                    "int_value", "constexpr", "options", "device"])
def test_another_specialisation_goes_through_triton(kernel, change):
    x = torch.zeros(64)
    args, meta, dev = (x, 100, 3), dict(BLOCK=32, FLAG=True, num_warps=4), 0
    triton_launch.launch(kernel, (1, 1), args, meta, dev)
    args2, meta2, dev2 = list(args), dict(meta), dev
    if change == "misaligned":
        args2[0] = x[1:]  # 4 bytes off: Triton compiles a variant without the alignment hint
    elif change == "dtype":
        args2[0] = x.double()
    elif change == "int_one":
        args2[2] = 1
    elif change == "int_div16":
        args2[1] = 96
    elif change == "int64":
        args2[1] = 1 << 33
    elif change == "int_value":  # ints are keyed by value: a new problem size compiles nothing
        args2[1] = 101           # new, but takes Triton's path once
    elif change == "constexpr":
        meta2["BLOCK"] = 64
    elif change == "options":
        meta2["num_warps"] = 8
    else:
        dev2 = 1
    triton_launch.launch(kernel, (1, 1), tuple(args2), meta2, dev2)
    assert [e[0] for e in kernel.log] == ["triton", "triton"]
    triton_launch.launch(kernel, (1, 1), tuple(args2), meta2, dev2)  # now cached too
    assert [e[0] for e in kernel.log] == ["triton", "triton", "direct"]


def test_triton_path_when_disabled_interpreted_or_hooked(kernel, monkeypatch):
    x = torch.zeros(64)
    meta = dict(BLOCK=32, FLAG=False, num_warps=4)
    for _ in range(2):
        triton_launch.launch(kernel, (1, 1), (x, 7, 1), meta, None)  # CPU tensors (interpreter)
    monkeypatch.setenv("MAMBASEG_TRITON_FAST_LAUNCH", "0")
    for _ in range(2):
        triton_launch.launch(kernel, (1, 1), (x, 7, 1), meta, 0)
    monkeypatch.delenv("MAMBASEG_TRITON_FAST_LAUNCH")
    monkeypatch.setattr(triton_launch, "_hooks_active", lambda: True)  # a profiler's hooks
    for _ in range(2):
        triton_launch.launch(kernel, (1, 1), (x, 7, 1), meta, 0)
    assert [e[0] for e in kernel.log] == ["triton"] * 6


def test_kernels_without_launcher_attributes_stay_on_triton_path(kernel):
    class Bare(FakeKernel):
        def __getitem__(self, grid):
            def run(*args, **meta):
                self.log.append(("triton", grid, args, meta))
                return None  # e.g. the interpreter's launcher returns nothing
            return run

    bare = Bare()
    x = torch.zeros(64)
    for _ in range(3):
        triton_launch.launch(bare, (1, 1), (x, 7, 1), dict(BLOCK=32, FLAG=False), 0)
    assert [e[0] for e in bare.log] == ["triton"] * 3


def test_arguments_not_pointers_then_ints_stay_on_triton_path(kernel):
    x = torch.zeros(64)
    for _ in range(3):  # a tensor after an int: such a kernel is never launched directly
        triton_launch.launch(kernel, (1, 1), (x, 7, x), dict(BLOCK=32, FLAG=False), 0)
    assert [e[0] for e in kernel.log] == ["triton"] * 3


def test_hook_detection_follows_triton_knobs(monkeypatch):
    class Chain:  # Triton 3.6's HookChain: active when it holds calls
        def __init__(self, calls):
            self.calls = calls

    class Knobs:
        launch_enter_hook = Chain([])
        launch_exit_hook = Chain([])

    monkeypatch.setattr(triton_launch, "_KNOBS", Knobs)
    assert not triton_launch._hooks_active()
    Knobs.launch_enter_hook = Chain([print])
    assert triton_launch._hooks_active()
    Knobs.launch_enter_hook, Knobs.launch_exit_hook = None, None  # other versions: None ...
    assert not triton_launch._hooks_active()
    Knobs.launch_exit_hook = print  # ... or a callable
    assert triton_launch._hooks_active()
