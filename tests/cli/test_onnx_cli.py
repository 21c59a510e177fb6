"""`mambaseg export` and `mambaseg predict --onnx` through mambaseg.cli.main: the masks of the
bundled sample are those of PyTorch's predict, the --onnx path never imports torch, and the
user errors (exit status 2, nothing written)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from mambaseg.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "lgg-sample"
#: one member of the default shipped model (the 5-fold ensemble of ulvm_unet_v6)
FOLD = REPO / "src" / "mambaseg" / "weights" / "ulvm_unet_v6_cv5" / "fold_0"

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript"),
              pytest.mark.filterwarnings("ignore:The feature will be removed")]


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def torch_free(*args, cwd=REPO) -> subprocess.CompletedProcess:
    """``mambaseg ARGS`` in a fresh interpreter where ``import torch`` fails."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from mambaseg.cli import main\n"
            f"raise SystemExit(main({[str(a) for a in args]!r}))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def fold_onnx(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "fold_0.onnx"
    assert main(["export", "--checkpoint", str(FOLD), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    """An untrained ulvm_unet checkpoint (quick to export)."""
    import torch

    from mambaseg.models import create_model

    torch.manual_seed(0)
    return create_model("ulvm_unet").save_pretrained(tmp_path_factory.mktemp("ckpt") / "ulvm")


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): np.array(Image.open(p))
            for p in sorted(folder.rglob("*_mask.png"))}


# ----------------------------------------------------------------------------- the sample

def _compare_predictions(torch_dir: Path, onnx_dir: Path) -> list[tuple[str, int]]:
    """Masks of both runs (same files); returns (mask, differing pixels) where they differ, and
    checks every differing pixel is one where PyTorch's probability rounds to 127 or 128 of
    255 (within 0.004 of the threshold) and the probability PNGs differ by at most 1."""
    want, got = _masks(torch_dir), _masks(onnx_dir)
    assert len(want) == 62 and list(got) == list(want)
    differ = []
    for name in want:
        prob = name.replace("_mask.png", "_prob.png")
        a = np.array(Image.open(torch_dir / prob)).astype(int)
        b = np.array(Image.open(onnx_dir / prob)).astype(int)
        assert np.abs(a - b).max() <= 1, prob
        flip = got[name] != want[name]
        if flip.any():
            assert set(np.unique(a[flip])) <= {127, 128}, name
            differ.append((name, int(flip.sum())))
    return differ


def _predict_both(tmp_path, capsys, onnx_file, *args):
    code, _, err = run(capsys, "predict", "-i", SAMPLE, "-o", tmp_path / "torch", "--device",
                       "cpu", "--no-progress", "--probabilities", *args)
    assert code == 0, err
    # --onnx where torch cannot be imported
    done = torch_free("predict", "-i", SAMPLE, "-o", tmp_path / "onnx", "--onnx", onnx_file,
                      "--no-progress", "--probabilities",
                      *[a for a in args if a != "--checkpoint" and a != FOLD])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "Dice against the 62 ground-truth mask(s)" in done.stdout
    st = json.loads((tmp_path / "torch" / "summary.json").read_text())
    so = json.loads((tmp_path / "onnx" / "summary.json").read_text())
    assert so["counts"] == st["counts"] and so["postprocess"] == st["postprocess"]
    assert so["checkpoint"] == f"onnx:{onnx_file}"
    assert so["device"] == "onnxruntime:CPUExecutionProvider"
    assert so["model"] == st["model"] and st["model"] in ("ulvm_unet_v6", "mambaseg_s")
    return st, so


def test_sample_masks_match_pytorch_predict_one_member(tmp_path, capsys, fold_onnx):
    """fold_0 of the default shipped ensemble on the 62 slices of 256x256 (no resize), with
    --lcc: the masks of PyTorch's predict and of predict --onnx (torch made unimportable) are
    identical but for pixels at the threshold. Two pixels (probabilities 0.50002 and 0.50009)
    flip, as they do within PyTorch between batch sizes 1 and 8: this trained model's logits
    move by up to ~1e-2 (of up to 46) with the batch size or thread count in PyTorch itself."""
    st, so = _predict_both(tmp_path, capsys, fold_onnx, "--checkpoint", FOLD, "--lcc")
    assert so["postprocess"] == {"lcc": True, "min_volume": 0, "min_area": 0}
    differ = _compare_predictions(tmp_path / "torch", tmp_path / "onnx")
    assert sum(n for _, n in differ) <= 4, differ
    assert abs(so["dice"]["pooled"] - st["dice"]["pooled"]) < 1e-4


@pytest.mark.slow
def test_sample_masks_identical_for_the_default_shipped_model(tmp_path, capsys):
    """The default shipped model (the 5-fold ensemble of mambaseg_s, one graph) exported with
    `mambaseg export --model` and run by predict --onnx: the same 62 masks as predict (its
    recommended 3-D largest-component post-processing included). About 90 s on 2 cores."""
    from mambaseg.models.pretrained import default_shipped

    name = default_shipped()
    assert name == "mambaseg_s_cv5"
    out = tmp_path / f"{name}.onnx"
    assert main(["export", "--model", name, "-o", str(out), "--no-check"]) == 0
    st, so = _predict_both(tmp_path, capsys, out)
    assert so["model"] == "mambaseg_s"
    assert so["ensemble_members"] == st["ensemble_members"] == 5
    assert so["postprocess_source"] == st["postprocess_source"] == "checkpoint"
    assert _compare_predictions(tmp_path / "torch", tmp_path / "onnx") == []
    assert so["dice"] == st["dice"]


def test_export_prints_what_the_graph_takes(fold_onnx):
    import onnxruntime as ort

    meta = ort.InferenceSession(str(fold_onnx), providers=["CPUExecutionProvider"]) \
        .get_modelmeta().custom_metadata_map
    assert meta["format"] == "mambaseg-onnx" and meta["model_name"] == "ulvm_unet_v6"
    assert meta["source"] == str(FOLD) and meta["members"] == "1"
    assert json.loads(meta["channels"]) == ["pre-contrast", "FLAIR", "post-contrast"]
    assert json.loads(meta["input_size"]) == 256 and meta["size_multiple"] == "32"
    assert int(json.loads(meta["max_pixels"])) >= 4096 * 4096


def test_export_cli_output(tmp_path, capsys, small_ckpt):
    out = tmp_path / "sub" / "m.onnx"
    code, stdout, _ = run(capsys, "export", "--checkpoint", small_ckpt, "-o", out, "--fp16")
    assert code == 0 and out.is_file()
    assert f"exported ulvm_unet from {small_ckpt} to {out}" in stdout
    assert "float16 weights" in stdout and "checked: onnxruntime's probabilities match" in stdout
    assert "height and width multiples of 32" in stdout and "'logits'" in stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]


def test_import_mambaseg_and_the_parser_without_torch():
    code = ("import sys\n"
            "import mambaseg, mambaseg.inference.onnx_runtime, mambaseg.inference.postprocess\n"
            "from mambaseg.cli import build_parser\n"
            "build_parser().parse_args(['predict', '-i', 'x', '-o', 'y', '--onnx', 'm.onnx'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr


def test_help_and_torch_commands_without_torch(tmp_path):
    """Without torch: --help works; a command that needs PyTorch fails with one line naming
    the extra to install, exit status 2, no traceback, nothing written; so does the Python
    API's torch-based names."""
    done = torch_free("--help")
    assert done.returncode == 0, done.stderr
    assert "predict" in done.stdout and "train" in done.stdout
    for args, extra in [(["train", "--model", "ulvm_unet", "-o", tmp_path / "run"], "torch"),
                        (["predict", "-i", SAMPLE, "-o", tmp_path / "pred"], "torch"),
                        (["export", "--model", "ulvm_unet_v6", "-o", tmp_path / "m.onnx"],
                         "export")]:
        done = torch_free(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert f"mambaseg {args[0]}: error: this command needs PyTorch" in done.stderr
        assert f"pip install 'mambaseg[{extra}]'" in done.stderr
    assert list(tmp_path.iterdir()) == []
    code = ("import sys; sys.modules['torch'] = None\n"
            "import mambaseg\n"
            "try:\n    mambaseg.create_model\n"
            "except ModuleNotFoundError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.stdout.strip() == ("mambaseg.create_model needs PyTorch, which is not installed: "
                                   "pip install 'mambaseg[torch]'"), done.stderr


def test_compare_defaults_equal_the_metrics_constants():
    """cli/compare.py spells mambaseg.metrics' bootstrap defaults out (building the parser
    imports no numpy)."""
    from mambaseg.cli import build_parser
    from mambaseg.metrics import BOOT_SEED, N_BOOT

    args = build_parser().parse_args(["compare", "a", "b"])
    assert (args.n_boot, args.seed) == (N_BOOT, BOOT_SEED)


# ----------------------------------------------------------------------------- user errors

def test_export_errors(tmp_path, capsys, small_ckpt):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep")
    code, _, err = run(capsys, "export", "--checkpoint", small_ckpt, "-o", out)
    assert code == 2 and "already exists; pass --overwrite" in err
    assert out.read_bytes() == b"keep"
    out.unlink()
    code, _, err = run(capsys, "export", "--model", "unet", "-o", out)
    assert code == 2 and "no pretrained weights are shipped for 'unet'" in err
    assert "--checkpoint" in err
    code, _, err = run(capsys, "export", "--checkpoint", small_ckpt, "-o", out, "--opset", "10")
    assert code == 2 and "opset 10 is too old" in err and "needs opset 11 or newer" in err
    assert "Torch IR graph" not in err
    code, _, err = run(capsys, "export", "--checkpoint", tmp_path / "missing", "-o", out)
    assert code == 2 and "does not exist" in err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as exc:
        main(["export", "-o", str(out)])               # --model or --checkpoint is required
    assert exc.value.code == 2


def test_predict_onnx_errors(tmp_path, capsys):
    import torch

    img = SAMPLE / "kaggle_3m"
    plain = tmp_path / "plain.onnx"
    with torch.no_grad():
        torch.onnx.export(torch.nn.Conv2d(3, 1, 1), (torch.rand(1, 3, 8, 8),), str(plain),
                          dynamo=False, input_names=["image"], output_names=["logits"])
    done = torch_free("predict", "-i", img, "-o", tmp_path / "out", "--onnx", plain)
    assert done.returncode == 2, done.stderr
    assert "has no mambaseg metadata" in done.stderr and "mambaseg export" in done.stderr
    assert "Traceback" not in done.stderr
    code, _, err = run(capsys, "predict", "-i", img, "-o", tmp_path / "out", "--onnx",
                       tmp_path / "missing.onnx")
    assert code == 2 and "ONNX file not found" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exc:
        main(["predict", "-i", str(img), "-o", str(tmp_path / "out"), "--onnx", str(plain),
              "--model", "ulvm_unet"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_predict_onnx_single_image_other_size(tmp_path, capsys, small_ckpt):
    """A 300 x 200 RGBA PNG: converted (note), resized to the training scale and back; the
    mask has the image's size."""
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(small_ckpt), "-o", str(out), "--no-check"]) == 0
    rng = np.random.default_rng(0)
    img = tmp_path / "in" / "slice.png"
    img.parent.mkdir()
    Image.fromarray(rng.integers(0, 256, (300, 200, 4), dtype=np.uint8), "RGBA").save(img)
    capsys.readouterr()
    code, stdout, err = run(capsys, "predict", "-i", img, "-o", tmp_path / "pred", "--onnx", out,
                            "--overlay")
    assert code == 0, err
    mask = np.array(Image.open(tmp_path / "pred" / "slice_mask.png"))
    assert mask.shape == (300, 200) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "pred" / "slice_overlay.png").is_file()
    assert "alpha channel dropped" in err and "slice_mask.png" in stdout
