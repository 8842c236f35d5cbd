"""pytest hooks the folders of the suite share: a marker per folder, and logs of the
processes a folder starts attached to its failed tests' reports.

A conftest assigns what these return to the hook's name::

    pytest_collection_modifyitems = mark_folder(HERE, "integration")
    pytest_runtest_makereport = attach_on_failure(HERE, lambda: [("worker", log)])
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import Any

import pytest

__all__ = ["attach_on_failure", "mark_folder"]

Sections = Callable[[], Iterable[tuple[str, str]]]


def _inside(item: pytest.Item, folder: Path) -> bool:
    return folder in item.path.resolve().parents


def mark_folder(folder: Path, marker: str) -> Callable[[pytest.Config, list[pytest.Item]], None]:
    """A ``pytest_collection_modifyitems`` that marks every test below ``folder``."""

    def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
        for item in items:
            if _inside(item, folder):
                item.add_marker(getattr(pytest.mark, marker))

    return pytest_collection_modifyitems


def attach_on_failure(folder: Path, sections: Sections) -> Any:
    """A ``pytest_runtest_makereport`` wrapper adding ``sections()`` (title, text) to
    the report of every failed test below ``folder``."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.failed and _inside(item, folder):
            report.sections.extend(sections())
        return report

    return pytest_runtest_makereport
