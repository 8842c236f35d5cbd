"""Structured dispatch-failure records, with argument redaction and truncation.

One failed dispatch produces exactly one record at logger ``aceleryctl.controller``.
Its message reads like the original controller's (task, args, kwargs, exception,
with the traceback attached through ``exc_info``), and the same facts are in the
record's attributes for structured handlers: ``task_name``, ``task_id``,
``task_args``, ``task_kwargs``, ``error_type``, ``error_message``, ``outcome``,
``dispatch_method``.

Arguments never reach a record raw: :class:`Redactor` masks values under keys that
look secret, truncates long values, bounds depth and size, and never raises, even
for objects whose ``repr`` does. This module imports only the standard library.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "DEFAULT_REDACT_KEYS",
    "MASK",
    "Redactor",
    "log_dispatch_failure",
    "scrub_credentials",
]

logger: Final = logging.getLogger("aceleryctl.controller")

MASK: Final = "********"

#: Substrings (case-insensitive) of mapping keys whose values are masked.
DEFAULT_REDACT_KEYS: Final[tuple[str, ...]] = (
    "api_key",
    "apikey",
    "auth",
    "card",
    "cookie",
    "credential",
    "cvv",
    "passphrase",
    "passwd",
    "password",
    "private",
    "pwd",
    "secret",
    "session",
    "signature",
    "ssn",
    "token",
)

_URL_CREDENTIALS: Final = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def scrub_credentials(text: str) -> str:
    """Replace the user-info part of every URL in ``text`` (``redis://:pw@host``)."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)


@dataclass(frozen=True, slots=True)
class Redactor:
    """Turns task arguments into a bounded, JSON-safe picture fit for a log record.

    Thread-safe (immutable). ``sanitize`` never raises.

    Attributes:
        keys: lower-case substrings; a mapping value whose key contains one is masked.
        max_value_length: characters kept of a string or ``repr`` before ``...``.
        max_items: elements kept of a sequence or mapping; the rest is summarised.
        max_depth: nesting levels kept; deeper values are summarised.
        exception_chain: failure records carry the error's whole ``__cause__`` /
            ``__context__`` chain (each library's traceback, for debugging); by
            default only the dispatch's own traceback, the chain summarised in a note.
    """

    keys: frozenset[str] = frozenset(DEFAULT_REDACT_KEYS)
    max_value_length: int = 200
    max_items: int = 50
    max_depth: int = 4
    exception_chain: bool = False

    @classmethod
    def from_keys(
        cls, keys: Iterable[str], *, exception_chain: bool = False, **limits: int
    ) -> Redactor:
        """Build one from any iterable of key substrings (case-insensitive)."""
        return cls(
            keys=frozenset(k.lower() for k in keys), exception_chain=exception_chain, **limits
        )

    def is_secret_key(self, key: object) -> bool:
        """Whether a mapping key names a secret (only string keys can)."""
        if not isinstance(key, str):
            return False
        lowered = key.lower()
        return any(fragment in lowered for fragment in self.keys)

    def sanitize(self, value: object) -> Any:
        """Return a redacted, truncated copy of ``value`` made of JSON types."""
        try:
            return self._clean(value, 0)
        except Exception:  # a hostile __repr__/__iter__; never fail the caller
            return f"<unrepresentable {type(value).__name__}>"

    def sanitize_args(self, args: object, names: Sequence[str] = ()) -> Any:
        """Sanitize positional arguments; those whose parameter name (``names``,
        in order) looks secret are masked like mapping values. Never raises."""
        if not isinstance(args, list | tuple):
            return self.sanitize(args)
        cleaned = self.sanitize(list(args))
        if isinstance(cleaned, list):
            for index, name in enumerate(names[: len(cleaned)]):
                if self.is_secret_key(name):
                    cleaned[index] = MASK
        return cleaned

    def _text(self, text: str) -> str:
        text = scrub_credentials(text)
        if len(text) > self.max_value_length:
            return f"{text[: self.max_value_length]}...(+{len(text) - self.max_value_length})"
        return text

    def _clean(self, value: object, depth: int) -> Any:
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, bytes | bytearray):
            return f"<{len(value)} bytes>"
        if depth >= self.max_depth:
            return f"<{type(value).__name__} nested too deep>"
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for index, (key, item) in enumerate(value.items()):
                if index >= self.max_items:
                    out["..."] = f"{len(value) - self.max_items} more"
                    break
                name = key if isinstance(key, str) else self._safe_repr(key)
                out[name] = MASK if self.is_secret_key(key) else self._clean(item, depth + 1)
            return out
        if isinstance(value, list | tuple | set | frozenset):
            items = list(value)
            cleaned = [self._clean(v, depth + 1) for v in items[: self.max_items]]
            if len(items) > self.max_items:
                cleaned.append(f"... {len(items) - self.max_items} more")
            return cleaned
        return self._text(self._safe_repr(value))

    @staticmethod
    def _safe_repr(value: object) -> str:
        try:
            return repr(value)
        except Exception:
            return f"<unrepresentable {type(value).__name__}>"


def log_dispatch_failure(
    *,
    redactor: Redactor,
    task_name: str,
    task_id: str | None,
    args: object,
    kwargs: object,
    error: BaseException,
    outcome: str,
    dispatch_method: str,
    signature_of: object = None,
    level: int = logging.ERROR,
    correlation_id: str | None = None,
) -> None:
    """Emit the one record for a failed dispatch. Never raises.

    Args:
        outcome: ``"not_sent"`` (nothing reached the broker), ``"unknown"`` (a
            deadline passed mid-publish) or ``"failed"`` (the broker or the
            library raised; see ``error``).
        error: the exception raised to the caller; its traceback is attached
            through ``exc_info``, with its causes summarised in one note (the whole
            chain when ``redactor.exception_chain``). The caller's exception is
            not changed.
        signature_of: a task whose ``run`` signature names the positional
            arguments, so that a secret passed positionally is masked too.
        correlation_id: the request's correlation id the dispatch carried
            (``record.correlation_id``; ``"-"`` when none).
    """
    try:
        clean_args = redactor.sanitize_args(args, _parameter_names(signature_of))
        clean_kwargs = redactor.sanitize(kwargs)
        message = redactor._text(str(error))
        logger.log(
            level,
            "Task dispatch failed: task=%s task_id=%s args=%s kwargs=%s exception=%s: %s",
            task_name,
            task_id,
            clean_args,
            clean_kwargs,
            type(error).__name__,
            message,
            exc_info=(type(error), _shown(error, redactor), error.__traceback__),
            extra={
                "task_name": task_name,
                "task_id": task_id,
                "task_args": clean_args,
                "task_kwargs": clean_kwargs,
                "error_type": type(error).__name__,
                "error_message": message,
                "outcome": outcome,
                "dispatch_method": dispatch_method,
                "correlation_id": correlation_id or "-",
            },
        )
    except Exception:  # logging must never turn a dispatch error into another one
        logger.exception("aceleryctl could not log a dispatch failure for %s", task_name)


def _shown(error: BaseException, redactor: Redactor) -> BaseException:
    """What a failure record shows of ``error``: itself with ``exception_chain``;
    otherwise a copy without causes (the same class, message and traceback) whose
    last note reads ``caused by: A: ... <- B: ...``, so that one refused connection
    is a few lines, not kombu's and redis-py's internal retries, about 90 lines."""
    causes = list(_causes(error))
    if redactor.exception_chain or not causes:
        return error
    shown = type(error).__new__(type(error))
    shown.__dict__.update(error.__dict__)
    shown.args = error.args
    shown.__traceback__ = error.__traceback__
    shown.__cause__ = None
    shown.__suppress_context__ = True
    parts, previous = [], str(error)
    for cause in causes:
        text = str(cause)
        # A wrapper repeating its cause's words is named once: "A <- B: words".
        parts.append(
            f"{type(cause).__name__}: {redactor._text(text)}"
            if text and text != previous
            else type(cause).__name__
        )
        previous = text
    summary = " <- ".join(parts)
    shown.__notes__ = [*getattr(error, "__notes__", ()), f"caused by: {summary}"]
    return shown


def _causes(error: BaseException) -> Iterable[BaseException]:
    """The exceptions behind ``error``, nearest first (``__cause__``, else an
    unsuppressed ``__context__``), each once."""
    seen = {id(error)}
    current: BaseException | None = error
    while current is not None:
        following = current.__cause__
        if following is None and not current.__suppress_context__:
            following = current.__context__
        if following is None or id(following) in seen:
            return
        seen.add(id(following))
        yield following
        current = following


def _parameter_names(task: object) -> tuple[str, ...]:
    """Positional parameter names of a Celery task's ``run``; empty when unknown."""
    run = getattr(task, "run", None)
    if run is None:
        return ()
    try:
        parameters = inspect.signature(run).parameters.values()
    except (TypeError, ValueError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in parameters if p.kind in kinds)
