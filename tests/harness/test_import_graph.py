"""The walls of the code base, read from the imports: no import circle among the modules of
``plasticity_gym/`` and ``agents/`` (lazy imports inside functions count), and no module
imports another module's underscore names."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    mods = {}
    # The folder agents/ installs as the package plasticity_gym_agents (a name no user's package takes).
    for folder, pkg in (("plasticity_gym", "plasticity_gym"), ("agents", "plasticity_gym_agents")):
        for f in (REPO / folder).rglob("*.py"):
            name = ".".join((pkg, *f.relative_to(REPO / folder).with_suffix("").parts))
            mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(path: Path):
    """(imported module, imported names) of every absolute import in the file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, f in mods.items():
        for target, names in _imports(f):
            if target in mods and target != m:
                graph[m].add(target)
                hidden = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if hidden:
                    private.append(f"{m} imports {target}.{', '.join(hidden)}")
    return graph, private


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u)
    return found


def test_the_checker_sees_circles():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    graph, _ = _graph()
    assert "plasticity_gym.harness.loop" in graph and "plasticity_gym_agents.lockstep" in graph  # the walk found the code
    assert _circles(graph) == []


def test_no_module_imports_another_modules_underscore_names():
    _, private = _graph()
    assert private == []


def _walls(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break ARCHITECTURE.md's walls: envs and data import nothing of agents or the
    harness; the benchmark (plasticity_gym) reaches the reference agents only through their
    package's face, ``plasticity_gym_agents``, and agents import nothing of the benchmark but its
    envs' spaces (none: they see spaces through gymnasium)."""
    broken = []
    for m, targets in graph.items():
        for t in targets:
            if m.startswith(("plasticity_gym.envs", "plasticity_gym.data")) and \
                    t.startswith(("plasticity_gym_agents", "plasticity_gym.harness")):
                broken.append(f"{m} -> {t}")
            if m.startswith("plasticity_gym.") and t.startswith("plasticity_gym_agents."):
                broken.append(f"{m} -> {t} (use the package face, plasticity_gym_agents)")
            if m.startswith("plasticity_gym_agents") and t.startswith("plasticity_gym.harness"):
                broken.append(f"{m} -> {t}")
    return sorted(broken)


def test_the_wall_checker_sees_a_broken_wall():
    assert _walls({"plasticity_gym.harness.resolve": {"plasticity_gym_agents.lockstep"}}) != []
    assert _walls({"plasticity_gym.envs.stream": {"plasticity_gym.harness.loop"}}) != []
    assert _walls({"plasticity_gym.harness.resolve": {"plasticity_gym_agents"}}) == []


def test_the_walls_of_the_architecture_hold():
    graph, _ = _graph()
    assert _walls(graph) == []
