"""The public modules export exactly their sorted __all__, and nothing private leaks."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = [
    "aceleryctl",
    "aceleryctl.sync",
    "aceleryctl.exceptions",
    "aceleryctl.testing",
    "aceleryctl.breaker",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_all_is_sorted_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_class_and_function_is_in_all(name: str) -> None:
    module = importlib.import_module(name)
    defined_here = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and getattr(value, "__module__", None) == name
        and (isinstance(value, type) or callable(value))
    }
    assert defined_here <= set(module.__all__), defined_here - set(module.__all__)


def test_exception_hierarchy_is_as_documented() -> None:
    from aceleryctl import exceptions as e

    assert issubclass(e.CircuitOpenError, e.DispatchRejected)
    assert issubclass(e.DispatchOverloaded, e.DispatchRejected)
    assert issubclass(e.ControllerClosed, e.DispatchRejected)
    assert issubclass(e.DispatchRejected, e.TaskDispatchError)
    assert issubclass(e.DispatchTimeout, e.TaskDispatchError)
    assert issubclass(e.DispatchTimeout, TimeoutError)
    assert issubclass(e.BrokerError, e.TaskDispatchError)
    assert issubclass(e.TaskSerializationError, e.TaskDispatchError)
    assert not issubclass(e.AsyncContextError, e.TaskDispatchError)
