"""Settings for the whole suite.

Hypothesis runs without a per-example deadline and without its "too slow" health
check: both judge wall-clock time, and on a shared 2-core machine one garbage
collection or a neighbour's burst can make a single draw take a second. The suite
asserts behaviour, never speed.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("aceleryctl", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("aceleryctl")
