"""A tiny ASGI Django project served by uvicorn for ``python -m bench.http``.

No database, no middleware, no installed apps: one view per way of dispatching,
so that what differs between the views is the dispatch and nothing else.
"""
