"""The direct launches of mambaseg.ops.triton.fast_launch.Launcher, with stand-ins for Triton's
objects (the real launches run in tests/ops/test_scan_cuda.py on a GPU)."""
import pytest
import torch

from mambaseg.ops.triton import fast_launch
from mambaseg.ops.triton.fast_launch import Launcher, alignment_key


class FakeCompiled:
    def __init__(self, log):
        self.function, self.packed_metadata = "fn-handle", "packed"
        self.run = lambda *a: log.append(("direct", a))


class FakeKernel:
    """Parameters x_ptr, y_ptr, n, s, then the constexprs BLOCK and FLAG, like a @triton.jit
    kernel."""

    arg_names = ["x_ptr", "y_ptr", "n", "s", "BLOCK", "FLAG"]

    def __init__(self):
        self.log = []

    def warmup(self, *args, grid, **meta):
        self.log.append(("warmup", grid, args, meta))
        return FakeCompiled(self.log)

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.log.append(("triton", grid, args, meta))
            return FakeCompiled(self.log)
        return run


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setattr(fast_launch, "current_stream", lambda dev: 1000 + dev)
    monkeypatch.setattr(fast_launch, "_hooks_active", lambda: False)
    monkeypatch.setattr(fast_launch, "_FAST", True)
    return FakeKernel()


def call(launcher, tensors):
    launcher([t.data_ptr() for t in tensors], lambda: tensors)


def test_first_call_through_triton_then_direct_with_int_pointers(kernel):
    x, y = torch.zeros(64), torch.zeros(32)
    meta = dict(BLOCK=32, FLAG=True, num_warps=4)
    lau = Launcher(kernel, (3, 2), (100, 1), meta, 0)
    call(lau, [x, y])
    assert kernel.log == [("triton", (3, 2), (x, y, 100, 1), meta)]
    call(lau, [x, y])
    kind, args = kernel.log[1]
    # grid x, y, z, stream, function, packed metadata, launch metadata, enter/exit hooks, then
    # every parameter in order (pointers as ints) with the constexprs' values (the launcher
    # skips them)
    assert kind == "direct"
    assert args == (3, 2, 1, 1000, "fn-handle", "packed", None, None, None,
                    x.data_ptr(), y.data_ptr(), 100, 1, 32, True)
    z = torch.zeros(64)  # other (aligned) tensors: same specialisation, still direct
    call(lau, [z, y])
    assert kernel.log[2][0] == "direct" and kernel.log[2][1][9] == z.data_ptr()


def test_misaligned_pointers_take_triton_path_once_per_alignment(kernel):
    x = torch.zeros(64)
    lau = Launcher(kernel, (1, 1), (7, 1), dict(BLOCK=32, FLAG=False), 0)
    for t in (x, x[1:], x[1:], x[2:], x[4:], x):  # 4 bytes off: another specialisation
        call(lau, [t, x])
    assert [e[0] for e in kernel.log] == ["triton", "triton", "direct", "direct", "direct",
                                          "direct"]
    assert alignment_key([x.data_ptr(), x[4:].data_ptr()]) == 0
    assert alignment_key([x.data_ptr(), x[1:].data_ptr()]) == (True, False)


def test_triton_path_when_disabled_interpreted_or_hooked(kernel, monkeypatch):
    x = torch.zeros(64)
    meta = dict(BLOCK=32, FLAG=False, num_warps=4)
    for _ in range(2):  # CPU tensors (interpreter): no device index
        call(Launcher(kernel, (1, 1), (7, 1), meta, None), [x, x])
    lau = Launcher(kernel, (1, 1), (7, 1), meta, 0)
    fast_launch.set_fast_launch(False)
    try:
        for _ in range(2):
            call(lau, [x, x])
    finally:
        fast_launch.set_fast_launch(True)
    monkeypatch.setattr(fast_launch, "_hooks_active", lambda: True)  # a profiler's hooks
    for _ in range(2):
        call(lau, [x, x])
    assert [e[0] for e in kernel.log] == ["triton"] * 6
    for _, _, args, _ in kernel.log:  # Triton's path gets the tensors themselves
        assert args[0] is x


def test_kernels_without_launcher_attributes_stay_on_triton_path(kernel):
    class Bare(FakeKernel):
        def __getitem__(self, grid):
            def run(*args, **meta):
                self.log.append(("triton", grid, args, meta))
                return None  # e.g. the interpreter's launcher returns nothing
            return run

    bare = Bare()
    x = torch.zeros(64)
    lau = Launcher(bare, (1, 1), (7, 1), dict(BLOCK=32, FLAG=False), 0)
    for _ in range(3):
        call(lau, [x, x])
    assert [e[0] for e in bare.log] == ["triton"] * 3


def test_missing_constexpr_stays_on_triton_path(kernel):
    x = torch.zeros(64)
    lau = Launcher(kernel, (1, 1), (7, 1), dict(BLOCK=32), 0)  # FLAG left to its default
    for _ in range(3):
        call(lau, [x, x])
    assert [e[0] for e in kernel.log] == ["triton"] * 3


def test_hook_detection_follows_triton_knobs(monkeypatch):
    class Chain:  # Triton 3.6's HookChain: active when it holds calls
        def __init__(self, calls):
            self.calls = calls

    class Knobs:
        launch_enter_hook = Chain([])
        launch_exit_hook = Chain([])

    monkeypatch.setattr(fast_launch, "_KNOBS", Knobs)
    assert not fast_launch._hooks_active()
    Knobs.launch_enter_hook = Chain([print])
    assert fast_launch._hooks_active()
    Knobs.launch_enter_hook, Knobs.launch_exit_hook = None, None  # other versions: None ...
    assert not fast_launch._hooks_active()
    Knobs.launch_exit_hook = print  # ... or a callable
    assert fast_launch._hooks_active()


def test_warmup_compiles_then_first_launch_is_direct(kernel):
    x, y = torch.zeros(64), torch.zeros(32)
    meta = dict(BLOCK=32, FLAG=True, num_warps=4)
    lau = Launcher(kernel, (3, 2), (100, 1), meta, 0)
    lau.warmup([x, y])
    assert kernel.log == [("warmup", (3, 2), (x, y, 100, 1), meta)]
    z = torch.zeros(64)  # other tensors of the same alignment: no Triton path at all
    call(lau, [z, y])
    assert [e[0] for e in kernel.log] == ["warmup", "direct"]
    assert kernel.log[1][1][9:11] == (z.data_ptr(), y.data_ptr())
    call(lau, [x[1:], y])  # another alignment: Triton's path once
    assert kernel.log[2][0] == "triton"
