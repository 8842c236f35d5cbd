"""Shared helpers for the test suite: real processes and servers, bounded waits.

Everything here is test infrastructure, not product code. Each helper starts only
processes it owns and stops them by their own process id.

The benchmarks (``bench/``) start their servers and workers with these helpers
too, so that there is one way to start, wait for and stop them. The dependency
goes one way: nothing here imports ``bench``.
"""
