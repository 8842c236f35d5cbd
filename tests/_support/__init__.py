"""Shared helpers for the test suite: real processes and servers, bounded waits.

Everything here is test infrastructure, not product code. Each helper starts only
processes it owns and stops them by their own process id.
"""
