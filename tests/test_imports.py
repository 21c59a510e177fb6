"""The package's import graph, read with ``ast`` from every import statement (also inside
functions, except in ``cli/``, whose subcommands import lazily for a fast ``--help``):

- no import cycle among mambaseg modules;
- layers: a module imports only modules of its own or a lower layer (training never imports
  from a higher layer, inference never from training, models never from inference...);
- imports of mambaseg modules sit at the top of modules outside ``cli/``, but for the few
  exceptions listed in :data:`LAZY` with their reason;
- ``__version__`` comes from ``mambaseg._version``, never from the package root;
- the kernel modules of ``mambaseg.ops.triton`` import only their shared helpers.
"""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "mambaseg"

#: function-local imports of mambaseg modules outside cli/, and why they are lazy
LAZY = {
    # the public names of `import mambaseg`, which must import no torch (--help, predict --onnx)
    ("mambaseg", "mambaseg.models"): "public API, torch-free package root",
    ("mambaseg", "mambaseg.inference.predict"): "public API, torch-free package root",
    ("mambaseg", "mambaseg.inference.volumes"): "public API, torch-free package root",
    # data's torch-based names (the rest of mambaseg.data imports without torch)
    ("mambaseg.data", "mambaseg.data.dataset"): "torch-free mambaseg.data",
    # triton is an optional extra
    ("mambaseg.ops.selective_scan", "mambaseg.ops.triton"): "optional extra (triton)",
    ("mambaseg.ops.selective_scan", "mambaseg.ops.triton.launch"): "optional extra (triton)",
}

#: lowest layer first; a module may import from its own layer and the layers before it
LAYERS = (
    ("mambaseg._version", "mambaseg.errors", "mambaseg.files", "mambaseg.progress",
     "mambaseg.metrics", "mambaseg.compare", "mambaseg.device"),
    ("mambaseg.data",),
    ("mambaseg.ops",),
    ("mambaseg.nn",),
    ("mambaseg.models",),
    ("mambaseg.inference",),
    ("mambaseg.training",),
    ("mambaseg.report",),
    ("mambaseg.cli", "mambaseg.__main__"),
    ("mambaseg",),
)


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = ("mambaseg",) + p.relative_to(PKG).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def _imports(path: Path, is_pkg: bool, name: str, mods) -> list[tuple[str, bool, int]]:
    """``(imported mambaseg module, inside a function?, line)`` for every import of ``path``."""
    pkg = name if is_pkg else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    local = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name in mods]
        elif isinstance(node, ast.ImportFrom):
            base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
            mod = ".".join(base + [node.module] if node.module else base)
            for a in node.names:
                target = f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod
                if target in mods and target != name:
                    targets.append(target)
        found += [(t, id(node) in local, node.lineno) for t in targets]
    return found


def _graph(mods=None) -> dict[str, set[str]]:
    """{module: the mambaseg modules it imports} (function-local imports in cli/ left out)."""
    mods = mods or _modules()
    edges = {m: set() for m in mods}
    for m, (path, is_pkg) in mods.items():
        cli = m == "mambaseg.cli" or m.startswith("mambaseg.cli.")
        edges[m].update(t for t, lazy, _ in _imports(path, is_pkg, m, mods) if not (cli and lazy))
    return edges


def _cycle(edges):
    """One import cycle as a list of modules, or None."""
    state, path = {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == "open":
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = "done"
        path.pop()
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def _layer(module: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if module == n or module.startswith(n + "."):
                if best is None or len(n) > best[1]:
                    best = (i, len(n))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def test_no_import_cycle():
    edges = _graph()
    assert "mambaseg.ops.triton.launch" in edges and "mambaseg.training.crossval" in edges
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))


def test_cycle_detection_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{m} -> {t}" for m, targets in _graph().items() for t in sorted(targets)
              if _layer(t) > _layer(m)]
    assert upward == [], "\n".join(upward)


def test_imports_at_the_top_outside_cli():
    mods = _modules()
    lazy = []
    for m, (path, is_pkg) in mods.items():
        if m == "mambaseg.cli" or m.startswith("mambaseg.cli."):
            continue
        lazy += [(m, t, line) for t, inside, line in _imports(path, is_pkg, m, mods)
                 if inside and (m, t) not in LAZY]
    assert lazy == [], "function-local imports of mambaseg modules (move them to the top, or " \
                       "list them in LAZY with the reason):\n" + \
                       "\n".join(f"{m}:{line} imports {t}" for m, t, line in lazy)


def test_version_comes_from_its_own_module():
    offenders = []
    for m, (path, _) in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "mambaseg" and \
                    any(a.name == "__version__" for a in node.names):
                offenders.append(m)
    assert offenders == []
    import mambaseg
    from mambaseg._version import __version__

    assert mambaseg.__version__ == __version__


def test_training_and_inference_packages_import_nothing():
    edges = _graph()
    assert edges["mambaseg.training"] == set() and edges["mambaseg.inference"] == set()


def test_kernel_modules_import_only_their_helpers():
    edges = _graph()
    for name in ("scan_fwd", "scan_bwd"):
        assert edges[f"mambaseg.ops.triton.{name}"] == {"mambaseg.ops.triton._helpers"}
    assert edges["mambaseg.ops.triton._helpers"] == set()
    assert edges["mambaseg.ops.triton"] == set()  # the package imports nothing
