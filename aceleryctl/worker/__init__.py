"""Internal: the worker side of live events and logging (Celery signal receivers,
event building, the retry pre-announcement, the emitter, progress, the
execution-time log), and the run-once guard (``guard*``).

Loaded when a Celery worker starts (:func:`aceleryctl.signals.connect`), never by
``import aceleryctl`` in a web process; the web process imports
:mod:`~aceleryctl.worker.emitter` (with :mod:`~aceleryctl.worker.delivery`),
:mod:`~aceleryctl.worker.layer` and :mod:`~aceleryctl.worker.config` on its first
live ``task.sent``. Nothing here is public API: import from
:mod:`aceleryctl.signals`.
"""
