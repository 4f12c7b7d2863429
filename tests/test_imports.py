"""The import graph flows down from the entry points: no circles, nothing imports `train`."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxvision"
# The command-line entry points: the only modules that may import the training loop.
ENTRY_POINTS = {
    "jaxvision.main",
    "jaxvision.evaluate",
    "jaxvision.predict",
    "jaxvision.export",
    "jaxvision.benchmark",
    "jaxvision.compress",
}


def _module_names() -> dict[str, pathlib.Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The jaxvision modules `path` imports anywhere (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module in modules:
            # `from package import submodule` imports the submodule; other names come from
            # the package itself.
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the jaxvision modules it imports."""
    names = _module_names()
    graph = {name: _imports(path, set(names)) - {name} for name, path in names.items()}
    assert len(graph) > 40 and graph["jaxvision.main"]  # the walk found the package
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycles():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_entry_points_import_train():
    importers = {m for m, deps in import_graph().items() if "jaxvision.train" in deps}
    assert "jaxvision.main" in importers
    assert importers <= ENTRY_POINTS, importers - ENTRY_POINTS
