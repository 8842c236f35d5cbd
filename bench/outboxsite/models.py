"""The business row each request writes in the same transaction as its dispatch."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    """A small row of the kind a view writes before it enqueues work about it."""

    id = models.BigAutoField(primary_key=True)
    number = models.IntegerField()
    customer = models.CharField(max_length=64)
    total_cents = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "outboxsite"
        db_table = "bench_order"

    def __str__(self) -> str:
        return f"order {self.number}"
