"""A small ASGI Django project that shows aceleryctl's public API at work.

Run it from the repository root with ``python -m demo_site.run`` (see ``run.py``).
"""
