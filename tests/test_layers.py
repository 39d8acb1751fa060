"""The package's floors: no import cycle between modules, and no import from a lower layer into a higher one.

Every ``import`` / ``from ... import`` of a ``ggt_ir`` module counts, also those inside functions (the
lazy ones), since a lazy import up the floors still ties a low room to a high one. Registry tables
(``"module:attr"`` strings) are not imports: that is how a low layer names a higher one's entries.

Run it as a script to print the layers, the module count per layer and every import between layers:

    python tests/test_layers.py
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ggt_ir"

# lowest first; a module belongs to the layer of its longest matching prefix
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["ggt_ir", "ggt_ir._compat", "ggt_ir.registry", "ggt_ir.config", "ggt_ir.utils"]),
    ("parts", ["ggt_ir.archs", "ggt_ir.losses", "ggt_ir.data"]),
    ("models", ["ggt_ir.generative"]),
    ("metrics", ["ggt_ir.eval.psnr_ssim", "ggt_ir.eval.metrics", "ggt_ir.eval.weights", "ggt_ir.eval.reference_cache"]),
    ("loader", ["ggt_ir.inference.loader"]),
    ("train", ["ggt_ir.train"]),
    ("evaluation", ["ggt_ir.eval", "ggt_ir.assets"]),
    ("apps", ["ggt_ir.inference", "ggt_ir.synth", "ggt_ir.reproduce", "ggt_ir.testing", "ggt_ir.cli",
              "ggt_ir.__main__"]),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """ggt_ir modules that ``path`` imports (anywhere in the file), resolved to known module names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pkg import mod` imports pkg.mod when that is a module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t.startswith("ggt_ir") and t != name:
                found.add(t)
    return found


def layer_of(name: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{name} is in no layer of tests/test_layers.py"
    return rank


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, name, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    return out


def upward(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, bs in g.items() for b in bs if layer_of(b) > layer_of(a))


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_no_import_runs_up_the_floors():
    assert upward(graph()) == []


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def layer_of_name(label: str) -> int:
    return [n for n, _ in LAYERS].index(label)


if __name__ == "__main__":
    g = graph()
    per_layer = defaultdict(list)
    for name in g:
        per_layer[layer_of(name)].append(name)
    for i, (label, _) in reversed(list(enumerate(LAYERS))):
        print(f"{i} {label:<11} {len(per_layer[i]):3d} modules")
    between = defaultdict(int)
    for a, bs in g.items():
        for b in bs:
            if layer_of(a) != layer_of(b):
                between[(LAYERS[layer_of(a)][0], LAYERS[layer_of(b)][0])] += 1
    print("imports between layers (from -> to: count):")
    for (a, b), n in sorted(between.items(), key=lambda kv: (-layer_of_name(kv[0][0]), kv[0][1])):
        print(f"  {a} -> {b}: {n}")
    print("cycles:", cycles(g) or "none")
    print("upward imports:", upward(g) or "none")
