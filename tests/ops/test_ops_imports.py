"""The import graph of mambaseg.ops (every import statement, also inside functions) has no
cycle, and the kernel modules import only their shared helpers."""
import ast
from pathlib import Path

OPS = Path(__file__).resolve().parents[2] / "src" / "mambaseg" / "ops"


def _modules():
    out = {}
    for p in OPS.rglob("*.py"):
        parts = ("mambaseg", "ops") + p.relative_to(OPS).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def _graph():
    """{module: the mambaseg.ops modules it imports}."""
    mods = _modules()
    edges = {m: set() for m in mods}
    for m, (path, is_pkg) in mods.items():
        pkg = m if is_pkg else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges[m].update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + [node.module] if node.module else base)
                for a in node.names:
                    target = f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod
                    if target in mods and target != m:
                        edges[m].add(target)
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


def test_no_import_cycle():
    edges = _graph()
    assert "mambaseg.ops.triton.launch" in edges
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))


def test_cycle_detection_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_kernel_modules_import_only_their_helpers():
    edges = _graph()
    for name in ("scan_fwd", "scan_bwd"):
        assert edges[f"mambaseg.ops.triton.{name}"] == {"mambaseg.ops.triton._helpers"}
    assert edges["mambaseg.ops.triton._helpers"] == set()
    assert edges["mambaseg.ops.triton"] == set()  # the package imports nothing
