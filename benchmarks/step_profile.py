"""Training-step time of small models at batch 2 (not a test): eager against the whole step
(forward, BCE+Dice loss, backward, AdamW) captured once and replayed as a CUDA graph, with the
kernel count and the profiler's top host operations.

    python benchmarks/step_profile.py ulvm_unet ulvm_unet_v5   # repository root, CUDA machine
"""
import sys
import time
import traceback

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "src")
from mambaseg.training.loop import eager_step  # noqa: E402
from mambaseg.training.losses import bce_dice_loss  # noqa: E402
from mambaseg.models import create_model  # noqa: E402

DEV = torch.device("cuda")


def step_time(fn, n=40):
    """Mean milliseconds per call of ``fn`` over ``n`` calls, synchronised at both ends."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


def profile_model(name):
    torch.manual_seed(0)
    model = create_model(name).to(DEV).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-2)
    x = torch.rand(2, 3, 256, 256, device=DEV).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(2, 1, 256, 256, device=DEV) > 0.9).float()

    def step(cache=True):  # the trainer's eager step; ``opt`` is replaced below
        return eager_step(model, opt, bce_dice_loss, torch.bfloat16, x, y, cache_enabled=cache)

    for _ in range(5):
        step()
    t_eager = step_time(step)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    t_host = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    print(f"{name}: eager step {t_eager:.2f} ms (host issue ~{t_host:.2f} ms)", flush=True)
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"  {len(kernels) / 3:.0f} kernels/step, summed GPU kernel time "
          f"{sum(e.device_time for e in kernels) / 3 / 1000:.2f} ms/step")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12,
                                    max_name_column_width=50))
    try:  # the whole step as one graph; the optimizer keeps its step count on the GPU
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-2, capturable=True)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step(cache=False)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            step(cache=False)
        print(f"  graphed whole step {step_time(graph.replay):.2f} ms", flush=True)
    except Exception:  # noqa: BLE001 - report and go on
        traceback.print_exc()


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    for model_name in sys.argv[1:] or ["ulvm_unet", "ulvm_unet_v5"]:
        profile_model(model_name)
