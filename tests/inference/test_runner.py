"""Inference at the model's training scale: resize in, predict, resize back (inference.runner)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mambaseg.inference.model_info import work_size
from mambaseg.inference.runner import predict_probs


class Bright(torch.nn.Module):
    """Tumour where channel 0 is bright; records the input sizes it was given."""

    in_channels = 3

    def __init__(self, input_size=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        if input_size is not None:
            self.input_size = input_size
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        return (x[:, :1] - 0.5) * 40 * self.w


def _image(h, w, box):
    img = np.full((1, 3, h, w), 40, np.uint8)
    r0, r1, c0, c1 = box
    img[:, 0, r0:r1, c0:c1] = 250
    return torch.from_numpy(img)


@pytest.mark.parametrize("size, h, w, rescale, expected", [
    (224, 256, 256, True, (224, 224)),
    (224, 300, 200, True, (224, 149)),   # longer side to 224, aspect ratio kept
    (256, 128, 64, True, (256, 128)),    # small images are enlarged
    (256, 256, 100, True, (256, 100)),   # longer side already 256
    (224, 256, 256, False, (256, 256)),
    (None, 300, 200, True, (300, 200)),  # a model that declares no size
])
def test_work_size(size, h, w, rescale, expected):
    assert work_size(Bright(size), h, w, rescale) == expected


def test_predict_resizes_to_the_training_scale_and_back():
    x = _image(256, 256, (64, 128, 96, 192))
    truth = np.zeros((256, 256), bool)
    truth[64:128, 96:192] = True
    model = Bright(224)
    probs = predict_probs(model, x)
    assert model.seen == [(224, 224)]
    assert probs.shape == (1, 1, 256, 256) and probs.dtype == torch.float32
    pred = probs[0, 0].numpy() > 0.5
    # the square comes back where it was, up to the two interpolations at its border
    assert (pred & truth).sum() / (pred | truth).sum() > 0.95
    assert (pred[truth]).mean() > 0.97 and (pred[~truth]).mean() < 0.01
    native = Bright(224)
    same = predict_probs(native, x, rescale=False)
    assert native.seen == [(256, 256)]
    assert np.array_equal(same[0, 0].numpy() > 0.5, truth)


def test_predict_non_square_resize_then_pad():
    model = Bright(256)
    x = _image(300, 200, (30, 90, 20, 80))
    probs = predict_probs(model, x)
    # 300x200 -> 256x171, zero-padded to multiples of 32 (the default): 256x192
    assert model.seen == [(256, 192)] and probs.shape == (1, 1, 300, 200)
    pred = probs[0, 0].numpy() > 0.5
    assert abs(int(pred.sum()) - 60 * 60) < 0.06 * 3600
    assert pred[35:85, 25:75].all() and not pred[100:].any()


def test_checkpoint_restores_the_training_scale(tmp_path):
    from mambaseg.models import create_model, from_pretrained

    model = create_model("unet", features=(4, 8))
    model.input_size = 128  # as the trainer sets it for data resized to 128x128
    model.save_pretrained(tmp_path / "ckpt")
    loaded = from_pretrained(tmp_path / "ckpt")
    assert loaded.input_size == 128
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["preprocessing"][
        "input_size"] == 128
    seen = []
    loaded.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[-2:])))
    probs = predict_probs(loaded, torch.zeros(2, 3, 256, 256, dtype=torch.uint8))
    assert seen == [(128, 128)] and probs.shape == (2, 1, 256, 256)


def test_predict_cli_no_resize(tmp_path):
    from PIL import Image

    from mambaseg.cli import main
    from mambaseg.models import create_model

    model = create_model("unet", features=(4, 8))
    model.input_size = 128
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_image(256, 256, (0, 8, 0, 8))[0].permute(1, 2, 0).numpy()).save(src / "a.png")
    for flag, rescale in ((["--no-resize"], False), ([], True)):
        out = tmp_path / f"out{int(rescale)}"
        rc = main(["predict", "-i", str(src), "-o", str(out), "--checkpoint", str(ckpt),
                   "--device", "cpu", "--no-progress", *flag])
        summary = json.loads((out / "summary.json").read_text())
        assert rc == 0 and summary["rescale"] is rescale and summary["model_input_size"] == 128
        assert np.array(Image.open(out / "a_mask.png")).shape == (256, 256)


def test_channels_last_families_run_in_channels_last_with_the_same_probabilities():
    """predict_probs runs unet, resnet and mambaseg models (and ensembles of them) in the
    channels_last memory format, which is faster on CPU; the probabilities are those of the
    default format."""
    from mambaseg.inference.ensemble import Ensemble
    from mambaseg.models import create_model
    from mambaseg.models.base import prefers_channels_last

    torch.manual_seed(0)
    net = create_model("mambaseg_t", directions=1).eval()
    x = torch.randint(0, 256, (3, 3, 48, 40), dtype=torch.uint8)
    with torch.inference_mode():
        want = torch.sigmoid(net(x.float() / 255.0))   # 48 x 40: a valid size, no padding
    got = predict_probs(net, x, batch_size=2, rescale=False)
    assert net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert prefers_channels_last(net) and prefers_channels_last(create_model("unet"))
    assert not prefers_channels_last(create_model("ulvm_unet_v6"))
    assert prefers_channels_last(Ensemble([net, create_model("mambaseg_t")]))
    assert not prefers_channels_last(Ensemble([net, create_model("ulvm_unet")]))


def test_cpu_runs_at_most_cpu_batch_images_per_forward_pass():
    """On the CPU, a batch_size of 8 reaches the model CPU_BATCH images at a time (faster per
    slice there); every image still gets its own probabilities, in order."""
    from mambaseg.inference.runner import CPU_BATCH

    class Counting(Bright):
        def forward(self, x):
            self.batches = getattr(self, "batches", []) + [x.shape[0]]
            return super().forward(x)

    images = torch.cat([_image(32, 32, (i, i + 4, 2, 9)) for i in range(7)])
    net = Counting()
    got = predict_probs(net, images, batch_size=8, device="cpu", rescale=False)
    assert CPU_BATCH == 2 and net.batches == [2, 2, 2, 1]
    for i in range(7):   # image i is bright in rows i..i+3 only
        rows = (got[i, 0, :, 2:9] > 0.5).any(dim=1).nonzero().flatten().tolist()
        assert rows == list(range(i, i + 4))
    net = Counting()
    predict_probs(net, images, batch_size=1, device="cpu", rescale=False)
    assert net.batches == [1] * 7
