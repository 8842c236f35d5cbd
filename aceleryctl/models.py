"""Where Django looks for the app's models: the outbox tables
(:mod:`aceleryctl.outbox.models`). Importing it needs a configured Django."""

from aceleryctl.outbox.models import OutboxMessage, RelayHeartbeat

__all__ = ["OutboxMessage", "RelayHeartbeat"]
