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


def timed(fn, reps: int, warmup: int = 1) -> tuple[float, float]:
    """Median (wall, process CPU) seconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="shipped model or ensemble (default: the "
                    "default shipped model)")
    ap.add_argument("--onnx", type=Path, default=None, help="an exported file of that model "
                    "(default: export it to a temporary file first)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both (default 2)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
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
        print(f"# {name}: predict's model step on {SIZE}x{SIZE} uint8 slices, median of "
              f"{args.reps}; {args.threads} threads each; {cpu}; torch {torch.__version__}, "
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
            t_wall, t_cpu = timed(lambda: predict_probs(net, xt, batch_size=b, device="cpu"),
                                  args.reps)
            o_wall, o_cpu = timed(lambda: onnx_model.predict_probs(x, batch_size=b), args.reps)
            print(f"| {b} | {1000 * t_wall / b:.1f} | {1000 * t_cpu / b:.1f} | "
                  f"{1000 * o_wall / b:.1f} | {1000 * o_cpu / b:.1f} | {t_wall / o_wall:.2f}x | "
                  f"{diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
