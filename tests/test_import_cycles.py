"""The package's import graph has no cycles: no module imports one that (directly or through others) imports it.
Every import counts, at module level or inside a function, TYPE_CHECKING blocks included: data flows one way
(ops -> selector -> policy, predictor, features, measurement, table), as DESIGN and issue 20 ask."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"gpperf_torch": ROOT / "gpperf_torch", "gpperf_torch.kernels": ROOT / "kernels",
            "gpucheck": ROOT / "benchmarks" / "gpucheck"}  # fmt: skip


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            parts = [p for p in f.relative_to(folder).with_suffix("").parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def _canon(name: str) -> str:
    return "gpperf_torch." + name if name == "kernels" or name.startswith("kernels.") else name


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        base = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    b = base
                    for _ in range(node.level - 1):
                        b = b.rpartition(".")[0]
                    mod = b + ("." + node.module if node.module else "")
                else:
                    mod = _canon(node.module or "")
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [_canon(a.name) for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40 and "gpperf_torch.selector" in graph
    found = cycles(graph)
    detail = "; ".join(" <-> ".join(c) + f" ({', '.join(f'{a} -> {sorted(graph[a] & set(c))}' for a in c)})"
                       for c in found)  # fmt: skip
    assert not found, f"import cycles: {detail}"


def test_the_detector_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_selection_path_is_one_way():
    graph = import_graph()
    callees = ("objectives", "state", "ranking", "verify_policy", "verify", "table", "dispatch", "predictor",
               "features", "measure")  # fmt: skip
    for name in callees:
        assert "gpperf_torch.selector" not in graph[f"gpperf_torch.{name}"], f"{name} imports the selector"
        assert "gpperf_torch.ops" not in graph[f"gpperf_torch.{name}"], f"{name} imports the op"
    assert "gpperf_torch.selector" in graph["gpperf_torch.ops"]
