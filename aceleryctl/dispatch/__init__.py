"""Internal: the dispatch flow (record, builder, engine, pool, listeners, on-commit).

Nothing here is public API; import from :mod:`aceleryctl`, :mod:`aceleryctl.sync`,
:mod:`aceleryctl.exceptions` and :mod:`aceleryctl.testing`.
"""
