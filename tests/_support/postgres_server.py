"""A throwaway PostgreSQL server on 127.0.0.1 for the duration of a test session.

:meth:`PostgresServer.start` makes a new cluster in a temporary directory
(``initdb``), then runs the ``postgres`` binary itself as a child process of this
one, on a free port of 127.0.0.1, with its unix socket in that directory too. The
cluster is disposable: trust authentication (superuser ``postgres``, no password),
``fsync``, ``synchronous_commit`` and ``full_page_writes`` off. :meth:`stop` stops
the server by its own process id (SIGINT, PostgreSQL's fast shutdown; SIGKILL to its
process group after a bounded wait) and deletes the directory.

PostgreSQL refuses to run as root: when this process is root, ``initdb`` and
``postgres`` run as the ``postgres`` OS user (set by :class:`subprocess.Popen`
between fork and exec, so the server's process id is still the child's own), and
the temporary directory is handed to that user. Otherwise they run as the current
user.

The binaries come from ``$ACELERYCTL_PG_BINDIR`` when set, else ``pg_config
--bindir``, else the newest ``/usr/lib/postgresql/<version>/bin`` (Debian's layout),
else ``PATH`` (:func:`find_binaries`).

Timeouts are in seconds. Every call blocks the calling thread; an instance is meant
to be used from one thread (the test session's). Failures to find, initialise or
start the server raise :class:`PostgresServerError`; the client calls raise
psycopg's errors.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from ._process import StopsOnExit, free_port, read_log, stop_process, tail
from .waiting import WaitTimeout, wait_until

__all__ = [
    "BINDIR_ENV",
    "HOST",
    "SUPERUSER",
    "PostgresBinaries",
    "PostgresServer",
    "PostgresServerError",
    "find_binaries",
]

HOST = "127.0.0.1"
#: The cluster's superuser (``initdb -U``), whatever OS user runs the server.
SUPERUSER = "postgres"
#: The OS user the server runs as when this process is root.
OS_USER = "postgres"
#: A directory holding ``initdb`` and ``postgres``, taken before any other.
BINDIR_ENV = "ACELERYCTL_PG_BINDIR"
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"

INSTALL_HINT = (
    "install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql), or set "
    f"{BINDIR_ENV} to the directory holding its initdb and postgres"
)


class PostgresServerError(RuntimeError):
    """The server binaries are missing, or ``initdb`` failed, or the server did not
    start and accept connections in time."""


@dataclass(frozen=True)
class PostgresBinaries:
    """The two programs a throwaway cluster needs."""

    initdb: Path
    postgres: Path


def _binaries_in(directory: Path) -> PostgresBinaries | None:
    initdb, postgres = directory / "initdb", directory / "postgres"
    if all(p.is_file() and os.access(p, os.X_OK) for p in (initdb, postgres)):
        return PostgresBinaries(initdb=initdb, postgres=postgres)
    return None


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        done = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10.0, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = done.stdout.strip()
    return Path(text) if text else None


def _version_key(bindir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: "15" -> (15,), "9.6" -> (9, 6).
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))


def find_binaries(bindir: str | None = None) -> PostgresBinaries:
    """Find ``initdb`` and ``postgres``.

    ``bindir`` (or else ``$ACELERYCTL_PG_BINDIR``), when given, is the only place
    looked at. Otherwise: ``pg_config --bindir`` (Debian's ``pg_config`` comes with
    libpq-dev and may name a directory without the server, so it must hold both
    programs), the newest ``/usr/lib/postgresql/<version>/bin``, then ``PATH``.

    Raises:
        PostgresServerError: nothing found; the message says what to install.
    """
    explicit = bindir or os.environ.get(BINDIR_ENV)
    if explicit:
        found = _binaries_in(Path(explicit))
        if found is None:
            raise PostgresServerError(f"no initdb and postgres in {explicit!r} ({BINDIR_ENV})")
        return found
    candidates: list[Path] = []
    configured = _pg_config_bindir()
    if configured is not None:
        candidates.append(configured)
    debian = [Path(p) for p in Path("/").glob(DEBIAN_BINDIRS.lstrip("/"))]
    candidates.extend(sorted(debian, key=_version_key, reverse=True))
    for directory in candidates:
        found = _binaries_in(directory)
        if found is not None:
            return found
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb is not None and postgres is not None:
        return PostgresBinaries(initdb=Path(initdb), postgres=Path(postgres))
    raise PostgresServerError(
        f"no PostgreSQL server found (initdb and postgres, looked in pg_config --bindir, "
        f"{DEBIAN_BINDIRS} and PATH): {INSTALL_HINT}"
    )


@dataclass(frozen=True)
class _Account:
    """Who the server runs as when this process is root."""

    uid: int
    gid: int
    home: str


def _server_account() -> _Account | None:
    """None when not root (the server runs as this user), else the ``postgres`` user.

    Raises:
        PostgresServerError: root, and no ``postgres`` OS user exists.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(OS_USER)
    except KeyError:
        raise PostgresServerError(
            f"running as root, and there is no {OS_USER!r} OS user to run PostgreSQL as "
            "(it refuses to run as root): install Debian's postgresql package, which "
            "creates it, or run the tests as another user"
        ) from None
    return _Account(uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)


def _reachable_by_others(path: Path) -> bool:
    """Whether every directory above ``path`` lets other users through (o+x)."""
    return all(parent.stat().st_mode & 0o001 for parent in path.resolve().parents)


def _make_workdir(account: _Account | None) -> Path:
    """A new temporary directory the server's user owns."""
    workdir = Path(tempfile.mkdtemp(prefix="aceleryctl-pg-"))
    if account is not None:
        if not _reachable_by_others(workdir):
            shutil.rmtree(workdir, ignore_errors=True)
            raise PostgresServerError(
                f"the {OS_USER!r} OS user cannot reach {workdir.parent} (a directory above "
                "it lacks o+x): point TMPDIR at a directory it can reach, such as /tmp"
            )
        os.chown(workdir, account.uid, account.gid)
    return workdir


def _child_options(account: _Account | None, workdir: Path) -> dict[str, Any]:
    """:class:`subprocess.Popen` keyword arguments that run a program as the server's
    user, in ``workdir``, without libpq settings inherited from this environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    options: dict[str, Any] = {"cwd": workdir, "env": env, "stdin": subprocess.DEVNULL}
    if account is not None:
        env["HOME"] = account.home
        env["USER"] = env["LOGNAME"] = OS_USER
        options.update(user=account.uid, group=account.gid, extra_groups=[])
    return options


class PostgresServer(StopsOnExit):
    """One throwaway PostgreSQL cluster and its ``postgres`` child process, on 127.0.0.1.

    Start it with :meth:`start`; use it as a context manager or call :meth:`stop`.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        port: int,
        workdir: Path,
        account: _Account | None,
    ) -> None:
        self.process = process
        self.port = port
        self.host = HOST
        self.user = SUPERUSER
        #: The temporary directory: ``data/`` (the cluster), the unix socket, the log.
        self.workdir = workdir
        self._account = account

    @classmethod
    def start(
        cls,
        *,
        timeout: float = 60.0,
        attempts: int = 5,
        binaries: PostgresBinaries | None = None,
        max_connections: int = 200,
    ) -> PostgresServer:
        """Make a cluster, start its server on a free port, and wait (bounded) until
        it accepts connections.

        ``timeout`` bounds ``initdb`` and, separately, each attempt to start the
        server (seconds). A server that exits (its port was taken in the meantime) is
        started again on a fresh port, at most ``attempts`` times. ``binaries``
        default to :func:`find_binaries`'s.

        Raises:
            PostgresServerError: no binaries, no ``postgres`` OS user while root,
                ``initdb`` failed or timed out, or no attempt produced a server that
                accepted a connection within ``timeout`` seconds.
        """
        if binaries is None:
            binaries = find_binaries()
        account = _server_account()
        workdir = _make_workdir(account)
        try:
            cls._initdb(binaries, workdir, account, timeout)
            failures: list[str] = []
            for _ in range(attempts):
                server = cls._launch(binaries, workdir, account, free_port(HOST), max_connections)
                if server.wait_ready(timeout):
                    return server
                failures.append(f"port {server.port}: {tail(server.log(), 10)}")
                server._stop_process(timeout=10.0)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        shutil.rmtree(workdir, ignore_errors=True)
        raise PostgresServerError("postgres did not start:\n" + "\n".join(failures))

    @staticmethod
    def _initdb(
        binaries: PostgresBinaries, workdir: Path, account: _Account | None, timeout: float
    ) -> None:
        argv = [
            str(binaries.initdb),
            "--pgdata", str(workdir / "data"),
            "--username", SUPERUSER,
            "--auth", "trust",
            "--encoding", "UTF8",
            "--locale", "C",
            "--no-sync",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                argv, capture_output=True, timeout=timeout, **_child_options(account, workdir)
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresServerError(f"initdb took more than {timeout:.0f} s") from exc
        except OSError as exc:
            raise PostgresServerError(f"initdb could not run: {exc}") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise PostgresServerError(
                f"initdb failed (exit {done.returncode}):\n{tail(output, 20)}"
            )

    @classmethod
    def _launch(
        cls,
        binaries: PostgresBinaries,
        workdir: Path,
        account: _Account | None,
        port: int,
        max_connections: int,
    ) -> PostgresServer:
        settings = {
            "listen_addresses": HOST,
            "unix_socket_directories": str(workdir),
            "max_connections": str(max_connections),
            "shared_buffers": "32MB",
            # Throwaway data: nothing needs to survive a crash.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        argv = [str(binaries.postgres), "-D", str(workdir / "data"), "-p", str(port)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        # The log is opened here (by this user) and inherited: the server only writes it.
        log_fd = os.open(workdir / "postgres.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            process = subprocess.Popen(
                argv,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                # A process group of its own: a final SIGKILL takes the backends too,
                # and a Ctrl-C at the terminal does not reach it.
                start_new_session=True,
                **_child_options(account, workdir),
            )
        finally:
            os.close(log_fd)
        return cls(process, port, workdir, account)

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until a connection succeeds; False if the
        process exited (say, the port was taken) or never accepted one."""
        with contextlib.suppress(WaitTimeout):
            wait_until(
                lambda: not self.is_alive() or self.accepts_connections(),
                timeout=timeout,
                interval=0.05,
            )
        return self.is_alive() and self.accepts_connections()

    def is_alive(self) -> bool:
        """True while the server process runs."""
        return self.process.poll() is None

    def accepts_connections(self) -> bool:
        """True when a connection to the ``postgres`` database answers ``SELECT 1``
        (bounded by libpq's connect timeout, 2 s)."""
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for ``dbname`` (TCP, 127.0.0.1, no password)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:<port>/<dbname>``."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def connect(
        self, dbname: str = "postgres", *, autocommit: bool = False
    ) -> psycopg.Connection[tuple[Any, ...]]:
        """A new psycopg connection to ``dbname`` (connect timeout 5 s); the caller
        closes it (``with server.connect() as conn:``)."""
        return psycopg.connect(self.dsn(dbname), autocommit=autocommit, connect_timeout=5)

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name`` and return its :meth:`dsn`.

        Raises:
            psycopg.errors.DuplicateDatabase: it exists already.
        """
        with self.connect("postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def log(self) -> str:
        """The server's log (its stdout and stderr), or an empty string."""
        return read_log(self.workdir / "postgres.log")

    def _stop_process(self, timeout: float) -> int:
        # SIGINT is PostgreSQL's fast shutdown: open sessions are ended, not awaited.
        return stop_process(self.process, timeout=timeout, sig=signal.SIGINT, kill_group=True)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGINT; SIGKILL to its process group after ``timeout``
        seconds) and remove the cluster's directory. Safe to call twice."""
        self._stop_process(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)
