"""A Celery app for settings tests (memory transport, no network)."""

from celery import Celery

app = Celery("settings-fixture", broker="memory://", set_as_current=False)

#: A broker on a port nothing listens on: connections are refused at once.
refused = Celery("refused-fixture", broker="redis://127.0.0.1:1/0", set_as_current=False)
refused.conf.broker_transport_options = {"socket_timeout": 1, "socket_connect_timeout": 1}

#: An AMQP broker with Celery's defaults (never connected to in tests).
amqp = Celery("amqp-fixture", broker="amqp://guest@127.0.0.1:1//", set_as_current=False)

#: RabbitMQ with bounded timeouts: nothing to warn about.
amqp_bounded = Celery("amqp-bounded", broker="amqp://guest@127.0.0.1:1//", set_as_current=False)
amqp_bounded.conf.broker_transport_options = {"read_timeout": 5, "write_timeout": 5}

#: RabbitMQ with confirms turned off for Celery's own publishes.
amqp_unconfirmed = Celery("amqp-off", broker="pyamqp://guest@127.0.0.1:1//", set_as_current=False)
amqp_unconfirmed.conf.broker_transport_options = {
    "read_timeout": 5,
    "write_timeout": 5,
    "confirm_publish": False,
}

#: A broker aceleryctl has no wire for.
other = Celery("other-fixture", broker="filesystem://", set_as_current=False)

#: Redis with Celery's defaults: no socket timeouts.
unbounded = Celery("unbounded-fixture", broker="redis://127.0.0.1:1/0", set_as_current=False)
