"""ONNX export (inference.export) and the torch-free runner (onnx_runtime): every registered model
exports and runs in onnxruntime with PyTorch's logits, the export forms of the scan and of
pyramid pooling match their eager forms, and the errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from mambaseg.inference.export import (FORMAT, MIN_OPSET, export_metadata, export_model,  # noqa: E402
                                    export_mode, run_export)
from mambaseg.inference.runner import predict_probs, valid_size  # noqa: E402
from mambaseg.errors import MambasegError  # noqa: E402
from mambaseg.models import create_model, list_models  # noqa: E402
from mambaseg.inference.onnx_runtime import (OnnxModel, aa_bilinear_weights, bilinear_weights,  # noqa: E402
                                   resize)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              # the tests that call torch.onnx.export themselves (export_model silences these)
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript"),
              pytest.mark.filterwarnings("ignore:The feature will be removed")]

#: largest |onnxruntime - PyTorch| logit (float32), at 256x256 and at 128x128, every model
TOL = 1e-4
#: onnxruntime's logits are at most this many times as far from a float64 evaluation of the same
#: network as PyTorch's float32 logits are (checked at 192x224, where the two float32 results
#: of a random-init UltraLight net, |logits| up to 40, differ by up to 2.2e-4)
ACCURACY_RATIO = 2.0


def _session(path) -> "ort.InferenceSession":
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def _assert_close(out, ref, what):
    err = float(np.abs(out - ref).max())
    assert err <= TOL, f"{what}: max |onnxruntime - torch| = {err:.3g} (|logits| <= " \
                       f"{float(np.abs(ref).max()):.3g})"


def _logits64(model, x):
    """The model's logits computed in float64 (export forms, as the graph), model unchanged."""
    try:
        with export_mode(model, pooling=False):
            return _logits(model.double(), x.double())
    finally:
        model.float()


# ----------------------------------------------------------------------------- every model

@pytest.mark.parametrize("name", list_models())
def test_every_model_exports_and_matches_pytorch(name, tmp_path):
    """Random init, eval mode, torch scan backend: the exported graph's logits are PyTorch's
    within 1e-4 at the training size (batch 1) and at 128x128 (batch 2: batch, height and width
    are dynamic). At 192x224 (and 224, 320) the float32 rounding of random-init UltraLight nets
    (|logits| 10-40) alone differs by more: PyTorch's float32 logits are themselves up to 2.2e-4
    from a float64 evaluation there; onnxruntime is checked to be as accurate as PyTorch."""
    torch.manual_seed(0)
    kwargs = {"scan_backend": "torch"} if name.startswith(("ulvm", "umamba")) else {}
    model = create_model(name, **kwargs).eval()
    path = tmp_path / f"{name}.onnx"
    res = export_model(model, path, check=False)
    meta = res.metadata
    assert meta["format"] == FORMAT and meta["model_name"] == name
    assert meta["dynamic"] == "true" and meta["input_name"] == "image"
    assert int(meta["size_multiple"]) == model.size_multiple
    assert int(meta["min_size"]) == model.smallest_size
    assert json.loads(meta["input_size"]) == model.input_size
    sess = _session(path)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("image", "logits")
    assert isinstance(inp.shape[0], str) and isinstance(inp.shape[2], str)  # dynamic axes
    g = torch.Generator().manual_seed(1)
    sizes = [(1, *valid_size(model, model.input_size, model.input_size)),
             (2, *valid_size(model, 128, 128))]
    for batch, h, w in sizes:
        x = torch.rand(batch, 3, h, w, generator=g)
        got = sess.run(["logits"], {"image": x.numpy()})[0]
        assert got.shape == (batch, 1, h, w)
        _assert_close(got, _logits(model, x), f"{name} {batch}x{h}x{w}")
    x = torch.rand(2, 3, *valid_size(model, 192, 224), generator=g)
    got = sess.run(["logits"], {"image": x.numpy()})[0]
    exact = _logits64(model, x)
    err_ort = float(np.abs(got - exact).max())
    err_torch = float(np.abs(_logits(model, x) - exact).max())
    assert err_ort <= ACCURACY_RATIO * err_torch + 1e-6, \
        f"{name} 2x192x224: onnxruntime is {err_ort:.3g} from float64, PyTorch {err_torch:.3g}"


# ----------------------------------------------------------------------------- export forms

def _scan_inputs(batch, dim, length, dstate, seed=0, strong=False):
    """Mamba-like scan inputs (as tests/ops/scan_helpers.make_inputs): pre-softplus delta
    around softplus^-1(0.01) (``strong``: around 2, decays down to e^-50 and below)."""
    g = torch.Generator().manual_seed(seed)
    return {"u": torch.randn(batch, dim, length, generator=g),
            "delta": torch.randn(batch, dim, length, generator=g) + (2.0 if strong else -4.5),
            "A": -torch.arange(1, dstate + 1.0).repeat(dim, 1)
            * (0.5 + torch.rand(dim, dstate, generator=g)),
            "B": torch.randn(batch, dstate, length, generator=g),
            "C": torch.randn(batch, dstate, length, generator=g),
            "D": torch.randn(dim, generator=g), "z": torch.randn(batch, dim, length, generator=g),
            "delta_bias": torch.rand(dim, generator=g) * 0.1}


def test_functional_scan_matches_reference():
    """The export formulation of the torch scan backend against the float64 reference, for
    lengths that are not multiples of the fold chunk, long ones, and strong decays."""
    from mambaseg.ops.reference import selective_scan_reference
    from mambaseg.ops.scan_torch import selective_scan_torch

    for shape in [(1, 1, 1, 1), (2, 3, 7, 4), (2, 3, 100, 8), (1, 5, 129, 16), (1, 2, 3000, 4)]:
        for strong in (False, True):
            inputs = _scan_inputs(*shape, seed=7, strong=strong)
            ref = selective_scan_reference(**inputs, delta_softplus=True)
            got = selective_scan_torch(**inputs, delta_softplus=True, functional=True)
            scale = max(1.0, float(ref.abs().max()))
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * scale)
            with torch.enable_grad():          # the autograd form agrees to rounding too
                eager = selective_scan_torch(**inputs, delta_softplus=True, functional=False)
            torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5 * scale)


def test_scan_exports_with_dynamic_length(tmp_path):
    """The selective scan alone, exported once, run in onnxruntime at other batches and lengths
    (odd, not a multiple of the fold chunk, longer than the traced one)."""
    from mambaseg.ops.reference import selective_scan_reference
    from mambaseg.ops.selective_scan import selective_scan

    class Scan(torch.nn.Module):
        def forward(self, u, delta, A, B, C, D, z, bias):
            return selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias,
                                  delta_softplus=True, backend="torch")

    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]

    def args(batch, length):
        i = _scan_inputs(batch, 4, length, 8, seed=length)
        return [i[k] for k in names]

    axes = {k: {0: "batch", 2: "length"} for k in ("u", "delta", "B", "C", "z", "y")}
    path = tmp_path / "scan.onnx"
    with torch.no_grad():
        torch.onnx.export(Scan(), tuple(args(1, 64)), str(path), dynamo=False, opset_version=17,
                          input_names=names, output_names=["y"], dynamic_axes=axes)
    sess = _session(path)
    for batch, length in [(1, 64), (2, 1), (3, 37), (1, 1000)]:
        a = args(batch, length)
        got = sess.run(["y"], dict(zip(names, (t.numpy() for t in a))))[0]
        ref = selective_scan_reference(*a[:5], D=a[5], z=a[6], delta_bias=a[7],
                                       delta_softplus=True).numpy()
        np.testing.assert_allclose(got, ref, rtol=6e-4, atol=2e-3)


@pytest.mark.parametrize("size", [(8, 8), (5, 7), (16, 12), (4, 4), (1, 3)])
def test_pyramid_pooling_export_form_matches(size):
    """Pooling by averaging matrices equals adaptive_avg_pool2d's bins (also bins larger than
    the input and bins that do not divide it)."""
    from mambaseg.inference.export import _ppm_forward_export
    from mambaseg.nn.ppm import PyramidPooling

    torch.manual_seed(0)
    ppm = PyramidPooling.psp(16).eval()
    x = torch.randn(2, 16, *size)
    with torch.no_grad():
        torch.testing.assert_close(_ppm_forward_export(ppm, x), ppm(x), rtol=1e-5, atol=1e-5)


def test_export_mode_restores_the_model():
    from mambaseg.nn.mamba import Mamba
    from mambaseg.nn.ppm import PyramidPooling

    model = create_model("ulvm_unet_v4", scan_backend="reference").train()
    with export_mode(model):
        assert not model.training
        assert all(m.scan_backend == "torch" for m in model.modules() if isinstance(m, Mamba))
        assert all("forward" in vars(m) for m in model.modules() if isinstance(m, PyramidPooling))
    assert model.training
    assert all(m.scan_backend == "reference" for m in model.modules() if isinstance(m, Mamba))
    assert not any("forward" in vars(m) for m in model.modules() if isinstance(m, PyramidPooling))


# ----------------------------------------------------------------------------- ensembles, fp16

def test_ensemble_is_one_graph_of_mean_probabilities(tmp_path):
    from mambaseg.inference.ensemble import Ensemble
    from mambaseg.inference.postprocess import PostProcess

    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        members.append(create_model("ulvm_unet"))
    ens = Ensemble(members, ["a", "b"], postprocess=PostProcess(lcc=True)).eval()
    res = export_model(ens, tmp_path / "ens.onnx")
    assert res.max_abs_diff is not None and res.max_abs_diff < 1e-5
    meta = res.metadata
    assert meta["members"] == "2" and meta["model_name"] == "ulvm_unet"
    assert json.loads(meta["postprocess"]) == {"lcc": True, "min_volume": 0, "min_area": 0}
    assert meta["source"] == "a + b"
    x = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(3))
    got = _session(tmp_path / "ens.onnx").run(["logits"], {"image": x.numpy()})[0]
    want = (torch.sigmoid(members[0](x)) + torch.sigmoid(members[1](x))).detach().numpy() / 2
    np.testing.assert_allclose(1 / (1 + np.exp(-got)), want, atol=1e-5)


def test_fp16_weights_halve_the_file(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet", features=(8, 16, 32)).eval()
    full = export_model(model, tmp_path / "fp32.onnx", check=False)
    half = export_model(model, tmp_path / "fp16.onnx", fp16=True)
    assert half.metadata["weights_dtype"] == "float16" and half.notes
    assert half.size_bytes < 0.6 * full.size_bytes
    proto = onnx.load(str(tmp_path / "fp16.onnx"))
    kinds = {i.data_type for i in proto.graph.initializer if len(i.dims) > 1}
    assert kinds == {onnx.TensorProto.FLOAT16}
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # the weights rounded to float16 are the model's weights rounded to float16
    model16 = create_model("unet", features=(8, 16, 32)).eval()
    model16.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    x = torch.rand(1, 3, 64, 64)
    got = _session(tmp_path / "fp16.onnx").run(["logits"], {"image": x.numpy()})[0]
    _assert_close(got, _logits(model16, x), "fp16 weights")


# ----------------------------------------------------------------------------- the runner

@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    """A random ulvm_unet (1/8-resolution Mamba layers, sizes multiples of 32) and its export."""
    torch.manual_seed(0)
    model = create_model("ulvm_unet").eval()
    path = tmp_path_factory.mktemp("onnx") / "ulvm_unet.onnx"
    export_model(model, path, check=False)
    return model, path


@pytest.mark.parametrize("sizes", [(300, 256), (256, 200), (200, 200), (512, 384), (7, 9)])
def test_numpy_resize_matches_torch_interpolate(sizes):
    """The runner's resize weights are those of F.interpolate(bilinear, antialias=True) on the
    way in and F.interpolate(bilinear) on the way out: equal up to float32 rounding to PyTorch's
    float64 result. (PyTorch's float32 antialiased kernel itself is off by up to ~2e-5 for some
    scales, e.g. 256 -> 240: the runner's resized inputs differ from the PyTorch path's by that
    much where a resize happens; at the training size, none does.)"""
    h, w = sizes
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h), dtype=torch.float64)
    for out in [(256, 256), (180, 240), (h * 2, w)]:
        xf = x.float().numpy()
        for antialias in (True, False):
            want = F.interpolate(x, size=out, mode="bilinear", align_corners=False,
                                 antialias=antialias).numpy()
            np.testing.assert_allclose(resize(xf, out, antialias=antialias), want, atol=1e-6)
            want32 = F.interpolate(x.float(), size=out, mode="bilinear", align_corners=False,
                                   antialias=antialias).numpy()
            np.testing.assert_allclose(resize(xf, out, antialias=antialias), want32, atol=5e-5)
    assert np.allclose(aa_bilinear_weights(300, 256).sum(1), 1)
    assert np.allclose(bilinear_weights(100, 256).sum(1), 1)


def test_runner_probabilities_match_pytorch_predict(small_onnx):
    """OnnxModel.predict_probs is runner.predict_probs: resize to the training scale, pad,
    run, crop, sigmoid, resize back (uint8 images of other sizes, and --no-resize)."""
    model, path = small_onnx
    onnx_model = OnnxModel(path)
    assert onnx_model.input_size == 256 and onnx_model.in_channels == 3
    assert onnx_model.valid_size(200, 250) == valid_size(model, 200, 250)
    rng = np.random.default_rng(0)
    for shape, rescale in [((2, 3, 256, 256), True), ((1, 3, 300, 220), True),
                           ((2, 3, 100, 90), True), ((1, 3, 100, 90), False)]:
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        want = predict_probs(model, torch.from_numpy(x), rescale=rescale).numpy()
        got = onnx_model.predict_probs(x, rescale=rescale)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_runner_segment_api(small_onnx):
    model, path = small_onnx
    onnx_model = OnnxModel(path)
    img = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    mask = onnx_model.segment(img)
    prob = predict_probs(model, torch.from_numpy(img).permute(2, 0, 1)[None])[0, 0].numpy()
    assert mask.dtype == np.uint8 and mask.shape == (256, 256)
    assert int((mask != (prob > 0.5)).sum()) <= int((np.abs(prob - 0.5) < 1e-4).sum())
    gray = onnx_model.segment(img[:, :, 0])            # grayscale: repeated to 3 channels
    assert gray.shape == (256, 256)
    assert len(onnx_model.segment([img, img], return_probs=True)) == 2


# ----------------------------------------------------------------------------- errors

def test_existing_output_needs_overwrite(tmp_path, small_onnx):
    model, _ = small_onnx
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep")
    with pytest.raises(MambasegError, match="already exists; pass --overwrite"):
        export_model(model, out)
    assert out.read_bytes() == b"keep"
    with pytest.raises(MambasegError, match="is a directory"):
        export_model(model, tmp_path)


@pytest.mark.parametrize("opset", [9, 10])
def test_opset_too_old_is_an_error_naming_the_opset_needed(tmp_path, opset):
    model = create_model("ulvm_unet").eval()
    out = tmp_path / "m.onnx"
    with pytest.raises(MambasegError, match=rf"opset {opset} is too old for .*(needs|use) "
                                            rf"opset \d+ or newer .*{MIN_OPSET} to 20"):
        export_model(model, out, opset=opset)
    assert list(tmp_path.iterdir()) == []            # no partial file, no temporary file


def test_opset_out_of_range(tmp_path, small_onnx):
    model, _ = small_onnx
    for opset, match in [(21, "newer than the exporter writes"), (5, "does not exist")]:
        with pytest.raises(MambasegError, match=match):
            export_model(model, tmp_path / "m.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []


def test_model_without_shipped_weights_says_pass_checkpoint(tmp_path):
    with pytest.raises(MambasegError, match="no pretrained weights are shipped for 'unet'.*"
                                            "--checkpoint"):
        run_export(tmp_path / "m.onnx", model="unet")
    with pytest.raises(MambasegError, match="unknown model 'nope'"):
        run_export(tmp_path / "m.onnx", model="nope")
    assert list(tmp_path.iterdir()) == []


def test_onnx_file_without_mambaseg_metadata(tmp_path):
    path = tmp_path / "plain.onnx"
    with torch.no_grad():
        torch.onnx.export(torch.nn.Conv2d(3, 1, 1), (torch.rand(1, 3, 8, 8),), str(path),
                          dynamo=False, input_names=["image"], output_names=["logits"])
    with pytest.raises(MambasegError, match="has no mambaseg metadata .*mambaseg export"):
        OnnxModel(path)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(MambasegError, match="not a loadable ONNX model"):
        OnnxModel(tmp_path / "junk.onnx")
    with pytest.raises(MambasegError, match="not found"):
        OnnxModel(tmp_path / "missing.onnx")


def test_wrong_channel_count_is_an_error(small_onnx):
    _, path = small_onnx
    onnx_model = OnnxModel(path)
    with pytest.raises(MambasegError, match="takes 3-channel images, got 1 channels"):
        onnx_model.predict_probs(np.zeros((1, 1, 64, 64), np.uint8))
    with pytest.raises(MambasegError, match=r"must be \(N, C, H, W\)"):
        onnx_model.predict_probs(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(MambasegError, match="unexpected image shape"):
        onnx_model.segment(np.zeros((64, 64, 5), np.uint8))


def test_metadata_of_a_one_channel_model():
    model = create_model("unet", in_channels=1, features=(4, 8))
    meta = export_metadata(model)
    assert meta["in_channels"] == "1" and json.loads(meta["channels"]) is None
    assert json.loads(meta["normalisation"])["scale"] == "divide by 255"
    assert meta["threshold"] == "0.5" and json.loads(meta["postprocess"])["lcc"] is False


def test_size_limit_of_the_export_scan(small_onnx):
    """The graph's scans are exact up to EXPORT_MAX_LEN steps: the metadata say how many pixels
    that allows (ulvm_unet's longest scan sees 1/64 of them) and the runner refuses more."""
    from mambaseg.ops.scan_torch import EXPORT_MAX_LEN

    _, path = small_onnx
    onnx_model = OnnxModel(path)
    assert onnx_model.max_pixels == EXPORT_MAX_LEN * 64 >= 8192 * 8192
    onnx_model.max_pixels = 64 * 64
    onnx_model.predict_probs(np.zeros((1, 3, 64, 64), np.uint8), rescale=False)
    with pytest.raises(MambasegError, match="exceed the 4096 this export computes exactly"):
        onnx_model.predict_probs(np.zeros((1, 3, 64, 96), np.uint8), rescale=False)
