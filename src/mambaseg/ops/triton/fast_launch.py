"""Cheap launches of compiled Triton kernels: the host's time per launch, not the GPU's.

``kernel[grid](...)`` binds and specialises every argument on every call; at the scan's small
shapes that host work takes longer than the kernels. A `Launcher` takes Triton's own path once
per pointer alignment, then calls the compiled kernel's launcher directly with the pointers as
ints. Switched off by MAMBASEG_TRITON_FAST_LAUNCH=0 (read at import) or `set_fast_launch(False)`,
and skipped under Triton launch hooks (profilers) and the interpreter (docs/scan.md, "Launches").
"""
from __future__ import annotations

import os

import torch


# read once: an environment lookup per call would be a sizeable part of a launch's host time
_FAST = os.environ.get("MAMBASEG_TRITON_FAST_LAUNCH", "1").strip() not in ("0", "")


def set_fast_launch(on: bool) -> None:
    """Switch the direct launches on or off (the default comes from the environment)."""
    global _FAST
    _FAST = bool(on)


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


current_stream = torch._C._cuda_getCurrentRawStream if hasattr(
    torch._C, "_cuda_getCurrentRawStream") else None
"""The raw CUDA stream of a device index that Triton would launch on."""


def _entry(kernel, compiled, n_args, meta):
    """What a direct launch of ``compiled`` needs, or None when it cannot be done directly."""
    if hasattr(compiled, "result"):  # a future (Triton's asynchronous compile mode)
        compiled = compiled.result()
    names = getattr(kernel, "arg_names", None)
    if compiled is None or names is None or any(n not in meta for n in names[n_args:]):
        return None
    try:
        run, function, packed = compiled.run, compiled.function, compiled.packed_metadata
    except AttributeError:
        return None
    return run, function, packed, tuple(meta[n] for n in names[n_args:])


def alignment_key(ptrs) -> object:
    """0 when every pointer is 16-byte aligned, else which of them are (Triton's pointer
    specialisation)."""
    bits = 0
    for p in ptrs:
        bits |= p
    return 0 if not bits & 15 else tuple([not p & 15 for p in ptrs])


class Launcher:
    """``kernel[grid](*pointers, *ints, **meta)``, directly through the compiled launcher when
    possible (module doc).

    ``grid``: (x, y) program counts; ``ints``: the run-time ints that follow the pointer
    arguments; ``meta``: constexprs and launch options (num_warps, maxnreg) by name;
    ``device_index``: the tensors' CUDA device (None for CPU tensors under the interpreter).
    One launcher serves pointer arguments of one list of dtypes.
    """

    __slots__ = ("kernel", "grid", "ints", "meta", "device_index", "_entries")

    def __init__(self, kernel, grid, ints, meta, device_index):
        self.kernel, self.grid, self.ints = kernel, tuple(grid), tuple(ints)
        self.meta, self.device_index = dict(meta), device_index
        self._entries: dict = {}  # alignment key -> direct-launch entry, or None (Triton's path)

    def warmup(self, tensors):
        """Compile (or find in Triton's cache) the kernel for these arguments and load it,
        without launching it, so that a later first launch with pointers of the same alignment,
        e.g. inside a CUDA graph capture, neither compiles nor loads anything: it goes straight
        to the compiled launcher. (Triton's own warmup compiles only; its kernel is loaded on the
        GPU, and its launcher built, at the first launch.)"""
        compiled = self.kernel.warmup(*tensors, *self.ints, grid=self.grid, **self.meta)
        if self.device_index is None:
            return
        key = alignment_key([t.data_ptr() for t in tensors])
        if not self._entries.get(key):
            entry = _entry(self.kernel, compiled, len(tensors) + len(self.ints), self.meta)
            if entry is not None:  # (reading compiled.run loads the kernel)
                self._entries[key] = entry

    def __call__(self, ptrs, tensors):
        """Launch. ``ptrs``: the device addresses of the pointer arguments, in order;
        ``tensors``: a callable returning them as tensors (for Triton's own path)."""
        if self.device_index is None or not _FAST:
            self.kernel[self.grid](*tensors(), *self.ints, **self.meta)
            return
        key = alignment_key(ptrs)
        entry = self._entries.get(key, False)
        if entry and not _hooks_active():
            run, function, packed, tail = entry
            run(self.grid[0], self.grid[1], 1, current_stream(self.device_index), function,
                packed, None, None, None, *ptrs, *self.ints, *tail)
            return
        compiled = self.kernel[self.grid](*tensors(), *self.ints, **self.meta)
        if entry is False:
            self._entries[key] = _entry(self.kernel, compiled, len(ptrs) + len(self.ints),
                                        self.meta)
