"""Shipped weights, the `mambaseg models` command, ResNet ImageNet weights, SegFormer specifics."""
from __future__ import annotations

import argparse
import builtins
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mambaseg.data.io import read_mask
from mambaseg.errors import MambasegError
from mambaseg.inference.ensemble import Ensemble
from mambaseg.inference.loading import load_shipped
from mambaseg.inference.postprocess import PostProcess
from mambaseg.inference.predict import segment
from mambaseg import metrics
from mambaseg.models import (best_shipped, count_parameters, create_model, default_shipped,
                             describe_models, list_models, pretrained, shipped_models)


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    root = tmp_path / "weights"
    root.mkdir()
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", root)
    return root


def test_the_default_shipped_ensemble_loads_and_segments(sample_root):
    """The package's weights: each shipped folder is a valid checkpoint or ensemble, exactly one
    is the default, and that default (the 5-fold mambaseg_s ensemble) loads and segments a
    sample slice (Dice 0.947 against its mask on the CPU; the fold models saw this patient)."""
    shipped = shipped_models()
    for name, info in shipped.items():
        if info["kind"] == "ensemble":
            assert name.startswith(info["model_name"] + "_") and info["members"] > 1
            assert info["cv_dice"] is not None
        else:
            assert info["model_name"] == name and info["members"] == 1
    assert [n for n, info in shipped.items() if info["default"]] == ["mambaseg_s_cv5"]
    assert default_shipped() == "mambaseg_s_cv5"
    net = load_shipped("mambaseg_s_cv5")
    assert isinstance(net, Ensemble) and len(net.members) == 5 and not net.training
    assert {count_parameters(m) for m in net.members} == {838_081}
    assert all(len(m.encoders[-1][0].mixer.orders) == 1 for m in net.members)  # directions=1
    assert net.postprocess == PostProcess(lcc=True)
    assert shipped["ulvm_unet_v6_cv5"]["cv_dice"] < shipped["mambaseg_s_cv5"]["cv_dice"]
    flair = load_shipped("ulvm_unet_v6_flair_cv5")
    assert {m.in_channels for m in flair.members} == {1}
    # the default network's FLAIR-only version serves FLAIR input
    assert pretrained.shipped_for(1, "x") == "mambaseg_s_flair_cv5"
    flair = load_shipped("mambaseg_s_flair_cv5")
    assert {m.in_channels for m in flair.members} == {1} and len(flair.members) == 5
    assert {count_parameters(m) for m in flair.members} == {837_793}
    assert all(len(m.encoders[-1][0].mixer.orders) == 1 for m in flair.members)
    assert shipped["mambaseg_s_flair_cv5"]["channels"] == ("FLAIR",)
    image = sample_root / "kaggle_3m" / "TCGA_HT_8106_19970727" / "TCGA_HT_8106_19970727_11.tif"
    mask = segment(str(image), model=net, device="cpu")
    assert mask.shape == (256, 256) and mask.dtype == np.uint8
    assert metrics.dice(mask, read_mask(image.with_name(image.stem + "_mask.tif"))) > 0.9


def test_the_fast_ensemble_is_the_cross_validation_it_reports(sample_root):
    """mambaseg_s_fast_cv5 (one scan order, stride-2 stem) holds the fold models its
    cross-validation evaluated: its fold-0 member, stored in fp16, reproduces fold 0's saved
    test predictions (results/cv/mambaseg_s_o1_s2, made on the GPU from the fp32 weights) of
    the sample's three patients, all in fold 0's test part."""
    from mambaseg.data.dataset import load_arrays
    from mambaseg.data.layout import find_slices
    from mambaseg.inference.predictions import load_predictions
    from mambaseg.inference.runner import predict_probs

    cv = Path(__file__).resolve().parents[2] / "results" / "cv" / "mambaseg_s_o1_s2"
    info = shipped_models()["mambaseg_s_fast_cv5"]
    assert not info["default"] and info["model_kwargs"] == {"directions": 1, "stem_stride": 2}
    assert info["cv_dice"] == json.loads((cv / "summary.json").read_text())["dice_patient"]["mean"]
    net = load_shipped("mambaseg_s_fast_cv5")
    assert len(net.members) == 5 and {count_parameters(m) for m in net.members} == {838_081}
    slices = find_slices(sample_root)
    images, _ = load_arrays(slices, progress=False)
    mine = (predict_probs(net.members[0], images, device="cpu")[:, 0] > 0.5).numpy()
    saved = load_predictions(cv / "fold_0" / "predictions.npz")
    row = {r: i for i, r in enumerate(saved["rel"])}
    theirs = saved["masks"][[row[s.rel] for s in slices]].astype(bool)
    assert theirs.sum() > 5000  # the sample has tumour to agree on
    # fp16 storage moves a few boundary pixels (3e-6 of them); another fold's model, 2e-3
    assert (mine != theirs).mean() < 1e-4
    assert metrics.dice(mine, theirs) > 0.995


def test_shipped_models_empty(weights_dir):
    assert shipped_models() == {}
    assert best_shipped() is None
    with pytest.raises(MambasegError, match="no trained weights are shipped for model 'ulvm_unet' \\(shipped: none\\)"):
        load_shipped("ulvm_unet")


def test_shipped_models_scan_load_and_best(weights_dir):
    torch.manual_seed(0)
    for name, dice in (("ulvm_unet", 0.81), ("ulvm_unet_v2", 0.86), ("ulvm_unet_v3", None)):
        metadata = {"metrics": {"test": {"dice": dice, "iou": 0.7}}} if dice else {}
        create_model(name).save_pretrained(weights_dir / name, metadata=metadata, dtype=torch.float16)
    (weights_dir / "README.txt").write_text("not a model")
    (weights_dir / "empty").mkdir()
    shipped = shipped_models()
    assert sorted(shipped) == ["ulvm_unet", "ulvm_unet_v2", "ulvm_unet_v3"]
    assert shipped["ulvm_unet_v2"]["test_dice"] == 0.86
    assert shipped["ulvm_unet_v2"]["weights_dtype"] == "float16"
    assert shipped["ulvm_unet_v3"]["test_dice"] is None
    assert best_shipped() == "ulvm_unet_v2"
    model = load_shipped("ulvm_unet_v2")
    assert model.model_name == "ulvm_unet_v2" and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.checkpoint_config["metadata"]["metrics"]["test"]["dice"] == 0.86
    with pytest.raises(MambasegError, match="shipped: ulvm_unet, ulvm_unet_v2, ulvm_unet_v3"):
        load_shipped("unet")


def _tiny_unet(seed):
    torch.manual_seed(seed)
    return create_model("unet", features=(4, 8))


def _ensemble(root, name, cv_dice, default=None, seeds=(1, 2), postprocess=None, val=None):
    from mambaseg.inference.loading import save_ensemble

    meta = {"metrics": {"cv": {"dice_patient": cv_dice, "n_patients": 110,
                               "n_folds": len(seeds), "val_dice_patient": val}},
            "protocol": "crossval", "evaluated": f"results/cv/{name}/summary.json"}
    if default is not None:
        meta["default"] = default
    return save_ensemble(root / name, [_tiny_unet(s) for s in seeds], metadata=meta,
                         postprocess=postprocess, dtype=torch.float16)


def test_shipped_ensembles_and_the_default(weights_dir):
    from mambaseg.inference.loading import load_shipped_model

    create_model("ulvm_unet").save_pretrained(weights_dir / "ulvm_unet",
                                              metadata={"metrics": {"test": {"dice": 0.95}}})
    _ensemble(weights_dir, "unet_cv2", 0.80, default=True,
              postprocess=PostProcess(lcc=True, min_volume=500))
    _ensemble(weights_dir, "unet_cv3", 0.85, seeds=(3, 4, 5))
    shipped = shipped_models()
    assert sorted(shipped) == ["ulvm_unet", "unet_cv2", "unet_cv3"]
    info = shipped["unet_cv2"]
    assert info["kind"] == "ensemble" and info["model_name"] == "unet" and info["members"] == 2
    assert info["cv_dice"] == 0.80 and info["test_dice"] is None and info["default"] is True
    assert info["num_parameters"] == sum(p.numel() for p in _tiny_unet(0).parameters())
    assert info["weights_dtype"] == "float16"
    assert shipped["ulvm_unet"]["kind"] == "checkpoint" and shipped["ulvm_unet"]["cv_dice"] is None
    # the one marked default wins over a higher CV Dice and a higher test Dice
    assert default_shipped() == best_shipped() == "unet_cv2"
    ens = load_shipped("unet_cv2")
    assert isinstance(ens, Ensemble) and len(ens.members) == 2 and not ens.training
    assert ens.postprocess == PostProcess(lcc=True, min_volume=500)
    assert all(p.dtype == torch.float32 for p in ens.parameters())
    assert ens.metadata["metrics"]["cv"]["dice_patient"] == 0.80
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        want = sum(torch.sigmoid(m(x)) for m in ens.members) / 2
        torch.testing.assert_close(torch.sigmoid(ens(x)), want, atol=1e-5, rtol=0)
    assert isinstance(load_shipped_model(None), Ensemble)
    assert isinstance(load_shipped_model("unet_cv3"), Ensemble)
    # no flag: the highest CV Dice wins, over the higher test Dice of a single checkpoint
    manifest = json.loads((weights_dir / "unet_cv2" / "ensemble.json").read_text())
    manifest["metadata"]["default"] = False
    (weights_dir / "unet_cv2" / "ensemble.json").write_text(json.dumps(manifest))
    assert default_shipped() == "unet_cv3"
    assert len(load_shipped_model(None).members) == 3
    # no CV Dice anywhere: the highest test Dice, as before
    shutil.rmtree(weights_dir / "unet_cv2")
    shutil.rmtree(weights_dir / "unet_cv3")
    assert default_shipped() == "ulvm_unet"


def test_without_a_flag_the_validation_score_chooses_not_the_test_scores(weights_dir):
    """Shipped models are ranked by their validation score (patients carved out of the
    training folds); the out-of-fold and test Dice are test scores and decide only where no
    validation score is recorded."""
    _ensemble(weights_dir, "unet_cv2", 0.90, val=0.70)
    _ensemble(weights_dir, "unet_cv3", 0.80, val=0.75, seeds=(3, 4, 5))
    _ensemble(weights_dir, "unet_cv4", 0.95, seeds=(6, 7, 8, 9))      # no validation score
    shipped = shipped_models()
    assert shipped["unet_cv3"]["val_dice"] == 0.75 and shipped["unet_cv4"]["val_dice"] is None
    assert default_shipped() == "unet_cv3"
    assert pretrained.shipped_with(("pre-contrast", "FLAIR", "post-contrast")) == "unet_cv3"
    rows = {r["name"]: r for r in describe_models()}
    assert rows["unet_cv3"]["val_dice"] == 0.75
    from mambaseg.cli.models import format_table
    table = format_table(list(rows.values()))
    header = table.splitlines()[0]
    line = next(x for x in table.splitlines() if x.startswith("unet_cv3"))
    assert "VAL DICE" in header and "0.7500" in line and "0.8000" in line
    shutil.rmtree(weights_dir / "unet_cv2")
    shutil.rmtree(weights_dir / "unet_cv3")
    assert default_shipped() == "unet_cv4"                 # no validation score anywhere


def test_a_default_single_checkpoint_and_broken_ensembles(weights_dir):
    create_model("ulvm_unet").save_pretrained(
        weights_dir / "ulvm_unet", metadata={"metrics": {"test": {"dice": 0.5}}, "default": True})
    _ensemble(weights_dir, "unet_cv2", 0.9)
    assert default_shipped() == "ulvm_unet"
    shutil.rmtree(weights_dir / "unet_cv2" / "fold_1")
    (weights_dir / "bad").mkdir()
    (weights_dir / "bad" / "ensemble.json").write_text("{not json")
    with pytest.warns(UserWarning) as caught:
        assert sorted(shipped_models()) == ["ulvm_unet"]
    text = " ".join(str(w.message) for w in caught)
    assert "member 'fold_1'" in text and "unreadable ensemble.json" in text


def test_metric_lookup_accepts_common_layouts():
    assert pretrained.metric({"metadata": {"metrics": {"test": {"dice": 0.9}}}}) == 0.9
    assert pretrained.metric({"metadata": {"test_metrics": {"dice": 0.8}}}) == 0.8
    assert pretrained.metric({"metadata": {"test_dice": 0.7}}) == 0.7
    assert pretrained.metric({"metadata": {"metrics": {"test_dice": 0.6}}}) == 0.6
    assert pretrained.metric({"metadata": {}}) is None
    assert pretrained.metric({}) is None


def _run_cli(argv):
    from mambaseg.cli import models as cli_models

    parser = argparse.ArgumentParser(prog="mambaseg")
    cli_models.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_models_cli_table(weights_dir, capsys):
    create_model("ulvm_unet").save_pretrained(weights_dir / "ulvm_unet",
                                              metadata={"metrics": {"test": {"dice": 0.9012}}})
    assert _run_cli(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "FAMILY", "PARAMS"]
    row = next(line for line in lines if line.startswith("ulvm_unet* "))   # * the default
    assert "49,457" in row and "multiple of 32" in row and "shipped" in row and "0.9012" in row
    assert row.split()[-4:] == ["RGB", "0.9012", "-", "-"]  # CHANNELS, TEST, VAL, CV DICE
    assert "* default of predict, segment() and demo: ulvm_unet, test Dice 0.9012" in out
    row = next(line for line in lines if line.startswith("resnet50 "))
    assert "42,909,633" in row and "resnet" in row
    assert f"{len(list_models())} models, 1 with shipped trained weights" in out


def test_models_cli_json(weights_dir, capsys):
    assert _run_cli(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["ulvm_unet_v4"]["num_parameters"] == 1_135_309
    assert by_name["umamba_bot"]["size_multiple"] == 16 and by_name["umamba_bot"]["family"] == "umamba"
    assert by_name["segformer"]["input_size"] == 224
    assert all(r["weights_shipped"] is False and r["test_dice"] is None for r in rows)


def test_models_cli_lists_shipped_ensembles_and_the_default(weights_dir, capsys):
    create_model("ulvm_unet").save_pretrained(weights_dir / "ulvm_unet",
                                              metadata={"metrics": {"test": {"dice": 0.9012}}})
    _ensemble(weights_dir, "unet_cv2", 0.8312, default=True, val=0.8123)
    assert _run_cli(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].rstrip().endswith("TEST DICE  VAL DICE  CV DICE")
    names = [line.split()[0] for line in lines[1:len(list_models()) + 2]]
    assert names.index("unet_cv2*") == names.index("unet") + 1      # after its model's row
    row = next(line for line in lines if line.startswith("unet_cv2*"))
    params = sum(p.numel() for p in _tiny_unet(0).parameters())
    assert f"2 x {params:,}" in row and "shipped" in row and "0.8312 (2-fold ensemble)" in row
    assert row.split()[-4] == "0.8123"                                # VAL DICE
    assert row.split()[1] == "unet"                                  # the family
    row = next(line for line in lines if line.startswith("ulvm_unet "))
    assert "0.9012" in row and row.rstrip().endswith("-")
    assert f"{len(list_models())} models, 1 with shipped trained weights, 1 shipped ensemble" in out
    assert ("* default of predict, segment() and demo: unet_cv2, validation score 0.8123, OOF "
            "per-patient Dice 0.8312 over 110 patients (2-fold cross-validation, "
            "results/cv/unet_cv2)") in out
    assert _run_cli(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    ens = rows["unet_cv2"]
    assert ens["kind"] == "ensemble" and ens["members"] == 2 and ens["cv_dice"] == 0.8312
    assert ens["val_dice"] == 0.8123
    assert ens["default"] is True and ens["model_name"] == "unet" and ens["family"] == "unet"
    assert ens["num_parameters"] == params and ens["cv_folds"] == 2 and ens["cv_patients"] == 110
    assert ens["weights_path"] == str(weights_dir / "unet_cv2")
    assert rows["ulvm_unet"]["default"] is False and rows["ulvm_unet"]["cv_dice"] is None
    assert rows["ulvm_unet"]["kind"] == "model" and rows["ulvm_unet"]["members"] == 1
    assert rows["unet"]["weights_shipped"] is False and rows["unet"]["members"] is None


def test_models_cli_help_has_example(capsys):
    with pytest.raises(SystemExit):
        _run_cli(["models", "--help"])
    assert "example:\n  mambaseg models" in capsys.readouterr().out


def test_resnet_pretrained_needs_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(MambasegError, match="not in the torch hub cache") as info:
        create_model("resnet18", pretrained=True)
    msg = str(info.value)
    assert str(tmp_path / "hub") in msg and "IMAGENET1K_V1" in msg


def test_resnet_pretrained_loads_from_the_cache(tmp_path, monkeypatch):
    import torchvision

    from mambaseg.models.resnet import imagenet_weights_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    path, _ = imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), path)
    model = create_model("resnet18", pretrained=True)
    assert model.model_kwargs == {}
    torch.testing.assert_close(model.encoder.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    mono = create_model("resnet18", in_channels=1, pretrained=True)
    torch.testing.assert_close(mono.encoder.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))


@pytest.mark.parametrize("size", [224, 256])
def test_segformer_sizes(size):
    model = create_model("segformer").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, size, size)).shape == (1, 1, size, size)


def test_segformer_reads_both_transformers_layouts():
    from mambaseg.models.segformer_mit import rename_keys

    model = create_model("segformer_mit_b0")
    state = model.state_dict()
    legacy = rename_keys(state, "legacy")
    v5 = rename_keys(state, "v5")
    assert rename_keys(legacy, "v5") == v5 and rename_keys(v5, "legacy") == legacy
    assert any("encoder.block.0.0.attention.self.query" in k for k in legacy)
    assert any("decode_head.linear_c.0.proj" in k for k in legacy)
    assert any("stages.0.blocks.0.attention.q_proj" in k for k in v5)
    # whichever layout the installed transformers uses, both load
    for layout in (legacy, v5):
        assert model.adapt_state_dict(layout).keys() == state.keys()


def test_segformer_without_transformers_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(sys.modules, "transformers", raising=False)
    with pytest.raises(MambasegError, match=r"pip install 'mambaseg\[segformer\]'"):
        create_model("segformer_mit_b0")
    assert create_model("segformer").num_parameters() == 17_782_913  # the seed's: plain torch


def test_models_cli_shows_the_shipped_channels(weights_dir, capsys):
    create_model("ulvm_unet").save_pretrained(weights_dir / "ulvm_unet")
    create_model("ulvm_unet", in_channels=1).save_pretrained(
        weights_dir / "ulvm_unet_flair", metadata={"training": {"channels": ["FLAIR"]}})
    assert _run_cli(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[-8:-6] == ["WEIGHTS", "CHANNELS"]
    assert next(ln for ln in lines if ln.startswith("ulvm_unet_flair")).split()[-4] == "FLAIR"
    assert next(ln for ln in lines if ln.startswith("ulvm_unet ")).split()[-4] == "RGB"
    assert next(ln for ln in lines if ln.startswith("unet ")).split()[-4] == "-"
    assert "CHANNELS: what the shipped weights take: RGB, the LGG slices' pre-contrast, FLAIR" in out
    assert _run_cli(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ulvm_unet_flair"]["channels"] == ["FLAIR"]
    assert rows["ulvm_unet"]["channels"] == ["pre-contrast", "FLAIR", "post-contrast"]
    assert rows["unet"]["channels"] is None
