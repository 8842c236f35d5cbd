"""The outbox tables: pending dispatches and relay heartbeats (aceleryctl.outbox.models)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="RelayHeartbeat",
            fields=[
                ("name", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("last_round_at", models.DateTimeField()),
                ("published", models.BigIntegerField(default=0)),
                ("dead_lettered", models.BigIntegerField(default=0)),
            ],
            options={
                "verbose_name": "outbox relay",
                "db_table": "aceleryctl_relay",
            },
        ),
        migrations.CreateModel(
            name="OutboxMessage",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("task_id", models.CharField(db_index=True, max_length=255)),
                ("task_name", models.CharField(max_length=255)),
                ("payload", models.BinaryField()),
                ("content_type", models.CharField(max_length=128)),
                ("content_encoding", models.CharField(max_length=32)),
                (
                    "reason",
                    models.CharField(
                        choices=[
                            ("on_commit", "on-commit dispatch"),
                            ("durable", "publish refused or unknown (durable)"),
                        ],
                        max_length=16,
                    ),
                ),
                (
                    "state",
                    models.CharField(
                        choices=[("pending", "pending"), ("dead", "dead-lettered")],
                        default="pending",
                        max_length=8,
                    ),
                ),
                ("attempts", models.PositiveIntegerField(default=0)),
                ("created_at", models.DateTimeField()),
                ("available_at", models.DateTimeField()),
                ("last_attempt_at", models.DateTimeField(blank=True, null=True)),
                ("last_error", models.TextField(blank=True, default="")),
            ],
            options={
                "verbose_name": "outbox message",
                "db_table": "aceleryctl_outbox",
                "indexes": [
                    models.Index(fields=["state", "available_at"], name="aceleryctl_outbox_due")
                ],
            },
        ),
    ]
