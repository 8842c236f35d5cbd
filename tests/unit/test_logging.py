"""Redactor and the failure record: secrets masked, sizes bounded, never raises."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aceleryctl._logging import MASK, Redactor, log_dispatch_failure, scrub_credentials


def test_masks_values_under_secret_looking_keys_at_any_depth() -> None:
    r = Redactor()
    cleaned = r.sanitize(
        {"Password": "p", "user": {"API_KEY": "k", "name": "ann"}, "items": [{"auth_token": "t"}]}
    )
    assert cleaned == {
        "Password": MASK,
        "user": {"API_KEY": MASK, "name": "ann"},
        "items": [{"auth_token": MASK}],
    }


def test_custom_keys_replace_the_defaults() -> None:
    r = Redactor.from_keys(["PIN"])
    assert r.sanitize({"pin_code": 1234, "password": "x"}) == {"pin_code": MASK, "password": "x"}


def test_truncates_long_values_and_bounds_size_and_depth() -> None:
    r = Redactor(max_value_length=10, max_items=3, max_depth=2)
    assert r.sanitize("x" * 25) == "xxxxxxxxxx...(+15)"
    assert r.sanitize(list(range(10))) == [0, 1, 2, "... 7 more"]
    assert r.sanitize({"a": {"b": {"c": 1}}}) == {"a": {"b": "<dict nested too deep>"}}
    assert r.sanitize(b"\x00" * 9) == "<9 bytes>"


def test_url_credentials_are_scrubbed() -> None:
    text = "cannot reach redis://:hunter2@10.0.0.1:6379/0 or amqp://u:pw@h//"
    assert (
        scrub_credentials(text)
        == f"cannot reach redis://{MASK}@10.0.0.1:6379/0 or amqp://{MASK}@h//"
    )


class Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


class HostileMapping(dict[str, Any]):
    def items(self) -> Any:
        raise RuntimeError("items exploded")


def test_never_raises_on_hostile_objects() -> None:
    r = Redactor()
    assert r.sanitize(Hostile()) == "<unrepresentable Hostile>"
    assert r.sanitize([Hostile()]) == ["<unrepresentable Hostile>"]
    assert r.sanitize(HostileMapping(a=1)) == "<unrepresentable HostileMapping>"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)


@given(json_values)
def test_sanitize_is_total_and_masks_every_secret_key(value: object) -> None:
    r = Redactor()
    cleaned = r.sanitize({"token": value, "data": value})
    assert cleaned["token"] == MASK

    def walk(original: object, out: object) -> None:
        if isinstance(original, dict) and isinstance(out, dict):
            for k, v in original.items():
                if k in out:
                    if r.is_secret_key(k):
                        assert out[k] == MASK
                    else:
                        walk(v, out[k])

    walk(value, cleaned["data"])


def test_one_record_with_structured_fields(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        error = exc
    log_dispatch_failure(
        redactor=Redactor(),
        task_name="proj.tasks.mail",
        task_id="id-3",
        args=(1, {"password": "pw"}),
        kwargs={"to": "a@b.c"},
        error=error,
        outcome="failed",
        dispatch_method="delay",
    )
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.name == "aceleryctl.controller"
    assert record.exc_info is not None
    fields = {
        k: getattr(record, k)
        for k in (
            "task_name",
            "task_id",
            "task_args",
            "task_kwargs",
            "error_type",
            "error_message",
            "outcome",
            "dispatch_method",
            "correlation_id",
        )
    }
    assert fields == {
        "task_name": "proj.tasks.mail",
        "task_id": "id-3",
        "task_args": [1, {"password": MASK}],
        "task_kwargs": {"to": "a@b.c"},
        "error_type": "ValueError",
        "error_message": "boom",
        "outcome": "failed",
        "dispatch_method": "delay",
        "correlation_id": "-",
    }
    message = record.getMessage()
    assert "task=proj.tasks.mail" in message
    assert "exception=ValueError: boom" in message


def _chained_failure() -> Exception:
    """A dispatch error over three library errors, as a refused connection makes."""
    from aceleryctl.exceptions import BrokerError

    try:
        try:
            try:
                [].pop()
            except IndexError:
                raise ConnectionRefusedError(111, "Connection refused") from None
        except ConnectionRefusedError as refused:
            raise OSError("Error 111 connecting to redis://:pw@127.0.0.1:1") from refused
    except OSError as library:
        try:
            raise BrokerError("the broker failed; nothing was sent", task_name="t") from library
        except BrokerError as exc:
            return exc


def _formatted(caplog: pytest.LogCaptureFixture, redactor: Redactor, error: Exception) -> str:
    caplog.clear()
    log_dispatch_failure(
        redactor=redactor,
        task_name="t",
        task_id="id",
        args=(),
        kwargs={},
        error=error,
        outcome="not_sent",
        dispatch_method="delay",
    )
    [record] = caplog.records
    return logging.Formatter().format(record)


def test_a_record_shows_the_dispatch_error_and_one_line_of_causes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = _chained_failure()
    text = _formatted(caplog, Redactor(), error)
    assert text.count("Traceback (most recent call last)") == 1
    assert "The above exception was the direct cause" not in text
    assert (
        "caused by: OSError: Error 111 connecting to redis://********@127.0.0.1:1 "
        "<- ConnectionRefusedError: [Errno 111] Connection refused" in text
    )
    assert "IndexError" not in text  # suppressed by "from None", as Python shows it
    assert ":pw@" not in text
    [record] = caplog.records
    assert record.exc_info is not None
    shown = record.exc_info[1]
    assert type(shown) is type(error)
    assert str(shown) == str(error)
    assert shown.task_name == "t"  # type: ignore[union-attr]
    # The caller's exception keeps its chain.
    assert isinstance(error.__cause__, OSError)
    assert not getattr(error, "__notes__", None)


def test_the_whole_chain_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    error = _chained_failure()
    text = _formatted(caplog, Redactor.from_keys(["token"], exception_chain=True), error)
    assert text.count("Traceback (most recent call last)") == 3
    assert "caused by:" not in text


def test_an_error_without_causes_is_shown_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    error = ValueError("alone")
    _formatted(caplog, Redactor(), error)
    [record] = caplog.records
    assert record.exc_info is not None
    assert record.exc_info[1] is error
