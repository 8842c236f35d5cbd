"""Every view the docs show, run as a user would paste it, against a dead broker.

Each ```python block of README.md and docs/*.md that defines a view (a function
whose first parameter is ``request``, or a class with ``get``/``post``) is executed
with only its task and model imports stubbed (tasks become tasks of
:mod:`tests.django.docs_fixture`, whose broker refuses connections; a model becomes
an object whose ``create``/``acreate`` return a row with ``pk`` 1). Any other name
a snippet uses must be imported by the snippet itself. Then the view is called:

* a view that catches dispatch errors (its code has an ``except``) must answer,
  with no server error, both the first call on a dead broker (``BrokerError``)
  and a call refused by the open breaker (``CircuitOpenError``);
* a view that does not may let a ``TaskDispatchError`` out (the docs say which
  page covers the failures), nothing else.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory, override_settings

from aceleryctl import conf
from aceleryctl.exceptions import TaskDispatchError
from tests.django.docs_fixture import task_named

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DEAD = {"CELERY_APP": "tests.django.docs_fixture:dead", "DISPATCH_TIMEOUT": 2.0}
POST = {"user_id": "1", "report_id": "1", "body": "hello"}


@dataclass(frozen=True)
class Snippet:
    page: str
    line: int
    code: str
    view: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}:{self.view}"


def snippets() -> list[Snippet]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"```python\n(.*?)```", text, re.S):
            try:
                tree = ast.parse(match.group(1))
            except SyntaxError:
                continue  # a signature or a fragment, not a module
            for node in tree.body:
                if _is_view(node):
                    line = text[: match.start()].count("\n") + 2
                    found.append(Snippet(page.name, line, match.group(1), node.name))  # type: ignore[attr-defined]
    return found


def _is_view(node: ast.stmt) -> bool:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return bool(node.args.args) and node.args.args[0].arg == "request"
    if isinstance(node, ast.ClassDef):
        return any(
            isinstance(item, ast.FunctionDef) and item.name in ("get", "post") for item in node.body
        )
    return False


class _Rows:
    """A stand-in for a model's manager: every row created has pk 1."""

    def create(self, **fields: Any) -> Any:
        return SimpleNamespace(pk=1, **fields)

    async def acreate(self, **fields: Any) -> Any:
        return self.create(**fields)


def _stubbed(code: str) -> tuple[str, dict[str, Any]]:
    """The snippet with its task and model imports replaced by names in the namespace."""
    namespace: dict[str, Any] = {"__name__": "docs_snippet"}
    kept = []
    for line in code.splitlines():
        imported = re.match(r"from (\S*?)(tasks|models) import (.+)$", line)
        if imported:
            for name in (n.strip() for n in imported.group(3).strip("()").split(",")):
                if imported.group(2) == "tasks":
                    namespace[name] = task_named(name)
                else:
                    namespace[name] = SimpleNamespace(objects=_Rows())
            continue
        kept.append(line)
    return "\n".join(kept), namespace


def _free_names(code: str, namespace: dict[str, Any]) -> set[str]:
    tree = ast.parse(code)
    bound = set(namespace) | set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
            if not isinstance(node, ast.ClassDef):
                args = node.args
                bound.update(a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs])
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
            bound.add(node.optional_vars.id)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return used - bound


def _request() -> Any:
    request = RequestFactory().post("/view/", POST)
    user = AnonymousUser()
    request.user = user

    async def auser() -> Any:
        return user

    async def asave() -> None:
        return None

    request.auser = auser
    request.session = SimpleNamespace(session_key="docs-session", asave=asave, save=lambda: None)
    return request


def _call(view: Any) -> Any:
    request = _request()
    if inspect.isclass(view):
        return view.as_view()(request)
    extra = [1 for _ in list(inspect.signature(view).parameters)[1:]]
    if inspect.iscoroutinefunction(view) or inspect.iscoroutinefunction(
        getattr(view, "__wrapped__", None)
    ):
        return asyncio.run(view(request, *extra))
    return view(request, *extra)


@pytest.fixture(autouse=True)
def fresh_controller() -> Any:
    conf.reset_default_controller()
    yield
    conf.reset_default_controller()


def test_the_docs_have_views_to_check() -> None:
    assert len(snippets()) >= 8


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("snippet", snippets(), ids=str)
@pytest.mark.parametrize("breaker", ["first call", "breaker open"])
def test_a_docs_view_survives_a_dead_broker(snippet: Snippet, breaker: str) -> None:
    code, namespace = _stubbed(snippet.code)
    missing = _free_names(code, namespace)
    assert not missing, f"{snippet}: uses {sorted(missing)} without importing them"
    settings = dict(DEAD)
    if breaker == "breaker open":
        settings["BREAKER"] = {"FORCE": "open"}
    with override_settings(ACELERYCTL=settings):
        exec(compile(code, str(snippet), "exec"), namespace)
        escaped: TaskDispatchError | None = None
        try:
            response = _call(namespace[snippet.view])
        except TaskDispatchError as exc:
            escaped = exc
    if escaped is not None:
        handles = "except" in code
        assert not handles, f"{snippet} catches dispatch errors but let {escaped!r} out"
        return
    status = getattr(response, "status_code", None)
    assert status is not None, f"{snippet}: returned {response!r}"
    assert status < 500 or status == 503, f"{snippet}: answered {status} ({breaker})"
