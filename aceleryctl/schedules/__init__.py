"""Checks of Celery beat schedules against the tasks a project registers.

An entry naming a task that no longer exists makes beat send a message no worker
can run, and nothing fails where anyone looks. :mod:`.entries` and
:mod:`.database` read the entries (``beat_schedule`` and django-celery-beat's
table), :mod:`.findings` and :mod:`.hotspots` judge them; the management command
``aceleryctl_check_schedule`` and the system check ``aceleryctl.W006`` report.
"""
