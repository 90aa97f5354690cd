"""The package's shape (issue 18, docs/ARCHITECTURE.md): no import cycles, imports point down the layers, small
modules.

Every module of kn_lens is parsed with ``ast`` (no import runs): every ``import`` / ``from ... import``, also inside
functions, is an edge from the importing module to the kn_lens module it names. Three checks:

* no cycle among kn_lens modules (a cycle is printed, module by module);
* every edge points down :data:`LAYERS` (or stays in its layer), ``evaluation`` and ``skill`` never import each
  other, and a module missing from :data:`LAYERS` fails with "add it to LAYERS";
* no module is over :data:`MAX_LINES` lines.

:data:`PENDING` names, one string each, what the branches of the restructure still have to fix; the lead empties
it while merging (a fixed item left in it fails too, so the list stays true).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "kn_lens"
MAX_LINES = 600

#: Module name or package prefix -> layer; an import may point to its own layer or a lower one (RESTRUCTURE.md).
LAYERS: dict[str, int] = {
    # 1. foundations
    "kn_lens._typing": 1,
    "kn_lens._device": 1,
    "kn_lens._progress": 1,
    "kn_lens._scalars": 1,
    "kn_lens._facts": 1,
    "kn_lens._moved": 1,
    "kn_lens.backends": 1,
    "kn_lens.inputs": 1,
    "kn_lens.prompts": 1,
    # 2. model access and interventions
    "kn_lens.models": 2,
    "kn_lens.embedded": 2,
    "kn_lens.scoring": 2,
    "kn_lens.cache": 2,
    "kn_lens.hooks": 2,
    "kn_lens._perturb": 2,
    "kn_lens.edit": 2,
    "kn_lens.lens": 2,
    "kn_lens.datasets": 2,
    "kn_lens.fixtures": 2,  # the bundled tiny BERT (loaded with models.load_model) and its facts
    # 3. attribution
    "kn_lens.attribution": 3,
    # 4. selection of knowledge neurons
    "kn_lens.selection": 4,
    "kn_lens.knowledge": 4,
    "kn_lens.neurons": 4,
    # 5. evaluation and skill neurons (they do not import each other), and the evaluation's deprecated shims
    "kn_lens.evaluation": 5,
    "kn_lens.skill": 5,
    "kn_lens.evaluate": 5,
    "kn_lens.sweeps": 5,
    "kn_lens.convergence": 5,
    "kn_lens.report": 5,
    "kn_lens.demo": 5,
    "kn_lens.interventions": 5,
    # 6. presentation and entry points
    "kn_lens.plotting": 6,
    "kn_lens.exercises": 6,
    "kn_lens.quiz": 6,
    "kn_lens.cli": 6,
    "kn_lens.cli_evaluate": 6,
    "kn_lens.evaluation.report": 6,  # the run's HTML page draws its figures with plotting
    # 7. the package itself (its public names) and ``python -m kn_lens``
    "kn_lens": 7,
    "kn_lens.__main__": 7,
}

#: Packages of one layer that must not import each other (both directions).
SEPARATE = (("kn_lens.evaluation", "kn_lens.skill"),)

#: Deprecated modules that stay as re-exporting shims: each may import its new home whatever the layers say.
SHIMS: dict[str, str] = {
    "kn_lens.evaluate": "kn_lens.evaluation",
    "kn_lens.sweeps": "kn_lens.evaluation",
    "kn_lens.convergence": "kn_lens.evaluation",
    "kn_lens.report": "kn_lens.evaluation",
    "kn_lens.demo": "kn_lens.evaluation",
    "kn_lens.interventions": "kn_lens.evaluation",
}

#: Upward imports that are allowed, each for a stated reason: a result's ``.plot()`` draws it with
#: ``kn_lens.plotting``, imported inside the method when a figure is asked for (plotly stays optional).
ALLOWED_UP: dict[tuple[str, str], str] = {
    ("kn_lens.knowledge", "kn_lens.plotting"): "KnowledgeNeurons.plot() imports plotting when drawn",
    ("kn_lens.skill", "kn_lens.plotting"): "Predictivity.figure() imports plotting when drawn",
}

#: What the other branches of the restructure still have to fix (the lead removes each item as it merges).
PENDING: set[str] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The kn_lens module an import names: the longest known module that ``name`` is or lies inside."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> set[str]:
    """Every kn_lens module ``module`` imports, at any depth of its code (function-local imports too)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .sub import y
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from kn_lens import hooks` imports the module kn_lens.hooks; `from kn_lens.hooks import scale`, hooks
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH: dict[str, set[str]] = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> int | None:
    """The layer of a module: its own entry, else its package's (``kn_lens`` itself counts only for itself)."""
    name = module
    while name and name != "kn_lens":
        if name in LAYERS:
            return LAYERS[name]
        name = name.rpartition(".")[0]
    return LAYERS.get(module)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) for each group of modules that import each other in a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles = []
    for group in groups:
        start = min(group)
        path, seen = [start], {start}
        while True:  # walk inside the group until a module repeats
            nxt = min(n for n in graph[path[-1]] if n in group)
            if nxt in seen:
                cycles.append([*path[path.index(nxt) :], nxt])
                break
            path.append(nxt)
            seen.add(nxt)
    return sorted(cycles)


def _problems() -> set[str]:
    problems = {"cycle " + " ".join(sorted(set(c))) for c in _cycles(GRAPH)}
    for module in MODULES:
        if _layer(module) is None:
            problems.add(f"layers {module}")
    for module, targets in GRAPH.items():
        here = _layer(module)
        for target in targets:
            there = _layer(target)
            if here is None or there is None or there <= here:
                continue
            if SHIMS.get(module) and _within(target, SHIMS[module]):
                continue
            if any(_within(module, a) and _within(target, b) for a, b in ALLOWED_UP):
                continue
            problems.add(f"up {module} -> {target}")
        for left, right in SEPARATE:
            for a, b in ((left, right), (right, left)):
                if _within(module, a) and any(_within(t, b) for t in targets):
                    problems.add(f"across {module} -> {b}")
    for module, path in MODULES.items():
        if len(path.read_text().splitlines()) > MAX_LINES:
            problems.add(f"size {module}")
    return problems


def test_the_parser_sees_every_kind_of_import():
    """The checks are only as good as the parser: relative, aliased, `from package import module` and
    function-local imports all count."""
    assert "kn_lens.inputs" in GRAPH["kn_lens.neurons"]  # from kn_lens.inputs import ...
    assert "kn_lens.attribution" in GRAPH["kn_lens.neurons"]  # inside _attribute()
    assert "kn_lens.plotting" in GRAPH["kn_lens.knowledge"]  # `from kn_lens import plotting` inside a method
    assert "kn_lens.plotting._base" in GRAPH["kn_lens.plotting.maps"]
    assert {"kn_lens.plotting.maps", "kn_lens.plotting.skill"} <= GRAPH["kn_lens.plotting"]


def test_no_import_cycles():
    cycles = [c for c in _cycles(GRAPH) if "cycle " + " ".join(sorted(set(c))) not in PENDING]
    assert not cycles, "import cycles among kn_lens modules:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_point_down_the_layers_and_modules_are_small():
    problems = _problems()
    new = sorted(problems - PENDING)
    stale = sorted(PENDING - problems)
    messages = []
    for problem in new:
        kind, _, what = problem.partition(" ")
        if kind == "cycle":
            continue  # reported by test_no_import_cycles, with the path
        if kind == "layers":
            messages.append(f"{what} is in no layer: add it to LAYERS (tests/test_architecture.py, RESTRUCTURE.md)")
        elif kind == "up":
            messages.append(f"upward import {what}: move the shared code down, or the import up")
        elif kind == "across":
            messages.append(f"evaluation and skill must not import each other: {what}")
        else:
            lines = len(MODULES[what].read_text().splitlines())
            messages.append(f"{what} has {lines} lines (more than {MAX_LINES}): split it")
    messages += [f"fixed, remove it from PENDING: {p!r}" for p in stale]
    assert not messages, "\n".join(messages)


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c", "a"]]),
        ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c", "e"}, "e": set()}, [["a", "b", "a"], ["c", "d", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_the_cycle_finder_finds_every_cycle(graph, expected):
    assert _cycles(graph) == expected


def test_a_module_in_no_layer_fails_and_an_upward_import_is_named(monkeypatch):
    monkeypatch.delitem(LAYERS, "kn_lens.lens")
    monkeypatch.setitem(GRAPH, "kn_lens.hooks", GRAPH["kn_lens.hooks"] | {"kn_lens.neurons"})
    problems = _problems()
    assert "layers kn_lens.lens" in problems
    assert "up kn_lens.hooks -> kn_lens.neurons" in problems


@pytest.mark.parametrize(
    ("old", "name", "home"),
    [
        ("kn_lens.hooks", "mean_activations", "kn_lens.cache"),
        ("kn_lens.hooks", "MLPPostCache", "kn_lens.cache"),
        ("kn_lens.edit", "value_vectors", "kn_lens.lens"),
        ("kn_lens.cli", "top_predictions", "kn_lens.scoring"),
    ],
)
def test_a_moved_name_still_works_and_warns_with_its_new_home(old, name, home):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"import it from {home}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(home), name)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018
