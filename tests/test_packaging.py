"""pyproject.toml's dependencies: the core and the ``onnx`` extra (``pip install 'mambaseg[onnx]'``,
for ``predict --onnx``) pull no PyTorch; ``torch`` brings it; ``all`` and ``test`` (what CI
installs) bring every extra."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
TORCH = {"torch", "torchvision"}


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def _names(reqs, extras: dict, seen=()) -> set[str]:
    """Distribution names (lower case) a list of requirements installs, self-references such as
    ``mambaseg[torch]`` expanded through ``extras``."""
    out = set()
    for req in reqs:
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", req)
        name, wanted = m.group(1).lower(), m.group(2)
        if name != "mambaseg":
            out.add(name)
            continue
        for extra in (e.strip() for e in (wanted or "").split(",") if e.strip()):
            assert extra in extras, f"{PYPROJECT}: {req!r} names an unknown extra {extra!r}"
            if extra not in seen:
                out |= _names(extras[extra], extras, (*seen, extra))
    return out


def test_core_and_onnx_extra_pull_no_torch():
    project = _project()
    extras = project["optional-dependencies"]
    core = _names(project["dependencies"], extras)
    assert not core & TORCH, f"{PYPROJECT}: core dependencies include {core & TORCH}"
    onnx = core | _names(extras["onnx"], extras)
    assert not onnx & TORCH, f"{PYPROJECT}: the onnx extra pulls {onnx & TORCH}"
    # what predict --onnx imports (onnx_runtime, data.io, postprocess, progress)
    assert {"numpy", "pillow", "tifffile", "scipy", "tqdm", "onnxruntime"} <= onnx


def test_torch_all_and_test_extras_cover_everything():
    extras = _project()["optional-dependencies"]
    torch = _names(extras["torch"], extras)
    assert TORCH | {"safetensors", "matplotlib"} <= torch
    every = set().union(*(_names(extras[e], extras)
                          for e in ("torch", "onnx", "export", "nifti", "segformer")))
    assert every <= _names(extras["all"], extras)
    test = _names(extras["test"], extras)
    assert every | {"pytest", "pytest-xdist", "scikit-learn"} <= test, \
        f"{PYPROJECT}: the test extra lacks {every - test}"
    assert TORCH | {"onnx"} <= _names(extras["export"], extras)
