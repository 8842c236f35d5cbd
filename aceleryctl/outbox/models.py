"""The outbox table: one row per dispatch the broker does not have yet.

A row holds a :class:`~aceleryctl.dispatch.record.Dispatch` serialized with
Celery's (kombu's) serializer registry, and the relay's bookkeeping: how many
attempts were made, when the next may start, the last error (credentials
masked), and whether the row is dead-lettered. Rows are written in the caller's
transaction (on-commit dispatch) or after a refused publish (``durable=True``),
deleted once their message is in the broker.
"""

from __future__ import annotations

from django.db import models

__all__ = ["OutboxMessage", "RelayHeartbeat"]


class OutboxMessage(models.Model):
    """A stored dispatch waiting for the broker (see the module docstring)."""

    class State(models.TextChoices):
        PENDING = "pending", "pending"
        DEAD = "dead", "dead-lettered"

    class Reason(models.TextChoices):
        ON_COMMIT = "on_commit", "on-commit dispatch"
        DURABLE = "durable", "publish refused or unknown (durable)"

    id = models.BigAutoField(primary_key=True)
    task_id = models.CharField(max_length=255, db_index=True)
    task_name = models.CharField(max_length=255)
    payload = models.BinaryField()
    content_type = models.CharField(max_length=128)
    content_encoding = models.CharField(max_length=32)
    reason = models.CharField(max_length=16, choices=Reason.choices)
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    available_at = models.DateTimeField()
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        app_label = "aceleryctl"
        db_table = "aceleryctl_outbox"
        verbose_name = "outbox message"
        indexes = [models.Index(fields=["state", "available_at"], name="aceleryctl_outbox_due")]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] ({self.state})"


class RelayHeartbeat(models.Model):
    """When each relay last finished a round (``health()`` reads it)."""

    name = models.CharField(max_length=255, primary_key=True)
    last_round_at = models.DateTimeField()
    published = models.BigIntegerField(default=0)
    dead_lettered = models.BigIntegerField(default=0)

    class Meta:
        app_label = "aceleryctl"
        db_table = "aceleryctl_relay"
        verbose_name = "outbox relay"

    def __str__(self) -> str:
        return self.name
