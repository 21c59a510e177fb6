"""Training and validation steps replayed as CUDA graphs.

Small models at small batches (the UltraLight VM-UNets at the paper's batch 2) spend most of a
step launching kernels: on an H200 a ulvm_unet step at batch 2 takes about 40 ms eager for about
6 ms of GPU work. Capturing the whole step (forward, loss, backward and the optimizer update)
once and replaying it removes that overhead without changing the arithmetic.

:class:`GraphedTrainStep` runs the first ``warmup`` steps eagerly (on a side stream, as CUDA
graph capture requires), then captures one graph per input shape (the last, smaller batch of an
epoch gets its own) and replays it after copying each batch into the graph's static inputs.
A change of learning rate (a scheduler) is captured anew, because the optimizer bakes it into
the graph. If a capture fails (an operation that cannot be captured), a warning says so and the
run continues eagerly: the capture itself executes nothing, so no step is lost or repeated.

The optimizer must be built with ``capturable=True`` (see
:func:`mambaseg.training.build.build_optimizer`).
"""
from __future__ import annotations

import warnings

import torch

from mambaseg.training.loop import autocast, eager_step
from mambaseg.training.losses import LossFn

MODES = ("auto", "on", "off")


def use_cuda_graphs(mode: str | None, device: torch.device, world_size: int,
                    compiled: bool) -> bool:
    """Whether a run uses CUDA graphs: ``auto`` (default) and ``on`` mean yes on a single CUDA
    device without torch.compile; never on the CPU, under DDP or with torch.compile."""
    mode = mode or "auto"
    if mode not in MODES:
        raise ValueError(f"cuda_graphs must be one of {MODES}, not {mode!r}")
    return mode != "off" and device.type == "cuda" and world_size == 1 and not compiled


def _reset_cuda_rng(device: torch.device) -> None:
    """Give the device's default CUDA generator a fresh state with the same seed and offset.

    ``torch.cuda.graph`` marks the generator as capturing when a capture begins and unmarks it
    after the capture ends; when the capture fails, ending it raises first, and the generator
    then refuses every later random number ("Offset increment outside graph capture encountered
    unexpectedly"), which would break dropout or augmentation in the eager steps that follow.
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    gen = torch.cuda.default_generators[index]
    fresh = torch.Generator(device=torch.device("cuda", index))
    fresh.set_state(gen.get_state())
    gen.graphsafe_set_state(fresh.graphsafe_get_state())


def _capture_failed(exc: Exception, what: str, stacklevel: int,
                    device: torch.device | None = None) -> str:
    """Warn that a capture failed and ``what`` goes on eagerly; the reason, for ``.failed``.
    Repairs the CUDA generator of ``device`` that the failed capture leaves marked."""
    if device is not None and device.type == "cuda":
        _reset_cuda_rng(device)
    reason = f"{type(exc).__name__}: {exc}"
    warnings.warn(f"CUDA graph capture failed ({reason.splitlines()[0][:200]}); {what} "
                  "continues without CUDA graphs", RuntimeWarning, stacklevel=stacklevel)
    return reason


class GraphedTrainStep:
    """``step(x, y) -> loss`` (detached): forward, loss, backward and optimizer step."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: LossFn, amp_dtype: torch.dtype | None, warmup: int = 3):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.amp_dtype, self.warmup = amp_dtype, warmup
        self.steps = 0
        self.failed: str | None = None
        self.graphs: dict[tuple, tuple] = {}
        self.seen: set[tuple] = set()
        self.lr: list[float] | None = None

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return eager_step(self.model, self.optimizer, self.loss_fn, self.amp_dtype, x,
                          y).detach()

    def _side_eager(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            loss = self._eager(x, y)
        torch.cuda.current_stream(x.device).wait_stream(side)
        return loss

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        if self.failed is not None:
            return self._eager(x, y)
        key = (tuple(x.shape), x.stride(), tuple(y.shape), x.dtype, y.dtype)
        lr = [g["lr"] for g in self.optimizer.param_groups]
        if lr != self.lr:  # the optimizer bakes the learning rate into the graph
            self.graphs.clear()
            self.lr = lr
        # the first steps, and the first step of each new shape, run eagerly on a side stream:
        # lazy initialisation and cuDNN's algorithm search cannot happen during a capture
        if self.steps <= self.warmup or key not in self.seen:
            self.seen.add(key)
            return self._side_eager(x, y)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(x, y)
            if entry is None:
                return self._eager(x, y)
            self.graphs[key] = entry
        graph, sx, sy, sloss = entry
        sx.copy_(x)
        sy.copy_(y)
        graph.replay()
        return sloss.clone()

    def _capture(self, x: torch.Tensor, y: torch.Tensor):
        sx, sy = x.clone(), y.clone()
        self.optimizer.zero_grad(set_to_none=True)  # gradients live in the graph's memory
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                sloss = eager_step(self.model, self.optimizer, self.loss_fn, self.amp_dtype,
                                   sx, sy, cache_enabled=False)
        except Exception as exc:  # an operation that cannot be captured: train eagerly
            self.failed = _capture_failed(exc, "training", stacklevel=4, device=x.device)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        return graph, sx, sy, sloss.detach()


class GraphedForward:
    """``forward(x) -> logits`` for evaluation (no gradients), replayed as a CUDA graph per
    input shape; the first call of each shape runs eagerly, the second captures."""

    def __init__(self, model: torch.nn.Module, amp_dtype: torch.dtype | None):
        self.model, self.amp_dtype = model, amp_dtype
        self.seen: set[tuple] = set()
        self.graphs: dict[tuple, tuple] = {}
        self.failed: str | None = None

    def _run(self, x: torch.Tensor, cache: bool) -> torch.Tensor:
        with autocast(x.device, self.amp_dtype, cache_enabled=cache):
            return self.model(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.stride(), x.dtype)
        if self.failed is not None or key not in self.seen:
            self.seen.add(key)
            return self._run(x, cache=True)
        entry = self.graphs.get(key)
        if entry is None:
            sx = x.clone()
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    out = self._run(sx, cache=False)
            except Exception as exc:  # an operation that cannot be captured: run eagerly
                self.failed = _capture_failed(exc, "evaluating", stacklevel=3, device=x.device)
                return self._run(x, cache=True)
            entry = self.graphs[key] = (graph, sx, out)
        graph, sx, out = entry
        sx.copy_(x)
        graph.replay()
        return out.clone()
