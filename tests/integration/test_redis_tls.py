"""TLS and ACL users on the direct wire: ``rediss://user:password@...`` with
``broker_use_ssl``, against a real TLS-only ``redis-server`` whose certificates the
test made (tests/_support/redis_tls.py) and a real worker on the same URL.

* a round trip on the direct path and on the stock path, run by the worker, and
  from the event loop (``loop_publish``) on its own TLS connection; a loop that
  ends while the server does not answer leaves no socket behind (no TLS close
  exchange is waited for);
* a server certificate the client's CA did not sign: a ``BrokerError`` that says
  nothing was sent and names the certificate problem;
* a wrong password: a ``BrokerError`` that says nothing was sent;
* a silent TLS peer (it accepts and never answers the handshake): the call
  returns within its deadline;
* the password (right or wrong) never appears in a log record, an exception
  (any link of its chain), ``health()`` or a dispatch event.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
import traceback
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from aceleryctl import AsyncCeleryController
from aceleryctl.dispatch.listener import DispatchEvent
from aceleryctl.exceptions import BrokerError, TaskDispatchError
from tests._support.redis_server import RedisServer
from tests._support.redis_tls import TlsRedis
from tests._support.tarpit import Tarpit
from tests._support.waiting import wait_until_async
from tests._support.worker import CeleryWorker
from tests.integration import celery_app as shared
from tests.integration._helpers import isolated_app, new_marker, shared_app_worker
from tests.integration.celery_app import record_key

DEADLINE = 1.0  # seconds
SLACK = 0.35  # seconds of scheduling allowed past a deadline on 2 busy cores
RECORD = "aceleryctl_tests.record"


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TlsRedis]:
    executable = os.environ.get("ACELERYCTL_REDIS_SERVER", "redis-server")
    with TlsRedis.start(executable=executable) as server:
        yield server


@pytest.fixture(scope="module")
def tls_worker(tls_redis: TlsRedis, redis_server: RedisServer) -> Iterator[CeleryWorker]:
    """A prefork worker consuming over TLS as the ACL user; records go to the session Redis."""
    env = {shared.BROKER_CA_ENV: str(tls_redis.ca)}
    name = f"tls-{new_marker()}"
    with shared_app_worker(name, tls_redis.url(0), redis_server, env=env) as worker:
        yield worker


class Recorder:
    """A dispatch listener that keeps every event (asserted on below)."""

    def __init__(self) -> None:
        self.events: list[DispatchEvent] = []

    def dispatch_settled(self, event: DispatchEvent) -> None:
        self.events.append(event)

    def pool_changed(self, change: Any) -> None:
        """Not needed here."""

    def breaker_changed(self, change: Any) -> None:
        """Not needed here."""


def make_controller(
    url: str, results_url: str, ssl: dict[str, object] | None, *, loop: bool = False
) -> tuple[AsyncCeleryController, Recorder]:
    app = isolated_app(f"tls-{new_marker()}", url, results_url)
    if ssl is not None:
        app.conf.broker_use_ssl = ssl
    recorder = Recorder()
    ctl = AsyncCeleryController(
        app, dispatch_timeout=DEADLINE, listeners=[recorder], loop_publish=loop
    )
    return ctl, recorder


@pytest.fixture
async def closing() -> AsyncIterator[list[AsyncCeleryController]]:
    made: list[AsyncCeleryController] = []
    yield made
    for ctl in made:
        await ctl.aclose(timeout=DEADLINE * 3)


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """``caplog``, capturing from DEBUG up: no record of any level may hold a secret."""
    caplog.set_level(logging.DEBUG)
    return caplog


def exception_texts(exc: BaseException) -> str:
    """Every link of the chain: messages, reprs and the formatted traceback."""
    parts: list[str] = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(getattr(current, "args", ()))]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def assert_secret_absent(
    secret: str,
    caplog: pytest.LogCaptureFixture,
    error: BaseException | None,
    ctl: AsyncCeleryController,
    recorder: Recorder,
) -> None:
    formatter = logging.Formatter("%(message)s %(args)s")
    for record in caplog.records:
        text = " ".join([formatter.format(record), repr(record.__dict__), record.exc_text or ""])
        assert secret not in text, f"the password reached a log record: {record.getMessage()}"
    if error is not None:
        assert secret not in exception_texts(error), "the password reached an exception"
    assert secret not in repr(ctl.health()), "the password reached health()"
    assert secret not in repr(recorder.events), "the password reached a dispatch event"


async def wait_each_ran(records: Any, markers: list[str], worker: CeleryWorker) -> None:
    """Wait (bounded) until the worker has run the task of each marker exactly once."""
    for marker in markers:
        await wait_until_async(
            lambda m=marker: records.llen(record_key(m)) == 1,
            timeout=30,
            message=lambda: f"not run over TLS; worker log:\n{worker.log_tail(40)}",
        )


async def test_round_trip_over_tls_with_an_acl_user(
    tls_redis: TlsRedis,
    tls_worker: CeleryWorker,
    redis_server: RedisServer,
    closing: list[AsyncCeleryController],
    debug_log: pytest.LogCaptureFixture,
) -> None:
    ctl, recorder = make_controller(tls_redis.url(0), redis_server.url(1), tls_redis.ssl_options())
    closing.append(ctl)
    records = redis_server.client(2)
    try:
        direct, stock = new_marker("tls-direct"), new_marker("tls-stock")
        await ctl.apply_async(ctl.app.tasks[RECORD], (direct,))
        await ctl.send_task(RECORD, (stock,))
        assert [e.path for e in recorder.events] == ["redis", "stock"]
        await wait_each_ran(records, [direct, stock], tls_worker)
    finally:
        records.close()
    assert ctl.health()["wire"] == "redis"
    assert ctl.statistics().direct == 1
    assert_secret_absent(tls_redis.password, debug_log, None, ctl, recorder)


async def test_the_loop_path_writes_over_tls_as_the_acl_user(
    tls_redis: TlsRedis,
    tls_worker: CeleryWorker,
    redis_server: RedisServer,
    closing: list[AsyncCeleryController],
    debug_log: pytest.LogCaptureFixture,
) -> None:
    # LOOP_PUBLISH: the loop's own connection is made like the threads' (TLS with the
    # test's CA, the ACL user), and the writer then reads replies on that TLS transport.
    url, options = tls_redis.url(0), tls_redis.ssl_options()
    ctl, recorder = make_controller(url, redis_server.url(1), options, loop=True)
    closing.append(ctl)
    records = redis_server.client(2)
    markers = [new_marker("tls-loop") for _ in range(3)]
    try:
        for marker in markers:
            await ctl.apply_async(ctl.app.tasks[RECORD], (marker,))
        assert [e.path for e in recorder.events] == ["redis", "redis-loop", "redis-loop"]
        await wait_each_ran(records, markers, tls_worker)
    finally:
        records.close()
    assert ctl.statistics().from_loop == 2
    assert_secret_absent(tls_redis.password, debug_log, None, ctl, recorder)


async def test_a_loop_ending_while_the_server_is_stopped_leaves_no_socket(
    tls_redis: TlsRedis, tls_worker: CeleryWorker, redis_server: RedisServer
) -> None:
    # The loop path's TLS connection belongs to the loop that made it. When that loop
    # ends, the connection is dropped at once: waiting for TLS's close exchange would
    # need loop turns that never come when the peer is slow, and the socket would be
    # left to the garbage collector ("unclosed transport"). The server is stopped
    # (SIGSTOP) as the loop ends, so no reply can arrive in time.
    url, options = tls_redis.url(0), tls_redis.ssl_options()
    ctl, _ = make_controller(url, redis_server.url(1), options, loop=True)
    task = ctl.app.tasks[RECORD]

    async def one_loop() -> int:
        for _ in range(3):
            await ctl.apply_async(task, (new_marker("tls-end"),))
        os.kill(tls_redis.process.pid, signal.SIGSTOP)
        return ctl.statistics().from_loop

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            from_loop = await asyncio.to_thread(asyncio.run, one_loop())
            gc.collect()
    finally:
        os.kill(tls_redis.process.pid, signal.SIGCONT)
    await ctl.aclose(timeout=DEADLINE * 3)
    assert from_loop == 2
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


async def test_a_certificate_from_another_authority_is_refused(
    tls_redis: TlsRedis,
    redis_server: RedisServer,
    closing: list[AsyncCeleryController],
    debug_log: pytest.LogCaptureFixture,
) -> None:
    options = tls_redis.ssl_options(tls_redis.wrong_ca)
    ctl, recorder = make_controller(tls_redis.url(0), redis_server.url(1), options)
    closing.append(ctl)
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        await ctl.apply_async(ctl.app.tasks[RECORD], (new_marker(),))
    assert time.monotonic() - started < DEADLINE + SLACK
    assert caught.value.message_may_exist is False
    assert "nothing was sent" in str(caught.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert "broker_use_ssl" in str(caught.value)  # what to change
    assert_secret_absent(tls_redis.password, debug_log, caught.value, ctl, recorder)


async def test_a_wrong_password_is_refused_and_never_shown(
    tls_redis: TlsRedis,
    redis_server: RedisServer,
    closing: list[AsyncCeleryController],
    debug_log: pytest.LogCaptureFixture,
) -> None:
    wrong = "wrong-" + new_marker()
    url = tls_redis.url(0, password=wrong)
    ctl, recorder = make_controller(url, redis_server.url(1), tls_redis.ssl_options())
    closing.append(ctl)
    errors: list[TaskDispatchError] = []
    for call in (
        ctl.apply_async(ctl.app.tasks[RECORD], (new_marker(),)),
        ctl.send_task(RECORD, (new_marker(),)),
    ):
        with pytest.raises(BrokerError) as caught:
            await call
        errors.append(caught.value)
    for error in errors:
        assert error.message_may_exist is False, str(error)
        assert "username-password" in str(error), str(error)
        assert "check the user and password in the broker URL" in str(error)
        assert_secret_absent(wrong, debug_log, error, ctl, recorder)
    assert {e.outcome.value for e in recorder.events} == {"not_sent"}


async def test_a_silent_tls_peer_costs_at_most_the_deadline(
    redis_server: RedisServer,
    tls_redis: TlsRedis,
    closing: list[AsyncCeleryController],
) -> None:
    with Tarpit() as tarpit:
        url = f"rediss://dispatcher:secret@127.0.0.1:{tarpit.port}/0"
        ctl, _ = make_controller(url, redis_server.url(1), tls_redis.ssl_options())
        closing.append(ctl)
        started = time.monotonic()
        calls = [ctl.apply_async(ctl.app.tasks[RECORD], (new_marker(),)) for _ in range(5)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        elapsed = time.monotonic() - started
    assert all(isinstance(o, TaskDispatchError) for o in outcomes), outcomes
    assert elapsed < DEADLINE + SLACK, f"a silent TLS peer held callers {elapsed:.2f} s"
