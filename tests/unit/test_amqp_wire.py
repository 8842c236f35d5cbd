"""The AMQP wire without a broker: which wire a broker URL gets, and the confirm
bookkeeping (delivery tags, multiple acks, nacks, returns). The wire against a real
RabbitMQ is in ``tests/integration/amqp``."""

from __future__ import annotations

from typing import Any

import amqp
import pytest
from celery import Celery

from aceleryctl.wires import wire_for
from aceleryctl.wires.amqp import AmqpWire
from aceleryctl.wires.amqp_confirms import ACKED, NACKED, Confirms, amqp_transport_options
from aceleryctl.wires.connections import TransportPolicy
from aceleryctl.wires.stock import StockWire

POLICY = TransportPolicy.for_deadline(2.0)


@pytest.mark.parametrize("url", ["amqp://guest@127.0.0.1:1//", "pyamqp://guest@127.0.0.1:1//"])
def test_amqp_urls_get_the_amqp_wire_without_connecting(url: str) -> None:
    app = Celery("amqp-wire", broker=url, set_as_current=False)
    wire = wire_for(app, POLICY)
    assert isinstance(wire, AmqpWire)
    assert wire.direct is not None
    assert wire.describe() == {
        "wire": "amqp",
        "bounded": True,
        "confirmed": True,
        "direct_publish": True,
    }
    assert not wire.connected()
    stock_only = wire_for(app, POLICY, direct=False)
    assert isinstance(stock_only, AmqpWire)
    assert stock_only.direct is None


def test_other_transports_keep_the_stock_wire() -> None:
    app = Celery("fs-wire", broker="filesystem://", set_as_current=False)
    assert isinstance(wire_for(app, POLICY), StockWire)


def test_amqp_transport_options_bound_reads_and_writes_and_leave_confirms_to_the_wire() -> None:
    options = amqp_transport_options(POLICY, {"confirm_publish": True, "max_retries": 5, "x": 1})
    assert options == {
        "x": 1,
        "read_timeout": 2.0,
        "write_timeout": 2.0,
        "max_retries": 0,
        "confirm_publish": False,
    }


def _message(task_id: str) -> Any:
    return amqp.Message(b"{}", correlation_id=task_id)


def test_confirms_number_messages_and_settle_single_and_multiple_acks() -> None:
    confirms = Confirms()
    for n in range(5):
        confirms.count(_message(f"id-{n}"))
    assert confirms.published == 5
    batch = range(1, 6)
    assert confirms.awaiting(batch)
    confirms.ack(2, False)
    assert confirms.settled == {2: ACKED}
    confirms.ack(3, True)  # 1 and 3 (2 already settled)
    confirms.nack(5, False)
    assert confirms.settled == {1: ACKED, 2: ACKED, 3: ACKED, 5: NACKED}
    assert confirms.awaiting(batch)
    assert not confirms.awaiting(range(1, 4))
    confirms.nack(4, True)
    assert confirms.settled[4] is NACKED
    assert not confirms.awaiting(batch)
    confirms.ack(9, True)  # tags it never published: ignored
    confirms.forget(batch)
    assert confirms.settled == {}
    assert confirms.pending == {}


def test_a_return_marks_the_earliest_pending_message_with_its_task_id() -> None:
    confirms = Confirms()
    confirms.count(_message("a"))
    confirms.count(_message("b"))
    confirms.count(_message("b"))
    confirms.returned_message("NO_ROUTE", "ex", "rk", _message("b"))
    assert list(confirms.returned) == [2]
    confirms.returned_message("NO_ROUTE", "ex", "rk", _message("b"))
    assert list(confirms.returned) == [2, 3]
    confirms.returned_message("NO_ROUTE", "ex", "rk", _message("zzz"))
    assert list(confirms.returned) == [2, 3]
    assert "exchange 'ex', routing key 'rk'" in confirms.returned[2]


def test_health_names_the_amqp_wire() -> None:
    from aceleryctl import AsyncCeleryController

    app = Celery("amqp-health", broker="amqp://guest@127.0.0.1:1//", set_as_current=False)
    ctl = AsyncCeleryController(app, dispatch_timeout=1.0)
    try:
        health = ctl.health()
        assert (health["wire"], health["bounded_transport"]) == ("amqp", True)
    finally:
        ctl.sync.close(1.0)
