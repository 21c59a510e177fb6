"""Cheap launches of compiled Triton kernels (host overhead, not GPU work).

``kernel[grid](*args, **meta)`` costs tens of microseconds of Python per call in Triton 3.x: it
binds and specialises every argument (about 35 for the scan kernels), builds a cache key from
them, checks globals and builds launch metadata. The selective scan issues 2 to 4 launches per
forward+backward; at the small shapes of UltraLight's PVM layers the GPU work takes less time
than that host work, so the host sets the speed.

`launch` does the first call of every *specialisation* through Triton (which compiles, or finds
the kernel in its cache, and launches it) and keeps the compiled kernel. Later calls with the
same specialisation call the compiled kernel's launcher directly, with the argument list that
Triton itself passes it (every parameter in order, constexprs included, which the launcher
skips). The key of a specialisation is everything Triton specialises on, kept cheap to build:
the kernel, the device, the constexprs and launch options, the dtype and 16-byte alignment of
every pointer argument, and the run-time ints by value (Triton specialises ints on being 1, on
divisibility by 16 and on their width; a key by value is finer than that, so every new problem
shape takes Triton's path once). The kernels must take their pointer (tensor) arguments first,
then ints; a kernel called otherwise always takes Triton's path.

The direct path is skipped (Triton's own path runs) when Triton launch hooks are active
(profilers such as proton), under the Triton interpreter (CPU tensors: no device index), when
the compiled kernel lacks the launcher attributes (another Triton version), and when the
environment sets ``MAMBASEG_TRITON_FAST_LAUNCH=0``.
"""
from __future__ import annotations

import os

import torch

#: (kernel id, device, meta, argument specialisation) -> (run, function, packed metadata,
#: constexpr tail) or None (use Triton's path for this key)
_CACHE: dict = {}


def enabled() -> bool:
    return os.environ.get("MAMBASEG_TRITON_FAST_LAUNCH", "1").strip() not in ("0", "")


def _runtime_knobs():
    try:
        from triton import knobs
    except ImportError:  # older Triton: no knobs module, no launch hooks to honour
        return None
    return knobs.runtime


_KNOBS = _runtime_knobs()


def _hooks_active() -> bool:
    if _KNOBS is None:
        return False
    # Triton 3.6: HookChain objects (active when they hold calls); other versions: None or a callable
    return bool(getattr(_KNOBS.launch_enter_hook, "calls", _KNOBS.launch_enter_hook)
                or getattr(_KNOBS.launch_exit_hook, "calls", _KNOBS.launch_exit_hook))


def current_stream(device_index: int) -> int:
    """The raw CUDA stream of ``device_index`` that Triton would launch on."""
    return torch._C._cuda_getCurrentRawStream(device_index)


#: kernel id -> number of leading tensor arguments (-1: arguments not of that form)
_N_PTR: dict = {}
_MAX_ENTRIES = 4096


def _n_ptr(kernel, args):
    n = next((i for i, a in enumerate(args) if not isinstance(a, torch.Tensor)), len(args))
    ok = all(type(a) is int or type(a) is bool for a in args[n:])
    _N_PTR[id(kernel)] = n if ok else -1
    return _N_PTR[id(kernel)]


def _entry(kernel, compiled, args, meta):
    """What a direct launch of ``compiled`` needs, or None when it cannot be done directly."""
    if hasattr(compiled, "result"):  # a future (Triton's asynchronous compile mode)
        compiled = compiled.result()
    names = getattr(kernel, "arg_names", None)
    if compiled is None or names is None or any(n not in meta for n in names[len(args):]):
        return None
    try:
        run, function, packed = compiled.run, compiled.function, compiled.packed_metadata
    except AttributeError:
        return None
    return run, function, packed, tuple(meta[n] for n in names[len(args):])


def launch(kernel, grid, args, meta, device_index):
    """``kernel[grid](*args, **meta)``, directly through the compiled launcher when possible.

    ``grid``: (x, y) program counts; ``args``: the positional (run-time) arguments, tensors and
    ints; ``meta``: constexprs and launch options (num_warps, maxnreg) by name;
    ``device_index``: the tensors' CUDA device (None for CPU tensors under the interpreter).
    """
    if device_index is None or not enabled():
        kernel[grid](*args, **meta)
        return
    n = _N_PTR.get(id(kernel))
    if n is None:
        n = _n_ptr(kernel, args)
    if n < 0:
        kernel[grid](*args, **meta)
        return
    key = (id(kernel), device_index, tuple(meta.items()), args[n:],
           tuple([(a.dtype, a.data_ptr() & 15) for a in args[:n]]))
    entry = _CACHE.get(key, False)
    if entry is False or entry is None or _hooks_active():
        compiled = kernel[grid](*args, **meta)
        if entry is False:
            if len(_CACHE) >= _MAX_ENTRIES:
                _CACHE.clear()
            _CACHE[key] = _entry(kernel, compiled, args, meta)
        return
    run, function, packed, tail = entry
    run(grid[0], grid[1], 1, current_stream(device_index), function, packed, None, None, None,
        *args, *tail)
