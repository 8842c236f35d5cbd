"""REPLICA_ACKS: a batch the replicas did not acknowledge in time is unknown.

The wire reports it as ``UNKNOWN`` with :class:`ReplicaAckTimeout`; the engine
turns that into :class:`DispatchTimeout` (the primary holds the message, a
replica may not), told to the breaker as the broker's fault. The real ``WAIT``
round trip is tested against real replicas in
tests/integration/faults/test_sentinel_failover.py.
"""

from __future__ import annotations

import ssl

import redis

from aceleryctl.dispatch.failures import Failures
from aceleryctl.dispatch.listener import DispatchOutcome
from aceleryctl.dispatch.record import Attempt, Dispatch, DispatchKind
from aceleryctl.exceptions import DispatchTimeout
from aceleryctl.wires.base import WireOutcome
from aceleryctl.wires.connections import ReplicaAckTimeout, classify_failure


class RecordingPermit:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def record_success(self, duration: float) -> None:
        self.calls.append("success")

    def record_failure(self, duration: float) -> None:
        self.calls.append("failure")

    def release(self) -> None:
        self.calls.append("release")


def attempt() -> Attempt:
    dispatch = Dispatch(DispatchKind.TASK, "proj.add", None, (1, 2), {}, {}, 2.0, "delay")
    return Attempt(dispatch, 12.0, 10.0)


def test_a_shortfall_of_replica_acks_is_a_dispatch_timeout() -> None:
    behind = ReplicaAckTimeout(wanted=1, acknowledged=0, waited=1.5)
    outcome = WireOutcome(DispatchOutcome.UNKNOWN, None, behind, True, "celery", "redis")
    permit = RecordingPermit()
    error = Failures.from_wire(attempt(), outcome, permit)
    assert isinstance(error, DispatchTimeout)
    assert error.timeout == 2.0
    assert "0 of 1 replica(s) acknowledged the write within 1.5 s" in str(error)
    assert "REPLICA_ACKS" in str(error)
    assert "the outcome is unknown" in str(error)
    assert permit.calls == ["failure"]  # the breaker hears of it
    assert Failures.log_outcome(error, outcome.outcome) == "unknown"


def test_failure_hints_name_what_to_change() -> None:
    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] self-signed")
    refused_tls = ConnectionError("connecting failed")
    refused_tls.__cause__ = verify
    auth = redis.exceptions.AuthenticationError("invalid username-password pair")
    permit = RecordingPermit()
    for cause, hint in ((refused_tls, "broker_use_ssl"), (auth, "user and password")):
        outcome = classify_failure(cause, "redis", "celery")
        error = Failures.from_wire(attempt(), outcome, permit)
        assert hint in str(error)
