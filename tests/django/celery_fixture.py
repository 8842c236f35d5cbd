"""A Celery app for settings tests (memory transport, no network)."""

from celery import Celery

app = Celery("settings-fixture", broker="memory://", set_as_current=False)

#: A broker on a port nothing listens on: connections are refused at once.
refused = Celery("refused-fixture", broker="redis://127.0.0.1:1/0", set_as_current=False)
refused.conf.broker_transport_options = {"socket_timeout": 1, "socket_connect_timeout": 1}

#: An AMQP broker: not bounded by aceleryctl (never connected to in tests).
amqp = Celery("amqp-fixture", broker="amqp://guest@127.0.0.1:1//", set_as_current=False)

#: Redis with Celery's defaults: no socket timeouts.
unbounded = Celery("unbounded-fixture", broker="redis://127.0.0.1:1/0", set_as_current=False)
