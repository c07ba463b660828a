"""The project's import graph: no cycles between modules, and the layers of the README's layout.

    python3 tests/test_import_graph.py      # prints the graph between packages, then checks it

Every import counts, at any depth (an import placed inside a function still makes a cycle, only
a hidden one). The layers, bottom to top (LAYERS): common (errors, paths, files, the metadata
schema: no project import, no torch); data; networks; utils (what training and evaluation share);
inference; tools; the scripts; benchmarks.
"""
import ast
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "data", "networks", "utils", "inference", "tools")
SCRIPTS = ("train", "test", "predict", "serve")


def project_modules() -> Dict[str, Path]:
    """Dotted name -> file, for the packages, the scripts and the benchmarks."""
    found = {name: ROOT / f"{name}.py" for name in SCRIPTS}
    for package in PACKAGES + ("benchmarks",):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The project modules `name` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> Dict[str, Set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


# The layers, bottom to top: a module may import its own layer and those below it, nothing above.
LAYERS = ("common", "data", "networks", "utils", "inference", "tools", "scripts", "benchmarks")


def layer(module: str) -> str:
    """The layer a module belongs to: its top-level package, or "scripts" for train.py and the others."""
    top = module.split(".")[0]
    return top if top in LAYERS else "scripts"


def package_graph(edges: Dict[str, Set[str]]) -> Dict[str, Dict[str, int]]:
    """Imports counted between layers."""
    counts: Dict[str, Dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for src, targets in edges.items():
        for dst in targets:
            if layer(src) != layer(dst):
                counts[layer(src)][layer(dst)] += 1
    return counts


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_layers_import_only_downwards():
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = sorted(f"{src} imports {dst}" for src, targets in graph().items() for dst in targets
                   if rank[layer(dst)] > rank[layer(src)])
    assert not wrong, "; ".join(wrong)


def test_the_checker_sees_a_cycle_hidden_in_a_function(tmp_path, monkeypatch):
    """A cycle made by an import inside a function is found (the checker itself can fail)."""
    for package in PACKAGES + ("benchmarks",):
        (tmp_path / package).mkdir()
    for name in SCRIPTS:
        (tmp_path / f"{name}.py").write_text("")
    (tmp_path / "utils" / "__init__.py").write_text("")
    (tmp_path / "utils" / "a.py").write_text("from utils.b import thing\n")
    (tmp_path / "utils" / "b.py").write_text("def thing():\n    from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert cycles(graph()) == [["utils.a", "utils.b"]]


if __name__ == "__main__":
    edges = graph()
    for src, targets in sorted(package_graph(edges).items()):
        print(f"{src:16s} -> " + ", ".join(f"{dst} ({n})" for dst, n in sorted(targets.items())))
    found = cycles(edges)
    for component in found:
        print("cycle:", " <-> ".join(component))
    sys.exit(1 if found else 0)
