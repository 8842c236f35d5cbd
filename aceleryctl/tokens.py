"""Signed subscription tokens: who may follow which task, and until when.

The view that dispatches a task issues a token for it and hands it to the page;
the browser sends it in its ``subscribe`` frame (never in the URL, so it stays out
of access logs)::

    result = await controller.delay(export_report, report_id)
    token = make_subscription_token(result.id, user=await request.auser())
    return JsonResponse({"task_id": result.id, "token": token})

A token is a :class:`django.core.signing.Signer` signature (``SECRET_KEY``, with
``SECRET_KEY_FALLBACKS`` honoured for rotation; salt :data:`TOKEN_SALT`) over a
small JSON payload: the task id, an expiry (Unix time, whole seconds), the user's
primary key and/or a keyed hash of the session key. The payload is signed, not
encrypted: it is readable by whoever holds the token, which is why the session
key itself never goes into it (the session cookie is ``HttpOnly``; its value
must not become readable by page scripts).

:func:`check_subscription_token` raises one :class:`SubscriptionRefused`
subclass per failure; each carries the websocket close code the consumer uses:

============================  ======  =============================================
exception                     code    meaning
============================  ======  =============================================
:class:`TokenMissing`         4401    no token at all
:class:`TokenInvalid`         4403    tampered, truncated, signed with another key
:class:`TokenWrongTask`       4403    issued for another task
:class:`TokenWrongUser`       4403    issued to another user or session
:class:`TokenExpired`         4419    past its expiry: fetch a new one
============================  ======  =============================================

Everything here is pure computation (an HMAC and a JSON parse, a few
microseconds): safe to call on the event loop's thread, or any other.
"""

from __future__ import annotations

import hmac
import math
import time
from typing import Any, Final, Protocol

from django.core import signing
from django.utils.crypto import salted_hmac

__all__ = [
    "DEFAULT_MAX_AGE",
    "MAX_TOKEN_LENGTH",
    "TOKEN_SALT",
    "SubscriptionRefused",
    "TokenExpired",
    "TokenInvalid",
    "TokenMissing",
    "TokenWrongTask",
    "TokenWrongUser",
    "check_subscription_token",
    "make_subscription_token",
]

#: The salt of every subscription token: a token signed for another purpose with the
#: same ``SECRET_KEY`` (a password reset link, a signed cookie) is never accepted.
TOKEN_SALT: Final = "aceleryctl.tokens.subscription"
#: Seconds a token stays valid unless the issuer says otherwise (one hour).
DEFAULT_MAX_AGE: Final = 3600.0
#: Longest token accepted, in characters; longer input is refused before any parsing.
MAX_TOKEN_LENGTH: Final = 1024

_SESSION_SALT: Final = "aceleryctl.tokens.session"
_VERSION: Final = 1


class _UserLike(Protocol):
    """What a token needs of a user: ``request.user`` or ``scope["user"]`` fits."""

    @property
    def pk(self) -> Any: ...

    @property
    def is_authenticated(self) -> bool: ...


class SubscriptionRefused(Exception):
    """A client may not follow this task; ``close_code`` is the websocket close code.

    The message is safe to show to the client: it never contains the token, the
    expected user or any secret.
    """

    close_code: int = 4403


class TokenMissing(SubscriptionRefused):
    """The subscribe frame carried no token (close code 4401)."""

    close_code = 4401


class TokenInvalid(SubscriptionRefused):
    """The token is malformed, tampered with, or signed with an unknown key (4403)."""


class TokenWrongTask(SubscriptionRefused):
    """The token is genuine but was issued for another task (4403)."""


class TokenWrongUser(SubscriptionRefused):
    """The token is genuine but bound to another user or session (4403)."""


class TokenExpired(SubscriptionRefused):
    """The token is genuine but past its expiry (4419): the page should ask the
    server for a new one, then subscribe again."""

    close_code = 4419


def _session_digest(session_key: str) -> str:
    return salted_hmac(_SESSION_SALT, session_key, algorithm="sha256").hexdigest()[:32]


def _user_pk(user: _UserLike | None) -> str | None:
    if user is None or not user.is_authenticated or user.pk is None:
        return None
    return str(user.pk)


def make_subscription_token(
    task_id: str,
    *,
    user: _UserLike | None = None,
    session_key: str | None = None,
    max_age: float = DEFAULT_MAX_AGE,
    now: float | None = None,
) -> str:
    """A token that lets ``user`` (or the holder of ``session_key``) follow ``task_id``.

    Args:
        task_id: the Celery task id.
        user: bind the token to this user's primary key (ignored when anonymous).
        session_key: bind the token to this session (``request.session.session_key``;
            save the session first so that it has one). Only a keyed hash of it is
            stored in the token.
        max_age: seconds until the token expires (``float``, > 0); rounded up to a
            whole second.
        now: the current Unix time in seconds; ``time.time()`` when ``None`` (tests
            pass a fixed value).

    Raises:
        ValueError: empty ``task_id``, a ``max_age`` that is not a finite positive
            number, or neither an authenticated ``user`` nor a ``session_key`` to
            bind to (a token anyone could use is never issued).
    """
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("task_id must be a non-empty string")
    if isinstance(max_age, bool) or not math.isfinite(max_age) or max_age <= 0:
        raise ValueError(f"max_age must be a finite number of seconds > 0, got {max_age!r}")
    pk = _user_pk(user)
    if pk is None and not session_key:
        raise ValueError(
            "a subscription token must be bound to an authenticated user or a session key; "
            "call request.session.save() first for anonymous visitors"
        )
    issued = time.time() if now is None else now
    payload: dict[str, Any] = {
        "v": _VERSION,
        "t": task_id,
        "e": math.ceil(issued + max_age),
    }
    if pk is not None:
        payload["u"] = pk
    if session_key:
        payload["s"] = _session_digest(session_key)
    return signing.Signer(salt=TOKEN_SALT).sign_object(payload, compress=False)


def check_subscription_token(
    token: object,
    task_id: str,
    *,
    user: _UserLike | None,
    session_key: str | None,
    now: float | None = None,
) -> None:
    """Return quietly when ``token`` lets this user/session follow ``task_id``.

    Checks, in this order: present, genuine (signature and shape), for this task,
    not expired, for this user and this session (every identity the token is bound
    to must match). A genuine token for another task is reported as such even when
    it has also expired.

    Args:
        token: what the client sent (any JSON value; only a string can pass).
        task_id: the task the client asked to follow.
        user: the connection's user (``scope["user"]``), or ``None``.
        session_key: the connection's session key, or ``None``.
        now: the current Unix time in seconds; ``time.time()`` when ``None``.

    Raises:
        TokenMissing: ``token`` is ``None`` or an empty string.
        TokenInvalid: not a string, too long, malformed, or a bad signature.
        TokenWrongTask: issued for another task.
        TokenExpired: past its expiry.
        TokenWrongUser: bound to another user or session, or to a user while this
            connection is anonymous.
    """
    if token is None or token == "":
        raise TokenMissing("a subscription token is required")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise TokenInvalid("the subscription token is not valid")
    try:
        payload = signing.Signer(salt=TOKEN_SALT).unsign_object(token)
    except (signing.BadSignature, ValueError, UnicodeError):
        raise TokenInvalid("the subscription token is not valid") from None
    if (
        not isinstance(payload, dict)
        or payload.get("v") != _VERSION
        or not isinstance(payload.get("t"), str)
        or isinstance(payload.get("e"), bool)
        or not isinstance(payload.get("e"), int)
    ):
        raise TokenInvalid("the subscription token is not valid")
    if not hmac.compare_digest(payload["t"].encode(), task_id.encode()):
        raise TokenWrongTask("the subscription token was issued for another task")
    current = time.time() if now is None else now
    if current >= payload["e"]:
        raise TokenExpired("the subscription token has expired")
    bound_user = payload.get("u")
    bound_session = payload.get("s")
    if bound_user is None and bound_session is None:
        raise TokenInvalid("the subscription token is not valid")
    if bound_user is not None and bound_user != _user_pk(user):
        raise TokenWrongUser("the subscription token was issued to another user")
    if bound_session is not None and (
        not session_key or not hmac.compare_digest(str(bound_session), _session_digest(session_key))
    ):
        raise TokenWrongUser("the subscription token was issued to another session")
