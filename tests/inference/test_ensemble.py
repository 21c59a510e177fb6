"""inference/ensemble.py and inference/loading.py: probability averaging, ensemble folders,
compatibility checks, loading."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mambaseg.errors import CheckpointError, MambasegError
from mambaseg.inference import loading as L
from mambaseg.inference import model_info
from mambaseg.inference import runner as I
from mambaseg.inference.ensemble import Ensemble, is_ensemble_dir, read_manifest
from mambaseg.inference.loading import load_ensemble, save_ensemble
from mambaseg.inference.postprocess import PostProcess, recommended_postprocess
from mambaseg.models import count_parameters


class Affine(torch.nn.Module):
    """Logits ``a * x[:, 0] + b`` (one channel); ``two_class``: the same as a 2-class output
    (softmax of [0, logit]); ``tuple_out``: returned as (main, aux) like deep supervision."""

    in_channels = 3
    input_size = 256

    def __init__(self, a, b, two_class=False, tuple_out=False):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(float(a)))
        self.b = b
        self.two_class, self.tuple_out = two_class, tuple_out

    def forward(self, x):
        z = self.a * x[:, :1] + self.b
        if self.two_class:
            z = torch.cat([torch.zeros_like(z), z], 1)
        return (z, z * 0) if self.tuple_out else z


def _sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def _unet(seed, **kw):
    from mambaseg.models import create_model

    torch.manual_seed(seed)
    return create_model("unet", features=(4, 8), **kw)


def test_forward_is_the_logit_of_the_mean_probability():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    members = [Affine(2.0, -1.0), Affine(-4.0, math.log(3)), Affine(1.0, 0.5, two_class=True),
               Affine(3.0, 0.0, tuple_out=True)]
    ens = Ensemble(members)
    p = torch.sigmoid(ens(x))[0, 0].flatten().tolist()
    for v, got in zip([0.0, 0.25, 0.5, 1.0], p):
        want = (_sig(2 * v - 1) + _sig(-4 * v + math.log(3)) + _sig(v + 0.5) + _sig(3 * v)) / 4
        assert got == pytest.approx(want, abs=1e-6)
    # x = 0: members give 1/(1+e), 3/4, sigmoid(0.5), 1/2
    assert p[0] == pytest.approx((1 / (1 + math.e) + 0.75 + _sig(0.5) + 0.5) / 4, abs=1e-6)
    # run through inference like any model: the probabilities are the same mean
    probs = I.predict_probs(ens, (x * 255).round().to(torch.uint8))
    assert probs[0, 0].flatten().tolist() == pytest.approx(p, abs=2e-3)


def test_model_attributes_read_like_a_segmodel():
    a, b = _unet(0), _unet(1)
    ens = Ensemble([a, b], ["dirA", "dirB"])
    assert model_info.model_name(ens) == "unet"
    assert count_parameters(ens) == 2 * count_parameters(a)
    assert model_info.in_channels(ens) == 3 and ens.input_size == 256
    assert ens.valid_size(250, 301) == a.valid_size(250, 301)
    with pytest.raises(MambasegError, match="nearest valid size"):
        ens.check_input(torch.zeros(1, 3, 250, 301))


def test_valid_size_is_common_to_all_members():
    class M(Affine):
        def __init__(self, k):
            super().__init__(1.0, 0.0)
            self.k = k

        def valid_size(self, h, w):
            return -(-h // self.k) * self.k, -(-w // self.k) * self.k

    assert Ensemble([M(6), M(4)]).valid_size(13, 25) == (24, 36)   # multiples of 12


def test_mismatched_members_name_both_folders(tmp_path):
    a = _unet(0).save_pretrained(tmp_path / "fold_a")
    b = _unet(1, in_channels=1).save_pretrained(tmp_path / "fold_b")
    with pytest.raises(MambasegError, match="different input sizes or channels") as exc:
        L.load_models([a, b])
    assert str(a) in str(exc.value) and str(b) in str(exc.value)
    assert "in_channels 3" in str(exc.value) and "in_channels 1" in str(exc.value)
    small = _unet(2)
    small.input_size = 224
    c = small.save_pretrained(tmp_path / "fold_c")
    with pytest.raises(MambasegError, match="input_size 256.*input_size 224") as exc:
        L.load_models([a, c])
    assert str(a) in str(exc.value) and str(c) in str(exc.value)
    with pytest.raises(MambasegError, match="fold_c"):
        save_ensemble(tmp_path / "ens", [a, c])
    assert not (tmp_path / "ens").exists()


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    a, b = _unet(0), _unet(1)
    x = torch.rand(2, 3, 32, 32)
    want = Ensemble([a, b]).eval()(x)
    out = save_ensemble(tmp_path / "ens", [a, b], metadata={"cv": {"k": 2}},
                        postprocess=PostProcess(lcc=True, min_volume=5))
    assert is_ensemble_dir(out) and not is_ensemble_dir(tmp_path)
    manifest = json.loads((out / "ensemble.json").read_text())
    assert manifest == {"format": "mambaseg-ensemble", "format_version": 1,
                        "members": ["fold_0", "fold_1"], "metadata": {"cv": {"k": 2}},
                        "postprocess": {"lcc": True, "min_volume": 5, "min_area": 0}}
    for name in ("fold_0", "fold_1"):
        assert {p.name for p in (out / name).iterdir()} == {"config.json", "model.safetensors"}
    ens = load_ensemble(out)
    assert torch.equal(ens(x), want)
    loaded = L.load_checkpoint(out)                      # an ensemble folder is a checkpoint
    assert isinstance(loaded, Ensemble) and torch.equal(loaded(x), want)
    assert loaded.sources == [str(out / "fold_0"), str(out / "fold_1")]
    assert recommended_postprocess(loaded) == PostProcess(lcc=True, min_volume=5)
    assert loaded.metadata == {"cv": {"k": 2}}


def test_save_from_folders_in_fp16(tmp_path):
    a = _unet(0).save_pretrained(tmp_path / "a", metadata={"fold": 0})
    b = _unet(1).save_pretrained(tmp_path / "b", metadata={"fold": 1})
    out = save_ensemble(tmp_path / "ens", [a, b], dtype=torch.float16)
    cfg = json.loads((out / "fold_1" / "config.json").read_text())
    assert cfg["weights_dtype"] == "float16" and cfg["metadata"] == {"fold": 1}
    assert read_manifest(out)["postprocess"] is None
    x = torch.rand(1, 3, 32, 32)
    full = L.load_models([a, b])
    assert torch.allclose(torch.sigmoid(load_ensemble(out)(x)), torch.sigmoid(full(x)), atol=2e-3)
    assert recommended_postprocess(full) is None


def test_load_models_one_or_several(tmp_path):
    a = _unet(0).save_pretrained(tmp_path / "a")
    b = _unet(1).save_pretrained(tmp_path / "b")
    one = L.load_models([a])
    assert not isinstance(one, Ensemble) and model_info.model_name(one) == "unet"
    assert not isinstance(L.load_models(a), Ensemble)
    both = L.load_models([a, b])
    assert isinstance(both, Ensemble) and both.sources == [str(a), str(b)]
    x = torch.rand(1, 3, 32, 32)
    pa, pb = (torch.sigmoid(L.load_checkpoint(p)(x)) for p in (a, b))
    assert torch.allclose(torch.sigmoid(both(x)), (pa + pb) / 2, atol=1e-6)
    ens = save_ensemble(tmp_path / "ens", [a, b])
    c = _unet(2).save_pretrained(tmp_path / "c")
    three = L.load_models([ens, c])                       # an ensemble folder adds its members
    assert len(three.members) == 3
    with pytest.raises(MambasegError, match="given twice"):
        L.load_models([a, tmp_path / "." / "a"])


def test_broken_ensemble_folders(tmp_path):
    a, b = _unet(0), _unet(1)
    out = save_ensemble(tmp_path / "ens", [a, b])
    manifest = out / "ensemble.json"
    good = manifest.read_text()
    (out / "fold_1" / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="fold_1"):
        L.load_checkpoint(out)
    save_ensemble(out, [a, b])
    for bad, what in [("{", "cannot read"), ('{"format": "x"}', "not a mambaseg ensemble"),
                      (good.replace('"fold_1"', '"../a"'), "must be a folder inside"),
                      (good.replace('"fold_1"', '"fold_9"'), "fold_9"),
                      (good.replace('"format_version": 1', '"format_version": 7'),
                       "format_version")]:
        manifest.write_text(bad)
        with pytest.raises(CheckpointError, match=what) as exc:
            L.load_checkpoint(out)
        assert str(out) in str(exc.value)
    cfg = json.loads(good)
    cfg["postprocess"] = {"lcc": False, "min_volume": 3}
    manifest.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="postprocess"):
        load_ensemble(out)
