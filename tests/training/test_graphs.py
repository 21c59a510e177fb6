"""CUDA-graph training and validation steps (mambaseg.training.graphs).

The policy is checked everywhere; the graphs themselves need CUDA (these tests run on the GPU
machine: ``python -m pytest tests/training/test_graphs.py``). A graphed run must do the same
arithmetic as an eager one: same losses and same weights after several steps, including a
smaller last batch (its own graph) and a learning-rate change (captured anew).
"""
from __future__ import annotations

import copy

import pytest
import torch

from mambaseg.training.build import build_optimizer
from mambaseg.training.graphs import GraphedForward, GraphedTrainStep, use_cuda_graphs
from mambaseg.training.losses import get_loss
from mambaseg.training.loop import autocast
from mambaseg.models import create_model, list_models

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("mode,device,world,compiled,expected", [
    ("auto", "cuda", 1, False, True),
    ("on", "cuda", 1, False, True),
    ("off", "cuda", 1, False, False),
    ("auto", "cpu", 1, False, False),
    ("on", "cpu", 1, False, False),
    ("auto", "cuda", 2, False, False),
    ("auto", "cuda", 1, True, False),
    (None, "cuda", 1, False, True),
])
def test_policy(mode, device, world, compiled, expected):
    assert use_cuda_graphs(mode, torch.device(device), world, compiled) is expected


def test_policy_rejects_unknown_mode():
    with pytest.raises(ValueError, match="cuda_graphs must be one of"):
        use_cuda_graphs("always", torch.device("cuda"), 1, False)


def test_train_cli_and_config_accept_the_modes():
    from mambaseg.training.config import TrainConfig, resolved_settings
    from mambaseg.errors import MambasegError

    resolved_settings(TrainConfig(model="unet", cuda_graphs="off"))
    with pytest.raises(MambasegError, match="unknown --cuda-graphs 'sometimes'"):
        resolved_settings(TrainConfig(model="unet", cuda_graphs="sometimes"))


def _eager_step(model, opt, loss_fn, amp, x, y):
    with autocast(x.device, amp):
        loss = loss_fn(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _size(model):
    return 64 if model.is_valid_size(64, 64) else model.smallest_size


def _update_differs(model, twin, lr):
    """Fraction of parameter elements whose value after the same step differs by > lr / 2."""
    diff = torch.cat([(q - p).detach().flatten().float()
                      for p, q in zip(model.parameters(), twin.parameters())]).abs()
    return (diff > lr / 2).float().mean().item()


@torch.no_grad()
def _copy_state(model, opt, twin, opt_twin):
    """twin <- model: parameters, buffers and optimizer state, in place (the graphs keep their
    tensors)."""
    for a, b in zip(model.parameters(), twin.parameters()):
        b.copy_(a)
    for a, b in zip(model.buffers(), twin.buffers()):
        b.copy_(a)
    for a, b in zip(model.parameters(), twin.parameters()):
        for key, value in opt.state[a].items():
            opt_twin.state[b][key].copy_(value)


@cuda
@pytest.mark.parametrize("name", list_models())
def test_graphed_steps_match_eager(name):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = create_model(name).to(dev)
    twin = copy.deepcopy(model)
    size = _size(model)
    loss_fn = get_loss("bce_dice")
    amp = torch.bfloat16
    opt_e = build_optimizer(model.parameters(), "adamw", 1e-3, 1e-2, dev, capturable=True)
    opt_g = build_optimizer(twin.parameters(), "adamw", 1e-3, 1e-2, dev, capturable=True)
    step = GraphedTrainStep(twin, opt_g, loss_fn, amp, warmup=2)
    g = torch.Generator(device=dev).manual_seed(1)
    batches = [4, 4, 4, 4, 3, 4, 3]  # warm-up, capture, replay, a smaller batch, replays
    model.train(), twin.train()
    # as the trainer runs: cuDNN autotuning (whose search must not run inside a capture)
    bench, det = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark = torch.backends.cudnn.deterministic = True
    try:
        for i, n in enumerate(batches):
            if i == 5:  # a scheduler's change: the graphs are captured again
                for o in (opt_e, opt_g):
                    o.param_groups[0]["lr"] = 5e-4
            lr = opt_e.param_groups[0]["lr"]
            x = torch.rand(n, 3, size, size, device=dev, generator=g)
            y = (torch.rand(n, 1, size, size, device=dev, generator=g) > 0.7).float()
            le = _eager_step(model, opt_e, loss_fn, amp, x, y)
            lg = step(x, y)
            torch.testing.assert_close(lg, le, rtol=2e-2, atol=2e-3, msg=f"step {i} loss")
            # Same update from the same state: a lost or repeated optimizer step would move
            # almost every weight by about lr. Adam turns the rounding noise of near-zero
            # gradients (e.g. a conv bias before a norm layer) into steps of +-lr, so a few
            # elements may differ by that much. Compared step by step (twin <- model after
            # each): over several steps that noise grows in some models (umamba_bot_pp).
            frac = _update_differs(model, twin, lr)
            assert frac < 0.05, f"step {i}: {frac:.3f} of the weights differ by > lr/2"
            _copy_state(model, opt_e, twin, opt_g)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = bench, det
    assert step.failed is None, step.failed
    assert len(step.graphs) == 2  # batch 4 and batch 3, captured after the lr change

    # evaluation forward: first call eager, then captured and replayed
    model.eval()
    fwd = GraphedForward(model, amp)
    with torch.inference_mode():
        for i in range(3):
            x = torch.rand(2, 3, size, size, device=dev, generator=g)
            with autocast(dev, amp):
                ref = model(x)
            torch.testing.assert_close(fwd(x), ref, rtol=2e-2, atol=2e-2, msg=f"eval {i}")
    assert fwd.failed is None and len(fwd.graphs) == 1


@cuda
def test_capture_failure_falls_back_to_eager():
    dev = torch.device("cuda")

    class Syncs(torch.nn.Module):  # .item() cannot be captured
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, x):
            out = self.conv(x)
            return out * (1.0 if out.mean().item() > -1e9 else 0.0)

    model = Syncs().to(dev)
    opt = build_optimizer(model.parameters(), "adam", 1e-3, 0.0, dev, capturable=True)
    step = GraphedTrainStep(model, opt, get_loss("dice"), None, warmup=1)
    x = torch.rand(2, 3, 16, 16, device=dev)
    y = (torch.rand(2, 1, 16, 16, device=dev) > 0.5).float()
    step(x, y)
    before = model.conv.weight.detach().clone()
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        loss = step(x, y)
    assert step.failed and torch.isfinite(loss)
    assert not torch.equal(model.conv.weight, before)  # the step was still taken, eagerly
    # the failed capture must not leave the CUDA generator unusable (dropout, augmentation)
    torch.manual_seed(3)
    a = torch.rand(5, device=dev)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(5, device=dev), a)
    assert torch.isfinite(step(torch.nn.functional.dropout(x, 0.5), y))

    # the same for the evaluation forward
    fwd = GraphedForward(model.eval(), None)
    with torch.inference_mode():
        fwd(x)
        with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
            out = fwd(x)
        torch.testing.assert_close(out, model(x))
    assert fwd.failed and torch.rand(2, device=dev).shape == (2,)
