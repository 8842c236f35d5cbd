"""The package's shape: no import circle, small modules of one concern, all mapped.

Read from the source with ``ast`` (nothing is imported), so a change that adds a
circle, a module without a docstring, an oversized module or one missing from the
design notes' module map fails here, not in a reader's head.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "aceleryctl"
DESIGN = PACKAGE.parent / "docs" / "design.md"

#: Modules allowed past the size limit, and why.
LARGE = {"breaker.py": "one class per state, each with its spec as docstring"}
MAX_LINES = 430  # "about 400"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def module_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """aceleryctl modules whose names ``path`` needs when it is imported (not inside
    functions, not under ``if TYPE_CHECKING``).

    ``from pkg import sub`` needs the submodule ``pkg.sub``, not ``pkg``'s own names:
    a package that is still being imported can hand out its submodules, so that is
    no circle. ``from pkg import name`` (a name defined in ``pkg``) needs ``pkg``.
    """
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("aceleryctl"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if not base.startswith("aceleryctl"):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = module_level_imports(path, name, set(known))
        graph[name] = {t for t in targets if t in known and t != name}
    return graph


def test_no_import_circle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)


def test_the_graph_sees_real_imports() -> None:
    # Guards the test above against finding nothing: known edges are present.
    graph = import_graph()
    assert "aceleryctl.dispatch.engine" in graph["aceleryctl.dispatch.controller"]
    assert "aceleryctl.wires.base" in graph["aceleryctl.wires.redis"]


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_says_its_role(name: str) -> None:
    path = modules()[name]
    if path.name == "__init__.py" and not path.read_text().strip():
        pytest.skip("an empty package marker")
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring, f"{name} has no module docstring"
    summary = " ".join(docstring.strip().split("\n\n")[0].split())
    assert summary.endswith((".", ":")), f"{name}: the summary is not a sentence: {summary!r}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_stay_small(name: str) -> None:
    path = modules()[name]
    if path.name in LARGE:
        return
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it along a concern"


def test_the_design_notes_map_every_module() -> None:
    text = DESIGN.read_text()
    missing = []
    for path in modules().values():
        if path.name == "__init__.py" and not path.read_text().strip():
            continue
        relative = path.relative_to(PACKAGE).as_posix()
        short = relative.rpartition("/")[2]
        # The map names modules by their path inside the package (or, within a
        # sub-package's own table, by file name).
        if f"`{relative}`" not in text and f"`{short}`" not in text:
            missing.append(relative)
    assert not missing, f"docs/design.md's module map lacks {missing}"
