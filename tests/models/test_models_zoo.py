"""Every registered model: parameter count, forward, backward, save/load, one input channel."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mambaseg.errors import MambasegError
from mambaseg.models import count_parameters, create_model, from_pretrained, list_models
from mambaseg.models.umamba import DEEP_SUPERVISION_PARAMS

#: parameter counts of the seed's classes (lxaw/mamba-tumor-seg), 3 input channels, 1 class
SEED_PARAMS = {
    "unet": 7_765_985,
    "resnet18": 13_930_497,
    "resnet50": 42_909_633,
    "segformer": 17_782_913,
    "umamba_bot": 9_813_700,
    "umamba_bot_pp": 10_076_356,
    "ulvm_unet": 49_457,
    "ulvm_unet_v1": 217_165,
    "ulvm_unet_v2": 42_737,
    "ulvm_unet_v3": 176_453,
    "ulvm_unet_v4": 1_135_309,
    "ulvm_unet_v5": 703_885,
    "ulvm_unet_v6": 769_677,
}

#: our own models (mambaseg.models.mambaseg_net)
OWN_PARAMS = {"mambaseg_s": 838_081, "mambaseg_t": 42_401}
#: models built on a library, beside the seed's (segformer_mit_b0: transformers' SegFormer, MLP
#: ratios 4-4-4-2; the seed's hand-written network is `segformer`)
LIBRARY_PARAMS = {"segformer_mit_b0": 17_597_057}
EXPECTED_PARAMS = {**SEED_PARAMS, **OWN_PARAMS, **LIBRARY_PARAMS}
#: models whose count may differ from the reference: relative tolerance
LIBRARY_TOLERANCE: dict[str, float] = {}


def test_every_registered_model_has_a_reference_count():
    assert sorted(EXPECTED_PARAMS) == list_models()


def _input_size(model) -> int:
    return 64 if model.is_valid_size(64, 64) else model.smallest_size


@pytest.mark.parametrize("name", list_models())
def test_model(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name)
    assert model.model_name == name

    # parameter count: exact (or within the library tolerance), and the cheap meta-device count agrees
    n_params = sum(p.numel() for p in model.parameters())
    assert count_parameters(name) == n_params
    if name in LIBRARY_TOLERANCE:
        assert abs(n_params - EXPECTED_PARAMS[name]) <= LIBRARY_TOLERANCE[name] * EXPECTED_PARAMS[name], n_params
    else:
        assert n_params == EXPECTED_PARAMS[name]

    # forward: finite logits of the input's size
    size = _input_size(model)
    x = torch.rand(2, 3, size, size)
    model.train()
    logits = model(x)
    assert logits.shape == (2, 1, size, size)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()

    # backward: every parameter gets a finite gradient (U-Mamba's deep-supervision layers, which
    # the plain forward does not use, are trained through the deep-supervision outputs)
    target = (torch.rand_like(logits) > 0.5).float()
    loss = F.binary_cross_entropy_with_logits(logits, target)
    if hasattr(model, "deep_supervision"):
        model.deep_supervision = True
        outputs = model(x)
        assert [o.shape[-1] for o in outputs] == [size // 2 ** k for k in range(len(outputs))]
        assert torch.equal(outputs[0], logits)  # the full-resolution output is the plain one
        loss = loss + sum(o.float().mean() for o in outputs[1:])
        model.deep_supervision = False
    loss.backward()
    no_grad = [k for k, p in model.named_parameters() if p.grad is None]
    not_finite = [k for k, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert not not_finite, f"parameters with non-finite gradient: {not_finite[:5]}"

    # save -> load gives identical outputs (eval mode)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    model.save_pretrained(tmp_path / "ckpt", metadata={"metrics": {"test": {"dice": 0.5}}})
    loaded = from_pretrained(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.model_name == name
    assert not loaded.training
    assert loaded.checkpoint_config["num_parameters"] == n_params
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)

    # one input channel
    mono = create_model(name, in_channels=1).eval()
    with torch.no_grad():
        out = mono(torch.rand(1, 1, size, size))
    assert out.shape == (1, 1, size, size) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["umamba_bot", "umamba_bot_pp"])
def test_umamba_plain_forward_leaves_only_the_deep_supervision_layers_untrained(name):
    model = create_model(name)
    x = torch.rand(1, 3, 64, 64)
    model(x).mean().backward()
    idle = [(k, p.numel()) for k, p in model.named_parameters() if p.grad is None]
    assert all(k.startswith("decoder.seg_layers.") for k, _ in idle)
    assert sum(n for _, n in idle) == DEEP_SUPERVISION_PARAMS == 451


# ----------------------------------------------------------------------------- SegFormer

# The seed's SegFormer (lxaw/mamba-tumor-seg models/segformer.py, after F. S. Zuppichini's
# SegFormer), copied class by class; einops' rearrange written as permute / flatten.
_nn = torch.nn


class _SeedLayerNorm2d(_nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _SeedOverlapPatchMerging(_nn.Sequential):
    def __init__(self, in_channels, out_channels, patch_size, overlap_size):
        super().__init__(_nn.Conv2d(in_channels, out_channels, kernel_size=patch_size, stride=overlap_size,
                                    padding=patch_size // 2, bias=False),
                         _SeedLayerNorm2d(out_channels))


class _SeedEfficientMultiHeadAttention(_nn.Module):
    def __init__(self, channels, reduction_ratio=1, num_heads=8):
        super().__init__()
        self.reducer = _nn.Sequential(
            _nn.Conv2d(channels, channels, kernel_size=reduction_ratio, stride=reduction_ratio),
            _SeedLayerNorm2d(channels))
        self.att = _nn.MultiheadAttention(channels, num_heads=num_heads, batch_first=True)

    def forward(self, x):
        _, _, h, w = x.shape
        reduced_x = self.reducer(x).flatten(2).transpose(1, 2)
        x = x.flatten(2).transpose(1, 2)
        out = self.att(query=x, key=reduced_x, value=reduced_x)[0]
        return out.transpose(1, 2).reshape(out.shape[0], -1, h, w)


class _SeedMixMLP(_nn.Sequential):
    def __init__(self, channels, expansion=4):
        super().__init__(_nn.Conv2d(channels, channels, kernel_size=1),
                         _nn.Conv2d(channels, channels * expansion, kernel_size=3, groups=channels, padding=1),
                         _nn.GELU(),
                         _nn.Conv2d(channels * expansion, channels, kernel_size=1))


class _SeedResidualAdd(_nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, **kwargs):
        return x + self.fn(x, **kwargs)


class _SeedEncoderBlock(_nn.Sequential):
    def __init__(self, channels, reduction_ratio=1, num_heads=8, mlp_expansion=4, drop_path_prob=0.0):
        from torchvision.ops import StochasticDepth

        super().__init__(
            _SeedResidualAdd(_nn.Sequential(_SeedLayerNorm2d(channels),
                                            _SeedEfficientMultiHeadAttention(channels, reduction_ratio, num_heads))),
            _SeedResidualAdd(_nn.Sequential(_SeedLayerNorm2d(channels), _SeedMixMLP(channels, expansion=mlp_expansion),
                                            StochasticDepth(p=drop_path_prob, mode="batch"))))


class _SeedEncoderStage(_nn.Sequential):
    def __init__(self, in_channels, out_channels, patch_size, overlap_size, drop_probs, depth=2,
                 reduction_ratio=1, num_heads=8, mlp_expansion=4):
        super().__init__()
        self.overlap_patch_merge = _SeedOverlapPatchMerging(in_channels, out_channels, patch_size, overlap_size)
        self.blocks = _nn.Sequential(*[_SeedEncoderBlock(out_channels, reduction_ratio, num_heads, mlp_expansion,
                                                         drop_probs[i]) for i in range(depth)])
        self.norm = _SeedLayerNorm2d(out_channels)


def _seed_chunks(data, sizes):
    curr = 0
    for size in sizes:
        yield data[curr: curr + size]
        curr += size


class _SeedEncoder(_nn.Module):
    def __init__(self, in_channels, widths, depths, all_num_heads, patch_sizes, overlap_sizes,
                 reduction_ratios, mlp_expansions, drop_prob=0.0):
        super().__init__()
        drop_probs = [x.item() for x in torch.linspace(0, drop_prob, sum(depths))]
        self.stages = _nn.ModuleList([_SeedEncoderStage(*args) for args in zip(
            [in_channels, *widths], widths, patch_sizes, overlap_sizes, _seed_chunks(drop_probs, sizes=depths),
            depths, reduction_ratios, all_num_heads, mlp_expansions)])

    def forward(self, x):
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class _SeedDecoderBlock(_nn.Sequential):
    def __init__(self, in_channels, out_channels, scale_factor=2):
        super().__init__(_nn.UpsamplingBilinear2d(scale_factor=scale_factor),
                         _nn.Conv2d(in_channels, out_channels, kernel_size=1))


class _SeedDecoder(_nn.Module):
    def __init__(self, out_channels, widths, scale_factors):
        super().__init__()
        self.stages = _nn.ModuleList([_SeedDecoderBlock(c, out_channels, s) for c, s in zip(widths, scale_factors)])

    def forward(self, features):
        return [stage(feature) for feature, stage in zip(features, self.stages)]


class _SeedSegmentationHead(_nn.Module):
    def __init__(self, channels, num_classes, num_features=4):
        super().__init__()
        self.fuse = _nn.Sequential(_nn.Conv2d(channels * num_features, channels, kernel_size=1, bias=False),
                                   _nn.ReLU(), _nn.BatchNorm2d(channels))
        self.predict = _nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features):
        return self.predict(self.fuse(torch.cat(features, dim=1)))


class _SeedSegFormer(_nn.Module):
    def __init__(self, in_channels, widths, depths, all_num_heads, patch_sizes, overlap_sizes, reduction_ratios,
                 mlp_expansions, decoder_channels, scale_factors, num_classes, drop_prob=0.0):
        super().__init__()
        self.encoder = _SeedEncoder(in_channels, widths, depths, all_num_heads, patch_sizes, overlap_sizes,
                                    reduction_ratios, mlp_expansions, drop_prob)
        self.decoder = _SeedDecoder(decoder_channels, widths[::-1], scale_factors)
        self.head = _SeedSegmentationHead(decoder_channels, num_classes, num_features=len(widths))

    def forward(self, x):
        features = self.encoder(x)
        features = self.decoder(features[::-1])
        return self.head(features)


def _seed_segformer(in_channels=3, num_classes=1):
    """As the seed's load_data_model_and_weights builds it."""
    return _SeedSegFormer(in_channels=in_channels, widths=[64, 128, 256, 512], depths=[3, 4, 6, 3],
                          all_num_heads=[1, 2, 4, 8], patch_sizes=[7, 3, 3, 3], overlap_sizes=[4, 2, 2, 2],
                          reduction_ratios=[8, 4, 2, 1], mlp_expansions=[4, 4, 4, 4], decoder_channels=256,
                          scale_factors=[8, 4, 2, 1], num_classes=num_classes)


#: seed parameter names -> ours (decoder stage k of the seed projects encoder stage 3 - k)
_SEED_TO_OURS = [
    (r"^encoder\.stages\.(\d)\.overlap_patch_merge\.0\.", r"stages.\1.embed."),
    (r"^encoder\.stages\.(\d)\.overlap_patch_merge\.1\.", r"stages.\1.embed_norm."),
    (r"^encoder\.stages\.(\d)\.blocks\.(\d)\.0\.fn\.0\.", r"stages.\1.blocks.\2.norm1."),
    (r"^encoder\.stages\.(\d)\.blocks\.(\d)\.0\.fn\.1\.reducer\.0\.", r"stages.\1.blocks.\2.attn.reduce."),
    (r"^encoder\.stages\.(\d)\.blocks\.(\d)\.0\.fn\.1\.reducer\.1\.", r"stages.\1.blocks.\2.attn.reduce_norm."),
    (r"^encoder\.stages\.(\d)\.blocks\.(\d)\.0\.fn\.1\.att\.in_proj_", r"stages.\1.blocks.\2.attn.qkv."),
    (r"^encoder\.stages\.(\d)\.blocks\.(\d)\.0\.fn\.1\.att\.out_proj\.", r"stages.\1.blocks.\2.attn.proj."),
    (r"^encoder\.stages\.(\d)\.blocks\.(\d)\.1\.fn\.0\.", r"stages.\1.blocks.\2.norm2."),
    (r"^encoder\.stages\.(\d)\.blocks\.(\d)\.1\.fn\.1\.0\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^encoder\.stages\.(\d)\.blocks\.(\d)\.1\.fn\.1\.1\.", r"stages.\1.blocks.\2.mlp.dwconv."),
    (r"^encoder\.stages\.(\d)\.blocks\.(\d)\.1\.fn\.1\.3\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^encoder\.stages\.(\d)\.norm\.", r"stages.\1.norm."),
    (r"^decoder\.stages\.(\d)\.1\.", lambda m: f"proj.{3 - int(m.group(1))}."),
    (r"^head\.fuse\.0\.", "fuse."),
    (r"^head\.fuse\.2\.", "fuse_norm."),
    (r"^head\.predict\.", "head."),
]


def _seed_to_ours(state: dict) -> dict:
    import re

    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _SEED_TO_OURS:
            new = re.sub(pattern, repl, new)
        assert new != key, key
        out[new] = value
    return out


def test_segformer_is_the_seeds_network():
    """Seed weights (every parameter and BatchNorm statistic perturbed) mapped into ours give the
    seed's logits, upsampled as its training loop does, in float64; training mode too."""
    torch.manual_seed(0)
    seed = _seed_segformer()
    assert sum(p.numel() for p in seed.parameters()) == SEED_PARAMS["segformer"] == 17_782_913
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in [*seed.parameters(), seed.head.fuse[2].running_mean]:
            t.add_(0.1 * torch.randn(t.shape, generator=g))
        seed.head.fuse[2].running_var.uniform_(0.5, 2.0, generator=g)
    ours = create_model("segformer")
    state = _seed_to_ours(seed.state_dict())
    assert state.keys() == ours.state_dict().keys()
    ours.load_state_dict(state, strict=True)
    seed, ours = seed.double(), ours.double()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64, generator=g)
    for train in (False, True):
        seed.train(train), ours.train(train)
        with torch.no_grad():
            expected = F.interpolate(seed(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
            torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["segformer", "segformer_mit_b0"])
def test_segformer_sizes_and_input_checks(name):
    from mambaseg.errors import MambasegError

    model = create_model(name).eval()
    assert (model.input_size, model.size_multiple, model.smallest_size) == (224, 32, 32)
    with torch.no_grad():
        for h, w in [(224, 224), (96, 160)]:
            assert model(torch.rand(1, 3, h, w)).shape == (1, 1, h, w)
    with pytest.raises(MambasegError, match="nearest valid size is 224x224"):
        model(torch.rand(1, 3, 220, 220))


def test_segformer_refuses_transformers_weights_with_the_new_name(tmp_path):
    """A checkpoint of the transformers-based SegFormer saved as 'segformer' (before the seed's
    network took that name) is refused with the fix; renamed, it loads."""
    import json

    from mambaseg.errors import CheckpointError

    create_model("segformer_mit_b0").save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    (tmp_path / "old" / "config.json").write_text(json.dumps({**config, "model_name": "segformer"}))
    with pytest.raises(CheckpointError, match="segformer_mit_b0"):
        from_pretrained(tmp_path / "old")
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    assert from_pretrained(tmp_path / "old").model_name == "segformer_mit_b0"


def test_mambaseg_stem_stride_two_works_at_half_resolution():
    """stem_stride=2: the same parameters, every level at half the resolution, and the logits
    the bilinear x2 upsampling of the head's half-resolution output."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    one = create_model("mambaseg_t", directions=1)
    two = create_model("mambaseg_t", directions=1, stem_stride=2)
    assert count_parameters(two) == count_parameters(one) == OWN_PARAMS["mambaseg_t"]
    assert (one.size_multiple, two.size_multiple) == (8, 16)
    two.load_state_dict(one.state_dict())  # the same weights fit
    two.eval()
    seen = {}
    two.head.register_forward_hook(lambda mod, inp, out: seen.update(head=out))
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        y = two(x)
    assert seen["head"].shape == (2, 1, 24, 32) and y.shape == (2, 1, 48, 64)
    torch.testing.assert_close(y, F.interpolate(seen["head"], scale_factor=2, mode="bilinear",
                                                align_corners=False))
    with pytest.raises(MambasegError, match="multiples of 16"):
        two(torch.rand(1, 3, 40, 40))
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2"):
        create_model("mambaseg_t", stem_stride=4)
