"""The transactional outbox: dispatches stored in the caller's database until the
broker has them (see docs/durability.md).

Nothing here is imported by ``import aceleryctl``; the Django model lives in
:mod:`aceleryctl.outbox.models` (re-exported by :mod:`aceleryctl.models`, where
Django looks for it).
"""
