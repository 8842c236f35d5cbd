"""A real RabbitMQ node on 127.0.0.1 for the duration of a test session.

:meth:`RabbitMQServer.start` runs Debian's ``rabbitmq-server`` script (the one in
``/usr/lib/rabbitmq/bin``, which runs as the calling user, root included, unlike
``/usr/sbin``'s wrapper that switches to the ``rabbitmq`` user) with an environment
of its own, so that two test sessions on one machine never meet:

* its own node name (``aceleryctl-<pid>-<random>@localhost``), Erlang cookie
  (``HOME`` is the node's temporary directory) and data and log directories there;
* its own ports, all free ones of 127.0.0.1: AMQP, Erlang distribution, and an
  ``epmd`` this module starts itself (so that it is stopped by its own id, rather
  than left behind as a daemon), plus a range for ``rabbitmqctl``'s own node;
* no plugins (management off), a minimal config file;
* a lower scheduling priority (``nice``): a node booting (``start_app``, a
  restart) keeps both cores of a small machine busy for seconds, and the tests
  judge the event loop of the client process beside it.

:meth:`stop_app` / :meth:`start_app` (``rabbitmqctl``), :meth:`pause` /
:meth:`resume` (SIGSTOP / SIGCONT of the ``beam.smp`` process), :meth:`kill`
(SIGKILL) and :meth:`restart` (same node name, ports and data directory) are the
faults the tests inject. Timeouts are in seconds; every call blocks the calling
thread; an instance belongs to one thread (the test session's). Failures to find
or start the server raise :class:`RabbitMQServerError`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ._process import StopsOnExit, accepts, free_port, read_log, stop_process, tail
from .waiting import WaitTimeout, wait_until

__all__ = ["BINDIR_ENV", "RabbitMQServer", "RabbitMQServerError", "find_bindir"]

HOST = "127.0.0.1"
#: A directory holding ``rabbitmq-server`` and ``rabbitmqctl``, taken before any other.
BINDIR_ENV = "ACELERYCTL_RABBITMQ_BINDIR"
DEBIAN_BINDIR = "/usr/lib/rabbitmq/bin"
INSTALL_HINT = (
    "install RabbitMQ (Debian/Ubuntu: apt-get install rabbitmq-server), or set "
    f"{BINDIR_ENV} to the directory holding its rabbitmq-server and rabbitmqctl scripts"
)

#: The node and its command-line tool run below the tests' own priority.
_NICE = ("nice", "-n", "10") if shutil.which("nice") else ()

_CONFIG = """\
log.console = false
log.file.level = warning
disk_free_limit.absolute = 1MB
"""


class RabbitMQServerError(RuntimeError):
    """RabbitMQ is not installed, or the node did not start in time."""


def find_bindir() -> Path:
    """The directory of ``rabbitmq-server`` and ``rabbitmqctl``.

    Raises:
        RabbitMQServerError: not found; the message says what to install.
    """
    explicit = os.environ.get(BINDIR_ENV)
    for candidate in filter(None, [explicit, DEBIAN_BINDIR]):
        directory = Path(candidate)
        if (directory / "rabbitmq-server").is_file() and (directory / "rabbitmqctl").is_file():
            return directory
        if explicit:
            raise RabbitMQServerError(f"no rabbitmq-server in {explicit!r} ({BINDIR_ENV})")
    raise RabbitMQServerError(f"RabbitMQ not found: {INSTALL_HINT}")


def _all_stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (Linux ``/proc``)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True  # gone: nothing runs
    for tid in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # that thread ended
        if stat[stat.rindex(")") + 2] not in "Tt":
            return False
    return True


class RabbitMQServer(StopsOnExit):
    """One RabbitMQ node (and its ``epmd``) started by this process."""

    def __init__(self, bindir: Path, workdir: Path) -> None:
        self.bindir = bindir
        self.workdir = workdir
        self.nodename = f"aceleryctl-{os.getpid()}-{secrets.token_hex(3)}@localhost"
        self.port = free_port(HOST)
        self.dist_port = free_port(HOST)
        self.epmd_port = free_port(HOST)
        self.ctl_port = free_port(HOST)
        self.process: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self._paused = False
        (workdir / "rabbitmq.conf").write_text(_CONFIG)
        (workdir / "enabled_plugins").write_text("[].\n")
        (workdir / "rabbitmq-env.conf").write_text("")

    @classmethod
    def start(cls, *, startup_timeout: float = 60.0) -> RabbitMQServer:
        """Start a node on free ports and wait (bounded) until it accepts AMQP clients.

        Raises:
            RabbitMQServerError: RabbitMQ is missing or the node did not start.
        """
        bindir = find_bindir()
        server = cls(bindir, Path(tempfile.mkdtemp(prefix="aceleryctl-rabbitmq-")))
        try:
            server._start_epmd()
            server._launch(startup_timeout)
        except BaseException:
            server.stop()
            raise
        return server

    # -- environment -------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment ``rabbitmq-server`` and ``rabbitmqctl`` run with."""
        w = self.workdir
        return {
            **os.environ,
            "HOME": str(w),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_port),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_port),
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_PID_FILE": str(w / "beam.pid"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
        }

    def url(self, vhost: str = "") -> str:
        """``amqp://guest:guest@127.0.0.1:<port>//`` (the default virtual host)."""
        return f"amqp://guest:guest@{HOST}:{self.port}/{vhost}"

    def add_vhost(self, name: str) -> str:
        """Create virtual host ``name`` (``guest`` may use it); return its URL."""
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return self.url(name)

    # -- processes ---------------------------------------------------------------

    def _start_epmd(self) -> None:
        epmd = shutil.which("epmd") or next(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"), None)
        if epmd is None:
            raise RabbitMQServerError(f"epmd not found: {INSTALL_HINT}")
        self.epmd = subprocess.Popen(
            [str(epmd), "-port", str(self.epmd_port), "-address", HOST],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: accepts(self.epmd_port), timeout=10, message="epmd did not start")

    def _launch(self, timeout: float) -> None:
        (self.workdir / "beam.pid").unlink(missing_ok=True)
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 (the child keeps it)
        try:
            self.process = subprocess.Popen(
                [*_NICE, str(self.bindir / "rabbitmq-server")],
                cwd=self.workdir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        with contextlib.suppress(WaitTimeout):
            wait_until(
                lambda: self.process is None or self.process.poll() is not None or self.ready(),
                timeout=timeout,
                interval=0.1,
            )
        if not self.ready():
            raise RabbitMQServerError(f"RabbitMQ did not start:\n{tail(self.log(), 30)}")
        self.ctl("await_startup", "--timeout", str(int(timeout)), timeout=timeout + 5)

    def ready(self) -> bool:
        """Whether the node's AMQP port accepts connections."""
        return accepts(self.port)

    def beam_pid(self) -> int:
        """The process id of the node's Erlang VM (``beam.smp``)."""
        return int((self.workdir / "beam.pid").read_text().strip())

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <node> <args>``; return its output.

        Raises:
            RabbitMQServerError: it failed or took longer than ``timeout`` seconds.
        """
        argv = [*_NICE, str(self.bindir / "rabbitmqctl"), "-n", self.nodename, *args]
        try:
            done = subprocess.run(
                argv, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise RabbitMQServerError(f"rabbitmqctl {' '.join(args)} timed out") from exc
        if done.returncode != 0:
            raise RabbitMQServerError(
                f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
                f"{done.stdout}{done.stderr}"
            )
        return done.stdout

    # -- faults ------------------------------------------------------------------

    def stop_app(self) -> None:
        """``rabbitmqctl stop_app``: the node stays up, AMQP connections are closed."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        """``rabbitmqctl start_app``, then wait until AMQP clients are accepted."""
        self.ctl("start_app")
        wait_until(self.ready, timeout=30, interval=0.05, message="AMQP port did not reopen")

    def pause(self) -> None:
        """Freeze the node (SIGSTOP): connections stay open, nothing is answered.

        Returns once every thread of the VM is stopped: ``kill`` only queues the
        signal, and a scheduler thread busy on the other core can still answer a
        request sent right after it (seen once: a probe sent after ``pause()``
        was answered).
        """
        pid = self.beam_pid()
        os.kill(pid, signal.SIGSTOP)
        self._paused = True
        wait_until(
            lambda: _all_stopped(pid), timeout=10, interval=0.01, message="the VM did not stop"
        )

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        os.kill(self.beam_pid(), signal.SIGCONT)
        self._paused = False

    def kill(self) -> None:
        """SIGKILL the node's VM (no shutdown; connections drop)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.beam_pid(), signal.SIGKILL)
        if self.process is not None:
            stop_process(self.process, timeout=10, kill_group=True)
        wait_until(lambda: not self.ready(), timeout=10, message="the AMQP port stayed open")

    def restart(self, timeout: float = 60.0) -> None:
        """Start the node again with the same name, ports and data (after :meth:`kill`)."""
        self._launch(timeout)

    def log(self) -> str:
        """The script's output and the node's log file."""
        node_log = self.workdir / "log" / f"{self.nodename}.log"
        return read_log(self.workdir / "server.log") + read_log(node_log)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the node (SIGTERM to its VM, then SIGKILL to its process group after
        ``timeout`` seconds), then ``epmd``; remove the working directory."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                pid = self.beam_pid()
                if self._paused:
                    os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(deadline - time.monotonic(), 0.1))
            stop_process(process, timeout=5, kill_group=True)
        if self.epmd is not None:
            stop_process(self.epmd, timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)
