"""The Django project of ``python -m bench.outbox``: settings, the business model
written beside each dispatch, and the Celery app of each variant.

Every process that uses it (the benchmark's children) is told by environment
variables which variant it runs, where PostgreSQL and Redis listen, and whether
its database connections come from a pool (:mod:`bench.outboxsite.settings`).
"""
