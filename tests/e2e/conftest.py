"""Browser end-to-end tests: headless Chromium drives the demo, served for real.

Session scope: a ``redis-server`` on 127.0.0.1, then ``python -m demo_site.run``
pointed at it (``REDIS_URL``) on a free port: migrations, a Celery worker and uvicorn,
all children of that runner, which stops them when it gets SIGTERM. One Chromium
(Debian's ``/usr/bin/chromium``, driven by Playwright) for the session, a fresh
browser context (cookies, so a session of its own) per test.

Every wait is bounded (Playwright's ``expect`` and ``wait_for_*`` with timeouts).
Screenshots go to ``artifacts/e2e/`` at the repository root.

Without ``redis-server`` or Chromium the tests fail, loudly; they are skipped only
when ``ACELERYCTL_ALLOW_SKIP=1`` is set.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests._support._process import free_port, read_log, spawn, stop_process, tail
from tests._support.redis_server import RedisServer
from tests._support.reports import attach_on_failure, mark_folder
from tests._support.waiting import WaitTimeout, wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
ARTIFACTS = REPO_ROOT / "artifacts" / "e2e"
CHROMIUM = os.environ.get("ACELERYCTL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Seconds for the demo (runner, migrations, worker, web server) to come up.
STARTUP_TIMEOUT = 60.0

_server_logs: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: drives the demo in headless Chromium (real Redis, worker, ASGI server)"
    )


#: Every test in this folder is marked ``e2e``.
pytest_collection_modifyitems = mark_folder(HERE, "e2e")


def _demo_output() -> list[tuple[str, str]]:
    """The demo's output (runner, worker, uvicorn), for a failed e2e test's report."""
    sections = []
    for path in _server_logs:
        with contextlib.suppress(OSError):
            sections.append(("demo output", tail(path.read_text(errors="replace"), 80)))
    return sections


pytest_runtest_makereport = attach_on_failure(HERE, _demo_output)


def _missing(what: str) -> None:
    message = f"{what}; set ACELERYCTL_ALLOW_SKIP=1 to skip the browser tests instead"
    if os.environ.get("ACELERYCTL_ALLOW_SKIP") == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


@dataclass(frozen=True)
class Demo:
    """The demo being served: its base URL (ends with ``/``)."""

    base_url: str
    log_path: Path

    def log(self) -> str:
        return read_log(self.log_path)


def _answers(url: str) -> bool:
    # No proxy: the demo is on 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2.0) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def e2e_redis() -> Iterator[RedisServer]:
    """A ``redis-server`` for the session (``$ACELERYCTL_REDIS_SERVER``, else on PATH)."""
    executable = os.environ.get("ACELERYCTL_REDIS_SERVER", "redis-server")
    if shutil.which(executable) is None:
        _missing(f"{executable} is not on PATH (apt-get install redis-server)")
    server = RedisServer.start(executable=executable)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def demo(e2e_redis: RedisServer) -> Iterator[Demo]:
    """``python -m demo_site.run`` on a free 127.0.0.1 port, against the session's Redis.

    Ready once the page's status endpoint answers and the worker has said ``ready``.
    Stopped with SIGTERM to the runner, which stops uvicorn, the worker (each by its
    own id); SIGKILL to the runner's own process group if it does not exit in time.
    """
    workdir = Path(tempfile.mkdtemp(prefix="aceleryctl-e2e-"))
    log_path = workdir / "demo.log"
    port = free_port()
    env = {
        "REDIS_URL": e2e_redis.url(0),
        "DEMO_DATA_DIR": str(workdir / "data"),
        "DEMO_FAULT_SWITCH": "1",
        "DJANGO_SETTINGS_MODULE": "demo_site.settings",
    }
    argv = [sys.executable, "-m", "demo_site.run", "--host", "127.0.0.1", "--port", str(port)]
    process = spawn(argv, env=env, cwd=REPO_ROOT, log_path=log_path).process
    _server_logs.append(log_path)
    server = Demo(f"http://127.0.0.1:{port}/", log_path)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                log = tail(server.log())
                raise AssertionError(f"the demo exited ({process.returncode}):\n{log}")
            return _answers(server.base_url + "api/status/") and bool(
                re.search(r"@\S+ ready\.", server.log())
            )

        try:
            wait_until(ready, timeout=STARTUP_TIMEOUT, interval=0.1)
        except WaitTimeout:
            pytest.fail(f"the demo did not come up in {STARTUP_TIMEOUT:g} s:\n{tail(server.log())}")
        yield server
    finally:
        # The runner stops its children in order on SIGTERM (web, worker).
        stop_process(process, timeout=30, kill_group=True)
        _server_logs.remove(log_path)
        shutil.rmtree(workdir, ignore_errors=True)


# Module scope, not session: Playwright's sync API keeps an event loop marked as
# running on the main thread while it is alive, and the async tests of every other
# module (pytest-asyncio) cannot run a loop of their own until it has stopped.
# pytest-randomly keeps a module's tests together, so this ends with the module.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Headless Chromium from Debian (Playwright cannot download its own here)."""
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def context(browser: Browser, demo: Demo) -> Iterator[BrowserContext]:
    """A fresh browser context (its own cookies, so its own Django session)."""
    ctx = browser.new_context(base_url=demo.base_url, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page whose JavaScript errors fail the test."""
    tab = context.new_page()
    errors: list[Any] = []
    tab.on("pageerror", lambda error: errors.append(error))
    try:
        yield tab
    finally:
        tab.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """``artifacts/e2e/`` at the repository root (gitignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def live_broker(demo: Demo) -> Iterator[None]:
    """Put the demo's dead-broker switch back on ``live`` after the test."""
    yield
    # A fresh session for the CSRF cookie: the test's context may be closed already.
    import http.cookiejar
    import json

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(jar)
    )
    opener.open(demo.base_url, timeout=10).close()
    token = next(c.value for c in jar if c.name == "csrftoken")
    switch = urllib.request.Request(
        demo.base_url + "api/demo/broker/",
        data=json.dumps({"mode": "live"}).encode(),
        headers={"Content-Type": "application/json", "X-CSRFToken": token},
        method="POST",
    )
    opener.open(switch, timeout=10).close()
