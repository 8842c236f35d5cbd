"""A real ``redis-server`` that speaks only TLS and knows only one ACL user.

Certificates are made for the test by the ``openssl`` command-line tool: a
certificate authority and a server certificate it signs for ``127.0.0.1``, plus a
second, unrelated authority (:attr:`TlsRedis.wrong_ca`) that a client may be told
to trust instead. The server listens on a free port with ``--port 0 --tls-port``,
does not ask clients for certificates, has its ``default`` user switched off and
one user (:data:`USERNAME`) with a password, and is stopped by its process id.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

import redis

from ._process import StopsOnExit, free_port, read_log, stop_process, tail
from .waiting import WaitTimeout, wait_until

__all__ = ["USERNAME", "TlsRedis", "TlsRedisError", "make_certificates"]

HOST = "127.0.0.1"
#: The ACL user the server knows.
USERNAME = "dispatcher"


class TlsRedisError(RuntimeError):
    """``redis-server`` or ``openssl`` is missing, or the server did not answer in time."""


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise TlsRedisError(f"openssl {args[0]} failed: {result.stderr[-2000:]}")


def _authority(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt",
        cwd=directory,
    )  # fmt: skip


def make_certificates(directory: Path) -> None:
    """Write ``ca.crt``, ``server.crt`` / ``server.key`` (for IP 127.0.0.1, signed by
    the CA) and an unrelated ``wrong-ca.crt`` into ``directory``.

    Raises:
        TlsRedisError: ``openssl`` is missing or failed.
    """
    if shutil.which("openssl") is None:
        raise TlsRedisError("openssl is not on PATH: apt-get install openssl")
    _authority(directory, "ca")
    _authority(directory, "wrong-ca")
    (directory / "san.ext").write_text(f"subjectAltName=IP:{HOST}\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={HOST}",
        "-keyout", "server.key", "-out", "server.csr", cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
        cwd=directory,
    )  # fmt: skip


class TlsRedis(StopsOnExit):
    """One TLS-only ``redis-server`` child process with an ACL user.

    Attributes:
        port: the TLS port on 127.0.0.1.
        password: the user's password (random per server).
        ca: path of the authority that signed the server's certificate.
        wrong_ca: path of an unrelated authority.
    """

    def __init__(self, process: subprocess.Popen[bytes], port: int, workdir: Path, password: str):
        self.process = process
        self.port = port
        self.workdir = workdir
        self.password = password
        self.ca = workdir / "ca.crt"
        self.wrong_ca = workdir / "wrong-ca.crt"

    @classmethod
    def start(cls, *, executable: str = "redis-server", attempts: int = 5) -> TlsRedis:
        """Make certificates, start the server on a free port, wait until it answers.

        Raises:
            TlsRedisError: a tool is missing or no attempt answered within 10 s.
        """
        path = shutil.which(executable)
        if path is None:
            raise TlsRedisError(f"{executable!r} is not on PATH")
        workdir = Path(tempfile.mkdtemp(prefix="aceleryctl-tls-redis-"))
        try:
            make_certificates(workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        password = "pw-" + secrets.token_hex(12)
        failures: list[str] = []
        for _ in range(attempts):
            port = free_port(HOST)
            process = subprocess.Popen(
                [
                    path, "--bind", HOST, "--port", "0", "--tls-port", str(port),
                    "--tls-cert-file", str(workdir / "server.crt"),
                    "--tls-key-file", str(workdir / "server.key"),
                    "--tls-ca-cert-file", str(workdir / "ca.crt"),
                    "--tls-auth-clients", "no",
                    "--user", "default", "off",
                    "--user", USERNAME, "on", f">{password}", "~*", "&*", "+@all",
                    "--save", "", "--appendonly", "no", "--dir", str(workdir),
                    "--logfile", str(workdir / "redis.log"), "--daemonize", "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            server = cls(process, port, workdir, password)
            if server.wait_ready(10.0):
                return server
            failures.append(f"port {port}: {tail(server.log(), 10)}")
            stop_process(process, timeout=5.0)
        shutil.rmtree(workdir, ignore_errors=True)
        raise TlsRedisError("the TLS redis-server did not start:\n" + "\n".join(failures))

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for PING to succeed; False if the process
        exited or never answered."""
        with contextlib.suppress(WaitTimeout):
            wait_until(lambda: not self.is_alive() or self.ping(), timeout=timeout)
        return self.is_alive() and self.ping()

    def url(self, db: int = 0, *, password: str | None = None) -> str:
        """``rediss://dispatcher:<password>@127.0.0.1:<port>/<db>``."""
        secret = self.password if password is None else password
        return f"rediss://{USERNAME}:{secret}@{HOST}:{self.port}/{db}"

    def ssl_options(self, ca: Path | None = None) -> dict[str, object]:
        """``broker_use_ssl`` as Celery reads it: verify the server against ``ca``."""
        return {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca or self.ca)}

    def client(self, db: int = 0) -> redis.Redis:
        """A new verified, authenticated client (bounded timeouts)."""
        return redis.Redis(
            host=HOST,
            port=self.port,
            db=db,
            username=USERNAME,
            password=self.password,
            ssl=True,
            ssl_ca_certs=str(self.ca),
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
        )

    def ping(self) -> bool:
        """True when the server answers PING within about a second."""
        client = self.client()
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def is_alive(self) -> bool:
        """True while the server process runs."""
        return self.process.poll() is None

    def log(self) -> str:
        """The server's log file, or an empty string."""
        return read_log(self.workdir / "redis.log")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        stop_process(self.process, timeout=timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)
