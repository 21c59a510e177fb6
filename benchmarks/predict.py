"""Throughput of predict's model step for every registered model (not a test).

Times ``mambaseg.inference.runner.predict_probs`` on random 256x256 uint8 slices at batch 1
and batch 16 on the current device, untrained weights (speed does not depend on them), and
prints slices per second, wall milliseconds per slice and CPU milliseconds per slice (this
process's CPU time: on a shared machine the wall time also counts waiting for others)::

    python benchmarks/predict.py                          # all models, best device
    python benchmarks/predict.py --models ulvm_unet_v5 unet --device cpu --reps 20
    python benchmarks/predict.py --threads 1 2            # compare torch CPU thread counts
    python benchmarks/predict.py --profile ulvm_unet_v5   # where the time goes (batch 1)
    python benchmarks/predict.py --device cpu --threads 2 --batches 1 \
        --models mambaseg_s mambaseg_s:directions=1 mambaseg_s:mixer=conv --json lat.json

A model is ``NAME`` or ``NAME:KEY=VALUE,...`` (options passed to its factory, as ``train
--model-arg``); ``--json`` also writes the numbers, keyed by that spec, for ``mambaseg report``
(``results/cv/ablation/cpu_latency.json``).

The target is at most 30 ms per slice for ulvm_unet_v5 at batch 1 on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

from mambaseg.device import resolve_device
from mambaseg.inference.runner import predict_probs
from mambaseg.models import create_model, list_models

SIZE = 256


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_model(model, device: torch.device, batch: int, reps: int,
               warmup: int = 2) -> tuple[float, float]:
    """Median (wall, process CPU) seconds per call of ``predict_probs`` on a random
    (batch, 3, 256, 256) uint8 input. On a shared CPU the wall time includes waiting for other
    processes; the CPU time (all threads of this process) does not."""
    x = torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8)
    for _ in range(warmup):
        predict_probs(model, x, batch_size=batch, device=device)
    _sync(device)
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        predict_probs(model, x, batch_size=batch, device=device)
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def parse_spec(spec: str) -> tuple[str, dict]:
    """``NAME[:KEY=VALUE,...]`` -> (name, kwargs); values read as int, float or text."""
    name, _, opts = spec.partition(":")
    kwargs = {}
    for item in filter(None, opts.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"model spec {spec!r}: expected NAME:KEY=VALUE,...")
        for cast in (int, float, str):
            try:
                kwargs[key] = cast(value)
                break
            except ValueError:
                continue
    return name, kwargs


def profile(model, device: torch.device, reps: int = 5, rows: int = 25) -> None:
    """Print the torch profiler's table of the ops taking the most time at batch 1."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    x = torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8)
    predict_probs(model, x, batch_size=1, device=device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with tprofile(activities=acts, record_shapes=True) as prof:
        for _ in range(reps):
            predict_probs(model, x, batch_size=1, device=device)
    key = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages(group_by_input_shape=False).table(sort_by=key, row_limit=rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=None, help="model names (default: all)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions (median reported)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes")
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="torch CPU thread counts to try (default: torch's current)")
    ap.add_argument("--profile", metavar="MODEL", help="profile one model at batch 1 instead")
    ap.add_argument("--json", metavar="FILE", help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    names = args.models or list_models()
    threads = args.threads or [torch.get_num_threads()]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    print(f"# predict_probs, {SIZE}x{SIZE} uint8, median of {args.reps}; torch "
          f"{torch.__version__}; device {device} ({where})")

    if args.profile:
        name, kwargs = parse_spec(args.profile)
        model = create_model(name, **kwargs).eval()
        torch.set_num_threads(threads[0])
        profile(model, device, reps=args.reps)
        return 0

    head = ["model", "params", "threads"]
    for b in args.batches:
        head += [f"b{b} slices/s", f"b{b} ms/slice", f"b{b} CPU ms/slice"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    results: dict[str, dict] = {}
    for spec in names:
        try:
            name, kwargs = parse_spec(spec)
            model = create_model(name, **kwargs).eval()
        except Exception as exc:  # noqa: BLE001 - e.g. optional dependency missing
            print(f"| {spec} | - | - | not built: {exc} |")
            continue
        params = sum(p.numel() for p in model.parameters())
        for n in threads:
            torch.set_num_threads(n)
            row = [spec, f"{params:,}", str(n)]
            record = {"params": params, "threads": n, "device": str(device), "where": where,
                      "torch": torch.__version__, "reps": args.reps}
            for b in args.batches:
                sec, cpu = time_model(model, device, b, args.reps)
                row += [f"{b / sec:.1f}", f"{1000 * sec / b:.1f}", f"{1000 * cpu / b:.1f}"]
                record[f"b{b}_ms_per_slice"] = 1000 * sec / b
                record[f"b{b}_cpu_ms_per_slice"] = 1000 * cpu / b
            results[spec if len(threads) == 1 else f"{spec}@{n}"] = record
            print("| " + " | ".join(row) + " |", flush=True)
    if args.json:
        from mambaseg.files import write_json

        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
