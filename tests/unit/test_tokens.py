"""Subscription tokens: bound to a task, a user or session, and an expiry; each refusal
is its own exception with its own close code."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest
from django.core import signing
from django.test import override_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from aceleryctl.tokens import (
    MAX_TOKEN_LENGTH,
    TOKEN_SALT,
    SubscriptionRefused,
    TokenExpired,
    TokenInvalid,
    TokenMissing,
    TokenWrongTask,
    TokenWrongUser,
    check_subscription_token,
    make_subscription_token,
)

NOW = 1_800_000_000.0
TASK = "3f1c1f5e-0d7a-4d0e-9a55-0f6c4b1e2a10"


@dataclass(frozen=True)
class User:
    pk: Any
    is_authenticated: bool = True


ALICE = User(7)
BOB = User(8)
ANONYMOUS = User(None, is_authenticated=False)


def _payload(token: str) -> dict[str, Any]:
    encoded = token.rsplit(":", 1)[0]
    padded = encoded + "=" * (-len(encoded) % 4)
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return data


def test_user_token_round_trip() -> None:
    token = make_subscription_token(TASK, user=ALICE, now=NOW)
    check_subscription_token(token, TASK, user=ALICE, session_key=None, now=NOW + 10)
    # The session does not matter to a token bound to a user only.
    check_subscription_token(token, TASK, user=ALICE, session_key="other", now=NOW)


def test_session_token_round_trip_and_the_key_never_appears_in_it() -> None:
    key = "k3yk3yk3yk3yk3yk3yk3yk3yk3yk3yk3"
    token = make_subscription_token(TASK, session_key=key, now=NOW)
    check_subscription_token(token, TASK, user=ANONYMOUS, session_key=key, now=NOW)
    assert key not in token
    assert key not in json.dumps(_payload(token))


def test_close_codes_are_as_documented() -> None:
    assert TokenMissing.close_code == 4401
    assert TokenInvalid.close_code == 4403
    assert TokenWrongTask.close_code == 4403
    assert TokenWrongUser.close_code == 4403
    assert TokenExpired.close_code == 4419
    for cls in (TokenMissing, TokenInvalid, TokenWrongTask, TokenWrongUser, TokenExpired):
        assert issubclass(cls, SubscriptionRefused)


@pytest.mark.parametrize("token", [None, ""])
def test_missing(token: object) -> None:
    with pytest.raises(TokenMissing):
        check_subscription_token(token, TASK, user=ALICE, session_key=None, now=NOW)


def test_tampered_payload_is_invalid() -> None:
    token = make_subscription_token(TASK, user=ALICE, now=NOW)
    payload = _payload(token)
    payload["u"] = "8"  # try to hand the token to Bob
    forged = (
        base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())
        .decode()
        .rstrip("=")
    )
    tampered = forged + ":" + token.rsplit(":", 1)[1]
    with pytest.raises(TokenInvalid):
        check_subscription_token(tampered, TASK, user=BOB, session_key=None, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        42,
        {"t": TASK},
        ["x"],
        "not-a-token",
        "a" * (MAX_TOKEN_LENGTH + 1),
        signing.dumps({"v": 1, "t": TASK, "e": 2_000_000_000, "u": "7"}),  # no salt
        signing.Signer(salt="another.purpose").sign_object(
            {"v": 1, "t": TASK, "e": 2_000_000_000, "u": "7"}
        ),
        signing.Signer(salt=TOKEN_SALT).sign_object({"v": 2, "t": TASK, "e": 2_000_000_000}),
        signing.Signer(salt=TOKEN_SALT).sign_object({"v": 1, "t": TASK, "e": 2_000_000_000}),
        signing.Signer(salt=TOKEN_SALT).sign_object({"v": 1, "t": TASK, "e": "soon", "u": "7"}),
        signing.Signer(salt=TOKEN_SALT).sign_object(["v", 1]),
    ],
)
def test_malformed_or_foreign_tokens_are_invalid(token: object) -> None:
    with pytest.raises(TokenInvalid):
        check_subscription_token(token, TASK, user=ALICE, session_key="s", now=NOW)


def test_token_signed_with_another_secret_key_is_invalid() -> None:
    with override_settings(SECRET_KEY="someone-else's-key-entirely-different"):
        token = make_subscription_token(TASK, user=ALICE, now=NOW)
    with pytest.raises(TokenInvalid):
        check_subscription_token(token, TASK, user=ALICE, session_key=None, now=NOW)


def test_token_signed_with_a_rotated_key_still_passes() -> None:
    with override_settings(SECRET_KEY="the-old-key-that-was-rotated-out-recently"):
        token = make_subscription_token(TASK, user=ALICE, now=NOW)
    with override_settings(
        SECRET_KEY="the-new-key-after-rotation-of-the-secret",
        SECRET_KEY_FALLBACKS=["the-old-key-that-was-rotated-out-recently"],
    ):
        check_subscription_token(token, TASK, user=ALICE, session_key=None, now=NOW)


def test_wrong_task() -> None:
    token = make_subscription_token(TASK, user=ALICE, now=NOW)
    with pytest.raises(TokenWrongTask):
        check_subscription_token(token, "another-task", user=ALICE, session_key=None, now=NOW)
    # Wrong task is reported even when the token has also expired.
    with pytest.raises(TokenWrongTask):
        check_subscription_token(token, "another-task", user=ALICE, session_key=None, now=NOW * 2)


def test_expiry_is_exclusive_and_rounded_up_to_a_second() -> None:
    token = make_subscription_token(TASK, user=ALICE, max_age=60.2, now=NOW)
    check_subscription_token(token, TASK, user=ALICE, session_key=None, now=NOW + 60.9)
    with pytest.raises(TokenExpired):
        check_subscription_token(token, TASK, user=ALICE, session_key=None, now=NOW + 61)


@pytest.mark.parametrize(
    ("user", "session_key"),
    [(BOB, None), (ANONYMOUS, None), (None, None), (User("7", is_authenticated=False), None)],
)
def test_user_token_refused_to_anyone_else(user: User | None, session_key: str | None) -> None:
    token = make_subscription_token(TASK, user=ALICE, now=NOW)
    with pytest.raises(TokenWrongUser):
        check_subscription_token(token, TASK, user=user, session_key=session_key, now=NOW)


@pytest.mark.parametrize("session_key", [None, "", "another-session"])
def test_session_token_refused_to_other_sessions(session_key: str | None) -> None:
    token = make_subscription_token(TASK, session_key="mine", now=NOW)
    with pytest.raises(TokenWrongUser):
        check_subscription_token(token, TASK, user=ALICE, session_key=session_key, now=NOW)


def test_token_bound_to_both_needs_both() -> None:
    token = make_subscription_token(TASK, user=ALICE, session_key="mine", now=NOW)
    check_subscription_token(token, TASK, user=ALICE, session_key="mine", now=NOW)
    with pytest.raises(TokenWrongUser):
        check_subscription_token(token, TASK, user=ALICE, session_key="theirs", now=NOW)
    with pytest.raises(TokenWrongUser):
        check_subscription_token(token, TASK, user=BOB, session_key="mine", now=NOW)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"user": ANONYMOUS}, "bound to an authenticated user or a session key"),
        ({}, "bound to an authenticated user or a session key"),
        ({"user": ALICE, "max_age": 0}, "max_age"),
        ({"user": ALICE, "max_age": float("inf")}, "max_age"),
        ({"user": ALICE, "max_age": float("nan")}, "max_age"),
    ],
)
def test_make_refuses_unbound_or_unbounded_tokens(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        make_subscription_token(TASK, **kwargs)


def test_make_refuses_an_empty_task_id() -> None:
    with pytest.raises(ValueError, match="task_id"):
        make_subscription_token("", user=ALICE)


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0), replacement=st.characters(codec="ascii"))
def test_any_single_character_change_is_refused(position: int, replacement: str) -> None:
    token = make_subscription_token(TASK, user=ALICE, now=NOW)
    position %= len(token)
    changed = token[:position] + replacement + token[position + 1 :]
    if changed == token:
        return
    with pytest.raises(SubscriptionRefused):
        check_subscription_token(changed, TASK, user=ALICE, session_key=None, now=NOW)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=2000), st.integers(), st.binary(max_size=50)))
def test_arbitrary_input_only_ever_raises_a_refusal(token: object) -> None:
    with pytest.raises(SubscriptionRefused):
        check_subscription_token(token, TASK, user=ALICE, session_key="s", now=NOW)
