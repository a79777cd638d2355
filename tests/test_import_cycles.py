"""The package's import graph has no cycles: no module imports one that (directly or through others) imports it.
Every import counts, at module level or inside a function, TYPE_CHECKING blocks included. And the rooms keep
their order (DESIGN, issue 25): data flows down, cli -> front -> selection -> predictor -> policy / measure ->
kernels, with tuning beside the predictor and the compile path (inductor) between the front and selection, so no
room imports one above it."""

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
    assert len(graph) > 40 and "gpperf_torch.selection.selector" in graph
    found = cycles(graph)
    detail = "; ".join(" <-> ".join(c) + f" ({', '.join(f'{a} -> {sorted(graph[a] & set(c))}' for a in c)})"
                       for c in found)  # fmt: skip
    assert not found, f"import cycles: {detail}"


def test_the_detector_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_selection_path_is_one_way():
    graph = import_graph()
    callees = ("objectives", "state", "ranking", "verify", "table", "select_cache", "explain")
    for name in callees:
        deps = graph[f"gpperf_torch.selection.{name}"]
        assert "gpperf_torch.selection.selector" not in deps, f"{name} imports the selector"
        assert "gpperf_torch.ops" not in deps, f"{name} imports the op"
    assert "gpperf_torch.selection.selector" in graph["gpperf_torch.ops"]


FRONT = ("gpperf_torch", "gpperf_torch.ops", "gpperf_torch.nn", "gpperf_torch.warmup", "gpperf_torch.stats",
         "gpperf_torch.energy")  # fmt: skip
BASICS = ("gpperf_torch.errors", "gpperf_torch.env", "gpperf_torch.paths", "gpperf_torch.once")
ROOMS = ("cli", "inductor", "selection", "predictor", "policy", "measure", "tuning", "kernels")
# What each room may import besides itself and the shared basics: the rooms below it (DESIGN.md).
MAY_IMPORT = {
    # the package itself is the public API: the front, and `gpperf_torch.tuning.tune` (the tuner, imported on first use)
    "api": {"front", "inductor", "selection", "predictor", "policy", "measure", "tuning", "kernels"},
    "cli": {"front", "inductor", "selection", "predictor", "policy", "measure", "tuning", "kernels"},
    "front": {"inductor", "selection", "predictor", "policy", "measure", "kernels"},
    # the compile path (torch._inductor stays in it): scores through selection's state and ranking
    "inductor": {"selection", "predictor", "policy", "measure", "kernels"},
    "selection": {"predictor", "policy", "measure", "kernels"},
    "predictor": {"policy", "measure", "kernels"},
    "tuning": {"measure", "kernels"},
    "policy": set(),
    "measure": {"kernels"},
    "basics": set(),
    "kernels": set(),
}


def room_of(module: str) -> str:
    if module == "gpperf_torch":
        return "api"
    if module in FRONT:
        return "front"
    if module in BASICS:
        return "basics"
    parts = module.split(".")
    if parts[0] == "gpucheck":
        return "gpucheck"
    assert len(parts) >= 2 and parts[1] in ROOMS, f"{module} is in no room: add it to one (DESIGN.md)"
    return parts[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for mod, deps in sorted(graph.items()):
        room = room_of(mod)
        if room == "gpucheck":
            continue
        for dep in sorted(deps):
            other = room_of(dep)
            if other not in (room, "basics") and other not in MAY_IMPORT[room]:
                wrong.append(f"{mod} ({room}) -> {dep} ({other})")
    return wrong


def test_the_rooms_import_only_the_rooms_below_them():
    wrong = upward_imports(import_graph())
    assert not wrong, "imports against the rooms' order: " + "; ".join(wrong)


def test_the_room_check_finds_an_upward_import():
    graph = {"gpperf_torch.predictor.runtime.fitting": {"gpperf_torch.selection.state", "gpperf_torch.env"},
             "gpperf_torch.measure.timing.timing": {"gpperf_torch.kernels.matmul"},
             "gpperf_torch.kernels.matmul": {"gpucheck.common"}}  # fmt: skip
    assert upward_imports(graph) == [
        "gpperf_torch.kernels.matmul (kernels) -> gpucheck.common (gpucheck)",
        "gpperf_torch.predictor.runtime.fitting (predictor) -> gpperf_torch.selection.state (selection)",
    ]


def test_the_top_level_is_the_front_and_the_basics():
    top = sorted(p.stem for p in (ROOT / "gpperf_torch").glob("*.py"))
    assert len(top) <= 10, top
    assert {f"gpperf_torch.{m}" if m != "__init__" else "gpperf_torch" for m in top} == set(FRONT) | set(BASICS)


def internals_outside_the_inductor_room() -> list[str]:
    """Modules outside gpperf_torch.inductor that import torch._inductor (issue 26: the internals stay in one room)."""
    wrong = []
    for name, path in _modules().items():
        if name == "gpperf_torch.inductor" or name.startswith("gpperf_torch.inductor."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                mods = [node.module or ""]
            wrong += [f"{name} imports {m}" for m in mods if m == "torch._inductor" or m.startswith("torch._inductor.")]
    return wrong


def test_torch_internals_stay_in_the_inductor_room():
    assert "gpperf_torch.inductor.templates" in _modules()
    wrong = internals_outside_the_inductor_room()
    assert not wrong, "torch._inductor outside gpperf_torch/inductor/: " + "; ".join(wrong)
