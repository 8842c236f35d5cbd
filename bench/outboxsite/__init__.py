"""The Django project of ``python -m bench.outbox`` and ``python -m bench.http_outbox``:
settings, the business model written beside each dispatch, the Celery app of each
variant, and the views the HTTP benchmark serves with uvicorn.

Every process that uses it (the benchmarks' children and servers) is told by environment
variables which variant it runs, where PostgreSQL and Redis listen, and whether
its database connections come from a pool (:mod:`bench.outboxsite.settings`).
"""
