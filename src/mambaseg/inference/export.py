"""Exporting a model, a checkpoint or an ensemble to ONNX (``mambaseg export``).

The graph is traced with PyTorch's TorchScript-based ONNX exporter (``torch.onnx.export``,
``dynamo=False``): it needs no extra package beyond ``onnx`` (used here to write the metadata)
and handles every registered model with dynamic batch, height and width. Two modules are traced
through export-friendly formulations, computing the same values as in eager PyTorch:

- the selective scan of the Mamba blocks runs on the ``torch`` backend, whose functional form
  (``ops.scan_torch.selective_scan_export``: pair folding, a log-depth scan and unfolding, all
  plain tensor ops) is used while tracing, for any sequence length: no custom operator, a
  stock onnxruntime runs the graph;
- pyramid pooling (``nn.ppm.PyramidPooling``) pools with averaging matrices built from the
  traced height and width (exactly ``adaptive_avg_pool2d``'s bins), since the exporter supports
  adaptive pooling only for static sizes that the bins divide.

The graph: input ``image`` float32 (B, C, H, W), values in [0, 1] (uint8 pixels divided by
255), H and W multiples of ``size_multiple`` and at least ``min_size``; output ``logits``
float32 (B, 1, H, W): the tumour probability is ``sigmoid(logits)``, a pixel is tumour when it
exceeds ``threshold`` (0.5). An ensemble is one graph whose logits are those of the mean of its
members' probabilities (``inference.ensemble.Ensemble``). The model's ``metadata_props`` say all
this (see ``export_metadata``) and are what ``mambaseg predict --onnx``
(``mambaseg.inference.onnx_runtime``, no PyTorch needed) reads.

``fp16=True`` stores the weights as float16 (half the file) and casts them to float32 in the
graph: the computation and the input/output stay float32, which onnxruntime's CPU kernels need.
The shipped weights are float16 already: only the constants the exporter folds from them (such as
a Mamba block's ``-exp(A_log)``) are rounded further; the export check then compares against the
model with float16-rounded weights.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import time
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mambaseg._version import __version__
from mambaseg.errors import MambasegError
from mambaseg.files import atomic_path
from mambaseg.inference.loading import load_model, source_label
from mambaseg.inference.model_info import DEFAULT_MULTIPLE, in_channels, model_name, valid_size
from mambaseg.inference.postprocess import PostProcess, recommended_postprocess
from mambaseg.models.base import CHANNELS
from mambaseg.nn.mamba import Mamba
from mambaseg.nn.ppm import PyramidPooling
from mambaseg.ops.scan_torch import EXPORT_MAX_LEN

FORMAT = "mambaseg-onnx"
FORMAT_VERSION = 1
#: the opset written by default
DEFAULT_OPSET = 17
#: the oldest opset every registered model exports to: 11 for the UltraLight, U-Mamba, U-Net
#: and ResNet models (dynamic Pad, CumSum), 14 for SegFormer's scaled_dot_product_attention
MIN_OPSET = 14
#: the newest opset the TorchScript-based exporter writes
MAX_OPSET = 20
INPUT_NAME, OUTPUT_NAME = "image", "logits"
#: largest |difference| between the onnxruntime and PyTorch probabilities the export check
#: accepts
CHECK_TOL = 1e-4
#: ... with --fp16, against the model with float16-rounded weights (the constants the exporter
#: folds from them, e.g. -exp(A_log), are rounded after folding)
CHECK_TOL_FP16 = 1e-3


@dataclass
class ExportResult:
    """What ``export_model`` wrote: the file, its metadata and the check against PyTorch."""

    path: Path
    metadata: dict[str, str]
    opset: int
    fp16: bool
    seconds: float
    size_bytes: int
    #: largest |onnxruntime - PyTorch| probability at the example input (None: not checked)
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- export mode

def _pool_matrix(line: torch.Tensor, bins: int) -> torch.Tensor:
    """(bins, n) averaging matrix of ``adaptive_avg_pool`` along an axis of length n = len(line)
    (row i averages [floor(i n / bins), ceil((i + 1) n / bins))), from traced shapes only."""
    pos = torch.ones_like(line).cumsum(0) - 1                      # 0 .. n-1
    n = pos[-1:] + 1
    i = torch.arange(bins, dtype=pos.dtype, device=pos.device)[:, None]
    start, end = torch.floor(i * n / bins), torch.ceil((i + 1) * n / bins)
    inside = (pos[None, :] >= start) & (pos[None, :] < end)
    return inside.to(pos.dtype) / (end - start)


def _ppm_forward_export(self, x: torch.Tensor) -> torch.Tensor:
    """``PyramidPooling.forward`` with the adaptive pooling as two matrix products."""
    size = x.shape[-2:]
    column, row = x[0, 0, :, 0].float(), x[0, 0, 0, :].float()
    branches = []
    for bin_size, conv in zip(self.bins, self.convs):
        ph = _pool_matrix(column, bin_size).to(x.dtype)
        pw = _pool_matrix(row, bin_size).to(x.dtype)
        pooled = torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))
        y = F.relu(conv(pooled))
        branches.append(F.interpolate(y, size=size, mode="bilinear", align_corners=True))
    return torch.cat(branches, dim=1)


@contextlib.contextmanager
def export_mode(model: torch.nn.Module, pooling: bool = True):
    """``model`` in eval mode with every selective scan on the ``torch`` backend and (unless
    ``pooling`` is False) pyramid pooling in its export form; everything restored afterwards."""
    saved_backends, patched = [], []
    was_training = model.training
    for m in model.modules():
        if hasattr(m, "scan_backend"):
            saved_backends.append((m, m.scan_backend))
            m.scan_backend = "torch"
        if pooling and isinstance(m, PyramidPooling):
            patched.append(m)
            m.forward = types.MethodType(_ppm_forward_export, m)
    model.eval()
    try:
        yield model
    finally:
        for m, backend in saved_backends:
            m.scan_backend = backend
        for m in patched:
            del m.forward
        model.train(was_training)


# ----------------------------------------------------------------------------- metadata

def _size_rule(model) -> tuple[int, int]:
    """``(size_multiple, min_size)`` such that ``model.valid_size(n, n)`` is n rounded up to a
    multiple of ``size_multiple``, at least ``min_size``; checked for n up to 4x the input size
    (MambasegError if the model's rule is another)."""
    members = list(getattr(model, "members", None) or [model])
    multiple = 1
    low = 1
    for m in members:
        mm = int(getattr(m, "size_multiple", DEFAULT_MULTIPLE) or DEFAULT_MULTIPLE)
        multiple = multiple * mm // np.gcd(multiple, mm)
        low = max(low, int(getattr(m, "smallest_size", None) or getattr(m, "min_size", None)
                           or mm))
    low = -(-low // multiple) * multiple
    top = 4 * int(getattr(model, "input_size", None) or 256)
    for n in range(1, top + 1):
        want = max(-(-n // multiple) * multiple, low)
        if valid_size(model, n, n) != (want, want):
            raise MambasegError(f"cannot describe the input sizes {type(model).__name__} accepts "
                                f"as multiples of {multiple} (at least {low}): for {n} it asks "
                                f"for {valid_size(model, n, n)}")
    return multiple, low


def _preprocessing(model) -> dict:
    members = list(getattr(model, "members", None) or [model])
    pre = getattr(members[0], "preprocessing", None)
    return dict(pre) if isinstance(pre, dict) else {}


def _source_label(model) -> str:
    sources = getattr(model, "sources", None)
    if sources:
        return " + ".join(map(str, sources))
    return "in-memory"


def export_metadata(model, source: str | None = None, postprocess=None, opset: int = 0,
                    fp16: bool = False, example: tuple[int, int] | None = None,
                    max_pixels: int | None = None) -> dict[str, str]:
    """The ``metadata_props`` written into the ONNX file (all values strings; lists and dicts as
    JSON). ``postprocess``: a PostProcess (None: the model's recommendation, if any);
    ``max_pixels``: the largest height x width the graph computes exactly (None: any)."""
    multiple, low = _size_rule(model)
    pre = _preprocessing(model)
    channels = in_channels(model)
    names = pre.get("channels")
    if names is None and channels == 3:
        names = list(CHANNELS)
    if postprocess is None:
        postprocess = recommended_postprocess(model) or PostProcess()
    members = getattr(model, "members", None)
    size = getattr(model, "input_size", None)
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "mambaseg_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "model_name": model_name(model),
        "source": source or _source_label(model),
        "members": str(len(members) if members is not None else 1),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "output": "logits: tumour probability = sigmoid(logits); an ensemble's logits are those "
                  "of the mean of its members' probabilities",
        "in_channels": str(channels),
        "channels": json.dumps(names),
        "input_size": json.dumps(int(size) if size else None),
        "size_multiple": str(multiple),
        "min_size": str(low),
        "dynamic": "true",
        "fixed_size": "null",
        "example_size": json.dumps(list(example) if example else None),
        "max_pixels": json.dumps(max_pixels),
        "normalisation": json.dumps({"scale": pre.get("scale", "divide by 255"),
                                     "value_range": pre.get("value_range", [0.0, 1.0]),
                                     "pad": "zeros, bottom and right, to a valid size",
                                     "resize": "bilinear (antialiased) so that the longer side "
                                               "is input_size, aspect ratio kept"}),
        "threshold": "0.5",
        "postprocess": json.dumps(postprocess.to_dict()),
        "postprocess_description": postprocess.describe(),
        "opset": str(int(opset)),
        "weights_dtype": "float16" if fp16 else "float32",
    }
    return meta


# ----------------------------------------------------------------------------- onnx helpers

def _import_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise MambasegError(f"mambaseg export needs the onnx package ({exc}); install it with: "
                            "pip install 'mambaseg[export]'") from None
    return onnx


def weights_to_fp16(proto) -> int:
    """Store the float32 initializers of ``proto`` (an onnx ModelProto, changed in place) as
    float16, each followed by a Cast back to float32 under its old name: half the file, the same
    float32 computation. Tensors outside float16's range stay float32. Returns how many were
    converted."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    casts, converted = [], 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        if arr.size and float(np.abs(arr).max()) > 65504.0:
            continue
        name = init.name
        half = numpy_helper.from_array(arr.astype(np.float16), f"{name}__fp16")
        init.CopyFrom(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT,
                                      name=f"{name}__to_fp32"))
        converted += 1
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return converted


def _needed_opset(exc: Exception) -> int | None:
    """The opset the exporter's message asks for ("... added in version 14", "Please try opset
    version 11"), or None."""
    m = re.search(r"added in version (\d+)|try opset version (\d+)", str(exc), re.I)
    return int(m.group(1) or m.group(2)) if m else None


def _opset_error(exc: Exception, opset: int) -> MambasegError:
    """The exporter's error as a MambasegError saying which opset is needed."""
    reason = str(exc).split("[Caused by")[0].strip().splitlines()
    reason = reason[0] if reason else type(exc).__name__
    need = _needed_opset(exc)
    op = re.search(r"operator '([^']+)'", str(exc))
    what = f"operator {op.group(1)}" if op else "an operator of this model"
    supported = (f"every mambaseg model exports at opset {MIN_OPSET} to {MAX_OPSET}; default "
                 f"{DEFAULT_OPSET}")
    if need is not None and need > opset:
        return MambasegError(f"opset {opset} is too old for {what}: it needs opset {need} or "
                             f"newer ({supported})")
    if opset < MIN_OPSET:
        return MambasegError(f"opset {opset} is too old for this model ({reason}): use opset "
                             f"{MIN_OPSET} or newer ({supported})")
    return MambasegError(f"the ONNX exporter failed at opset {opset}: {reason}")


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the TorchScript exporter's dump of the whole graph to stderr when an operator
    fails (its logging is switched on and never off by ``setup_onnx_logging``)."""
    saved = torch._C._jit_onnx_log
    torch._C._jit_onnx_log = lambda *args: None
    try:
        yield
    finally:
        torch._C._jit_onnx_log = saved
        torch._C._jit_set_onnx_log_enabled(False)


# ----------------------------------------------------------------------------- export

def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """The output path, checked before anything is loaded: not a folder, and not an existing
    file unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise MambasegError(f"output {path} is a directory; give the .onnx file to write")
    if path.exists() and not overwrite:
        raise MambasegError(f"{path} already exists; pass --overwrite to replace it "
                            "(nothing was written)")
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise MambasegError(f"output {path} cannot be created: {blocker} is a file")
    return path


def check_opset(opset: int) -> int:
    opset = int(opset)
    if opset > MAX_OPSET:
        raise MambasegError(f"opset {opset} is newer than the exporter writes (at most "
                            f"{MAX_OPSET}); every mambaseg model exports at opset {MIN_OPSET} "
                            f"to {MAX_OPSET}")
    if opset < 7:
        raise MambasegError(f"opset {opset} does not exist for the exporter (7 to {MAX_OPSET}; "
                            f"mambaseg models need {MIN_OPSET} or newer)")
    return opset


def example_input(model, size: tuple[int, int] | None = None, batch: int = 1) -> torch.Tensor:
    """A float input in [0, 1] of the model's valid size nearest its training scale (or
    ``size``): what the exporter traces and the export check runs."""
    if size is None:
        n = int(getattr(model, "input_size", None) or 256)
        size = (n, n)
    h, w = valid_size(model, *size)
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, in_channels(model), h, w, generator=g)


def export_model(model: torch.nn.Module, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                 fp16: bool = False, overwrite: bool = False, source: str | None = None,
                 postprocess=None, check: bool = True,
                 example_size: tuple[int, int] | None = None) -> ExportResult:
    """Export ``model`` (a SegModel or an Ensemble; moved to the CPU in float32) to the ONNX file
    ``path`` (written atomically: a failed export leaves nothing) with its metadata.

    ``check``: run the file in onnxruntime (when installed) at the example input and compare
    with PyTorch; a difference above ``CHECK_TOL`` is an error. Raises MambasegError for an
    existing ``path`` without ``overwrite``, an opset outside the supported range or too old for
    an operator of the model, or a failed export.
    """
    onnx = _import_onnx()
    path = check_output(path, overwrite)
    opset = check_opset(opset)
    t0 = time.perf_counter()
    model = model.to("cpu", torch.float32)
    x = example_input(model, example_size)
    with export_mode(model, pooling=False), torch.no_grad():
        ref, lengths = _reference(model, x)
    max_pixels = None
    if lengths:  # the longest scan, as a share of the input's pixels, bounds the exact sizes
        max_pixels = EXPORT_MAX_LEN * x.shape[-2] * x.shape[-1] // max(lengths)
    meta = export_metadata(model, source, postprocess, opset, fp16, tuple(x.shape[-2:]),
                           max_pixels)
    notes: list[str] = []
    dyn = {0: "batch", 2: "height", 3: "width"}
    with atomic_path(path) as tmp:
        with export_mode(model), torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
            warnings.simplefilter("ignore")  # the tracer's warnings on Python-side shape checks
            try:
                torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: dyn, OUTPUT_NAME: dyn},
                                  do_constant_folding=True)
            except MambasegError:
                raise
            except (torch.onnx.errors.OnnxExporterError, RuntimeError) as exc:
                raise _opset_error(exc, opset) from None
        proto = onnx.load(str(tmp))
        if fp16:
            notes.append(f"{weights_to_fp16(proto)} weight tensors stored as float16")
        proto.producer_name = "mambaseg"
        proto.doc_string = (f"mambaseg {meta['model_name']} ({meta['source']}): input "
                            f"'{INPUT_NAME}' (B, {meta['in_channels']}, H, W) float32 in [0, 1], "
                            f"output '{OUTPUT_NAME}' (B, 1, H, W); sigmoid(logits) is the "
                            "tumour probability")
        del proto.metadata_props[:]
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        tol = CHECK_TOL
        if check and fp16:  # against the model with its weights rounded to float16
            tol = CHECK_TOL_FP16
            with export_mode(model, pooling=False), torch.no_grad(), _weights_rounded(model):
                ref, _ = _reference(model, x)
        diff = _check(tmp, x.numpy(), ref) if check else None
        if diff is not None and diff > tol:
            raise MambasegError(f"the exported graph's probabilities differ from PyTorch's by "
                                f"up to {diff:.3g} (more than {tol:g}); nothing was written")
    return ExportResult(path, meta, opset, bool(fp16), time.perf_counter() - t0,
                        path.stat().st_size, diff, notes)


def _reference(model, x: torch.Tensor) -> tuple[np.ndarray, list[int]]:
    """PyTorch's logits at ``x`` and the sequence length of every selective scan run."""
    lengths: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: lengths.append(int(args[0].shape[1])))
             for m in model.modules() if isinstance(m, Mamba)]
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.float().numpy(), lengths


@contextlib.contextmanager
def _weights_rounded(model: torch.nn.Module):
    """``model`` with its floating-point parameters and buffers rounded to float16 (restored
    afterwards)."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers())
               if t.is_floating_point()]
    saved = [t.detach().clone() for t in tensors]
    try:
        with torch.no_grad():
            for t in tensors:
                t.copy_(t.half().float())
        yield model
    finally:
        with torch.no_grad():
            for t, v in zip(tensors, saved):
                t.copy_(v)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x.astype(np.float64), -80, 80)))


def _check(path: Path, x: np.ndarray, ref: np.ndarray) -> float | None:
    """Largest |onnxruntime - PyTorch| probability (sigmoid of the logits: an ensemble's logits
    of probabilities near 0 or 1 are ill-conditioned) at ``x``; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = sess.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]
    return float(np.abs(_sigmoid(out) - _sigmoid(ref)).max())


def load_for_export(model: str | None = None, checkpoint=None):
    """``(module, source label)``: the shipped weights of ``model`` (a model name or a shipped
    ensemble), or the checkpoint folder(s) ``checkpoint`` (several, or an ensemble folder: an
    Ensemble). A model without shipped weights is an error saying to pass --checkpoint."""
    if (model is None) == (checkpoint is None):
        raise MambasegError("pass either --model NAME or --checkpoint DIR [DIR ...]")
    model = None if model is None else str(model)
    net = load_model(model, checkpoint, "cpu")
    return net, source_label(model, checkpoint, net)


def run_export(output: str | os.PathLike, model: str | None = None, checkpoint=None,
               opset: int = DEFAULT_OPSET, fp16: bool = False, overwrite: bool = False,
               check: bool = True) -> ExportResult:
    """``mambaseg export``: check the output and opset, load the model, export it."""
    check_output(output, overwrite)
    check_opset(opset)
    net, source = load_for_export(model, checkpoint)
    return export_model(net, output, opset=opset, fp16=fp16, overwrite=overwrite, source=source,
                        check=check)
