"""Training epoch time of models at a preset (paper by default), through the trainer's own loop (not a test).

Runs :func:`mambaseg.training.loop.train_epoch` and :func:`~mambaseg.training.loop.validate` exactly
as ``mambaseg train`` does (split resident on the device as uint8, batches gathered, converted
and normalised there, bf16 autocast on CUDA, channels_last for conv models, fused optimizer,
one host sync per epoch), after a warm-up, and prints one row per model::

    python benchmarks/train_epoch.py                                  # unet, random data
    python benchmarks/train_epoch.py --models all --data ~/lgg/kaggle_3m
    python benchmarks/train_epoch.py --models unet mambaseg_s --preset recommended
    python benchmarks/train_epoch.py --models unet --compile
    python benchmarks/train_epoch.py --models ulvm_unet --cuda-graphs off   # eager steps
    python benchmarks/train_epoch.py --device cpu --models ulvm_unet --n-train 64 --n-val 16
    python benchmarks/train_epoch.py --models mambaseg_s:directions=1 --channels-last on --profile 20

A model is ``NAME`` or ``NAME:KEY=VALUE,...`` (options of its factory, as ``benchmarks/predict.py``).
``--profile N`` also prints the CUDA kernels that took the most time over N eager training steps.

Timing: a warm-up (the first ``--warmup-steps`` batches plus the epoch's last, smaller batch,
and a validation pass), a short probe that estimates the step time, then ``--epochs`` timed
epochs. A model whose timed epochs would exceed ``--budget`` seconds is timed on a fixed number
of steps per epoch instead and the epoch time is extrapolated (``steps`` column: timed/total;
the note says so). Without ``--data`` the images are random uint8 (speed does not depend on
pixel values; masks are random too). ``ckpt s`` is the time to write one ``last/`` checkpoint
with its training state, which the trainer adds after every epoch (not in the epoch time).
"""
from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from mambaseg.device import device_name, resolve_device
from mambaseg.training import build as B
from mambaseg.training import graphs as G
from mambaseg.training import train_state as C
from mambaseg.training.config import TrainConfig, resolved_settings
from mambaseg.training.loop import DeviceData, epoch_batches, resize_arrays, train_epoch, validate
from mambaseg.training.losses import get_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import parse_spec  # noqa: E402

#: the order of ``--models all`` (the headline models first), then any other registered one
ALL_MODELS = ["unet", "resnet18", "resnet50", "umamba_bot", "umamba_bot_pp", "segformer",
              "ulvm_unet", "ulvm_unet_v1", "ulvm_unet_v2", "ulvm_unet_v3", "ulvm_unet_v4",
              "ulvm_unet_v5", "ulvm_unet_v6"]
#: the paper split's sizes on the full dataset
PAPER_TRAIN, PAPER_VAL = 3143, 393


def random_split(n_train: int, n_val: int, size: int, device: torch.device, seed: int = 0
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for part, n in (("train", n_train), ("val", n_val)):
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device,
                               generator=g)
        masks = (torch.rand((n, 1, size, size), device=device, generator=g) > 0.97).to(torch.uint8)
        out[part] = (images, masks)
    return out


def real_split(data: Path, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    parts, counts = B.load_split_arrays(data, "paper", None, None, device, False, progress=False)
    print(f"data: {data} (paper split: {counts['train']} train, {counts['val']} val slices)",
          file=sys.stderr)
    return {p: (d.images, d.masks) for p, d in parts.items() if d is not None}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(spec: str, arrays, device: torch.device, args) -> dict:
    """Time one model (``NAME[:KEY=VALUE,...]``); returns a table row."""
    name, kwargs = parse_spec(spec)
    s = resolved_settings(TrainConfig(model=name, preset=args.preset, batch_size=args.batch_size))
    bs = int(s["batch_size"])
    channels_last = B.use_channels_last(name, device, {"on": True, "off": False}.get(args.channels_last))
    parts = {}
    for part, (images, masks) in arrays.items():
        if s["image_size"] is not None:
            images, masks = resize_arrays(images, masks, int(s["image_size"]))
        parts[part] = DeviceData(images, masks, channels_last=channels_last)
    train_data, val_data = parts["train"], parts["val"]

    torch.manual_seed(0)
    model = B.build_model(name, 3, kwargs).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    graphs = G.use_cuda_graphs(args.cuda_graphs, device, 1, args.compile)
    optimizer = B.build_optimizer(model.parameters(), s["optimizer"], float(s["lr"]),
                                  float(s["weight_decay"]), device, capturable=graphs)
    loss_fn = get_loss(s["loss"])
    amp = torch.bfloat16 if device.type == "cuda" and args.amp == "bf16" else None
    train_model = eval_model = model
    if args.compile:
        train_model = torch.compile(model, dynamic=False)
        eval_model = torch.compile(model, dynamic=False)
    gen = torch.Generator().manual_seed(0)
    kw = dict(amp_dtype=amp)
    tkw = dict(kw, step=G.GraphedTrainStep(model, optimizer, loss_fn, amp) if graphs else None)
    vkw = dict(kw, forward=G.GraphedForward(model, amp) if graphs else None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # warm-up: first batches + the last (smaller) batch shape, and one whole validation pass
    # (its last, smaller batch too: with CUDA graphs each batch shape is captured once, and a
    # capture inside the timed pass would count as validation time)
    batches = epoch_batches(len(train_data), bs, gen, device)
    t0 = time.perf_counter()
    warm = batches[:args.warmup_steps] + ([batches[-1]] if len(batches) > args.warmup_steps else [])
    train_epoch(train_model, train_data, warm, optimizer, loss_fn, **tkw)
    validate(eval_model, val_data, bs, loss_fn, **vkw)
    warmup_s = time.perf_counter() - t0
    # probe: step times of training and validation
    probe = train_epoch(train_model, train_data, batches[:args.probe_steps], optimizer, loss_fn,
                        **tkw)
    step_s = probe.seconds / max(1, min(args.probe_steps, len(batches)))
    vprobe = validate(eval_model, val_data, bs, loss_fn, max_steps=args.probe_steps, **vkw)
    val_total = math.ceil(len(val_data) / bs)
    vstep_s = vprobe.seconds / max(1, min(args.probe_steps, val_total))

    total = len(batches)
    epoch_est = step_s * total + vstep_s * val_total
    epochs = args.epochs
    steps, vsteps = total, val_total
    if epoch_est * epochs > args.budget:
        epochs = 1
        steps = max(args.probe_steps, min(total, int(args.budget * 0.8 / step_s)))
        vsteps = max(1, min(val_total, int(args.budget * 0.2 / max(vstep_s, 1e-9))))
    if args.max_steps:
        steps = min(steps, args.max_steps)
        vsteps = min(vsteps, args.max_steps)

    times, vtimes = [], []
    for _ in range(epochs):
        batches = epoch_batches(len(train_data), bs, gen, device)
        t = train_epoch(train_model, train_data, batches, optimizer, loss_fn, max_steps=steps,
                        **tkw)
        v = validate(eval_model, val_data, bs, loss_fn, max_steps=vsteps, **vkw)
        times.append(t.seconds * total / min(steps, total))
        vtimes.append(v.seconds * val_total / min(vsteps, val_total))
    train_s, val_s = min(times), min(vtimes)
    note = ""
    if steps < total or vsteps < val_total:
        note = f"extrapolated from {steps}/{total} train, {vsteps}/{val_total} val steps"

    ckpt_s = None
    if args.checkpoint_time:
        with tempfile.TemporaryDirectory() as tmp:
            _sync(device)
            c0 = time.perf_counter()
            state = {"format": C.STATE_FORMAT, "optimizer": optimizer.state_dict()}
            C.save_checkpoint(Path(tmp) / "last", model, {}, train_state=state)
            ckpt_s = time.perf_counter() - c0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if args.profile:
        profile_steps(model, train_data, optimizer, loss_fn, amp, bs, gen, device, args.profile)
    row = {"model": spec + (" CL" if channels_last else ""), "params_m": params / 1e6, "batch": bs,
           "size": int(train_data.images.shape[-1]), "steps": f"{min(steps, total)}/{total}",
           "train_s": train_s, "val_s": val_s, "epoch_s": train_s + val_s,
           "img_s": len(train_data) / train_s, "warmup_s": warmup_s, "ckpt_s": ckpt_s,
           "peak_gb": peak, "graphs": "yes" if graphs and tkw["step"].failed is None else "no",
           "note": note}
    del model, train_model, eval_model, optimizer, parts, train_data, val_data
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def profile_steps(model, data, optimizer, loss_fn, amp, bs, gen, device, steps: int,
                  rows: int = 20) -> None:
    """Print the CUDA kernels taking the most time over ``steps`` eager training steps."""
    from torch.profiler import ProfilerActivity, profile

    batches = epoch_batches(len(data), bs, gen, device)[:steps]
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        train_epoch(model, data, batches, optimizer, loss_fn, amp_dtype=amp)
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70),
          flush=True)


HEADER = (f"{'model':<14} {'params':>7} {'batch':>5} {'size':>4} {'steps':>9} {'train s':>8} "
          f"{'val s':>6} {'epoch s':>8} {'img/s':>7} {'warmup s':>8} {'ckpt s':>6} {'peak GB':>7}"
          f" {'graphs':>6}  note")


def format_row(r: dict) -> str:
    if "error" in r:
        return f"{r['model']:<14} ERROR: {r['error']}"

    def opt(v, spec):
        return format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0]))

    return (f"{r['model']:<14} {r['params_m']:>6.2f}M {r['batch']:>5} {r['size']:>4} "
            f"{r['steps']:>9} {r['train_s']:>8.2f} {r['val_s']:>6.2f} {r['epoch_s']:>8.2f} "
            f"{r['img_s']:>7.0f} {r['warmup_s']:>8.1f} {opt(r['ckpt_s'], '6.2f')} "
            f"{opt(r['peak_gb'], '7.1f')} {r['graphs']:>6}  {r['note']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["unet"], help="model names, or 'all'")
    p.add_argument("--data", type=Path, help="LGG dataset (paper split); default random data")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", default="bf16", choices=("bf16", "off"), help="CUDA autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile each model")
    p.add_argument("--cuda-graphs", default="auto", choices=G.MODES,
                   help="replay steps as CUDA graphs, as `mambaseg train` does (default auto)")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (best one reported)")
    p.add_argument("--budget", type=float, default=20.0,
                   help="seconds of timed epochs per model before switching to fixed steps")
    p.add_argument("--max-steps", type=int, help="at most this many steps per timed epoch")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--probe-steps", type=int, default=5)
    p.add_argument("--preset", default="paper", choices=("paper", "recommended"),
                   help="settings of each model (default: paper)")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size")
    p.add_argument("--n-train", type=int, default=PAPER_TRAIN, help="random data: train slices")
    p.add_argument("--n-val", type=int, default=PAPER_VAL, help="random data: val slices")
    p.add_argument("--size", type=int, default=256, help="random data: image size")
    p.add_argument("--no-checkpoint-time", dest="checkpoint_time", action="store_false")
    p.add_argument("--time-limit", type=float, help="skip the remaining models once this many "
                   "seconds have passed (data loading included)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="memory format, as `mambaseg train --channels-last` (default auto)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also print the top CUDA kernels of N eager training steps")
    p.add_argument("--output", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)

    from mambaseg.models import list_models

    models = ALL_MODELS + [m for m in list_models() if m not in ALL_MODELS] \
        if args.models == ["all"] else args.models
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t0 = time.perf_counter()
    arrays = (real_split(args.data, device) if args.data
              else random_split(args.n_train, args.n_val, args.size, device))
    load_s = time.perf_counter() - t0
    lines = [f"device: {device_name(device)}; torch {torch.__version__}; amp "
             f"{args.amp if device.type == 'cuda' else 'off'}; compile {args.compile}; "
             f"cuda graphs {args.cuda_graphs}; "
             f"data: {'paper split of ' + str(args.data) if args.data else 'random uint8'} "
             f"(loaded in {load_s:.1f} s); epoch = train + validation pass", HEADER]
    print("\n".join(lines), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(lines) + "\n")
    for name in models:
        if args.time_limit and time.perf_counter() - t0 > args.time_limit:
            row = {"model": name, "error": f"skipped: --time-limit {args.time_limit:g} s reached"}
        else:
            try:
                row = bench_model(name, arrays, device, args)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other models
                row = {"model": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        lines.append(format_row(row))
        print(lines[-1], flush=True)
        if args.output:  # row by row: a run cut short keeps what it measured
            with open(args.output, "a") as fh:
                fh.write(lines[-1] + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
