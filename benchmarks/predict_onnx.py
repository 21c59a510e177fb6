"""Latency of a shipped model under onnxruntime and under PyTorch, side by side (not a test).

Exports the shipped weights (default: the default shipped model, the 5-fold ensemble of
ulvm_unet_v6) with ``mambaseg.inference.export`` (or takes an exported ``--onnx`` file), then times
the model step of predict on random 256x256 uint8 slices, the same inputs for both:
``inference.runner.predict_probs`` (PyTorch, ``torch`` scan backend on the CPU) and
``onnx_runtime.OnnxModel.predict_probs`` (onnxruntime's CPU provider), both limited to the same
number of threads. Prints milliseconds per slice (wall and this process's CPU time) and the
largest probability difference between the two::

    python benchmarks/predict_onnx.py                         # default shipped model, 2 threads
    python benchmarks/predict_onnx.py --model ulvm_unet_v6 --batches 1 8 --reps 10
    python benchmarks/predict_onnx.py --onnx model.onnx --model ulvm_unet_v6_cv5
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZE = 256


def timed(fns, reps: int, warmup: int = 1) -> list[tuple[list[float], list[float]]]:
    """Per function of ``fns``: (wall, process CPU) seconds of ``reps`` calls, the functions
    interleaved (one call of each per round), so that a change in the machine's load hits all."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    out = [([], []) for _ in fns]
    for _ in range(reps):
        for fn, (wall, cpu) in zip(fns, out):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return out


def spread(times: list[float], per: int) -> str:
    """``median (min-max)`` in ms per slice."""
    ms = [1000 * t / per for t in times]
    return f"{statistics.median(ms):.1f} ({min(ms):.0f}-{max(ms):.0f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="shipped model or ensemble (default: the "
                    "default shipped model)")
    ap.add_argument("--onnx", type=Path, default=None, help="an exported file of that model "
                    "(default: export it to a temporary file first)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both (default 2)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions, PyTorch and onnxruntime interleaved (median and range "
                    "reported)")
    args = ap.parse_args(argv)

    import onnxruntime

    from mambaseg.inference.export import export_model
    from mambaseg.inference.loading import load_shipped_model
    from mambaseg.inference.onnx_runtime import OnnxModel
    from mambaseg.inference.runner import predict_probs
    from mambaseg.models.pretrained import default_shipped

    torch.set_num_threads(args.threads)
    name = args.model or default_shipped()
    net = load_shipped_model(name, "cpu")
    for m in net.modules():  # the torch backend: what the CPU runs anyway, named explicitly
        if hasattr(m, "scan_backend"):
            m.scan_backend = "torch"
    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx
        export_s = None
        if path is None:
            path = Path(tmp) / f"{name}.onnx"
            t0 = time.perf_counter()
            export_model(net, path, source=f"shipped:{name}", check=False)
            export_s = time.perf_counter() - t0
        onnx_model = OnnxModel(path, device="cpu", threads=args.threads)
        cpu = platform.processor() or platform.machine()
        print(f"# {name}: predict's model step on {SIZE}x{SIZE} uint8 slices, median (min-max) "
              f"of {args.reps} interleaved runs; {args.threads} threads each; {cpu}; torch {torch.__version__}, "
              f"onnxruntime {onnxruntime.__version__}"
              + (f"; export took {export_s:.0f} s" if export_s else ""))
        print("| batch | PyTorch ms/slice | PyTorch CPU ms/slice | onnxruntime ms/slice | "
              "onnxruntime CPU ms/slice | speed-up | max prob diff |")
        print("|---|---|---|---|---|---|---|")
        rng = np.random.default_rng(0)
        for b in args.batches:
            x = rng.integers(0, 256, (b, 3, SIZE, SIZE), dtype=np.uint8)
            xt = torch.from_numpy(x)
            pt = predict_probs(net, xt, batch_size=b, device="cpu").numpy()
            po = onnx_model.predict_probs(x, batch_size=b)
            diff = float(np.abs(pt - po).max())
            (t_wall, t_cpu), (o_wall, o_cpu) = timed(
                [lambda: predict_probs(net, xt, batch_size=b, device="cpu"),
                 lambda: onnx_model.predict_probs(x, batch_size=b)], args.reps)
            ratio = statistics.median(t_wall) / statistics.median(o_wall)
            print(f"| {b} | {spread(t_wall, b)} | {spread(t_cpu, b)} | {spread(o_wall, b)} | "
                  f"{spread(o_cpu, b)} | {ratio:.2f}x | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
