"""A real Redis Sentinel deployment on 127.0.0.1: a primary, replicas and three sentinels.

Each process listens on a free port, writes into a temporary directory of its own
and is stopped by its own process id. :meth:`SentinelCluster.kill_primary` SIGKILLs
the primary and :meth:`SentinelCluster.wait_for_promotion` waits (bounded) until the
sentinels name a replica as the new primary and it answers as one.

The sentinels are ``redis-sentinel`` (Debian's package; ``redis-server --sentinel``
is the same program) unless ``$ACELERYCTL_REDIS_SENTINEL`` names another binary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from ._process import StopsOnExit, free_port, read_log, stop_process, tail
from .redis_server import answers_ping
from .waiting import WaitTimeout, wait_until

__all__ = ["MASTER_NAME", "SentinelCluster", "SentinelClusterError", "sentinel_executable"]

HOST = "127.0.0.1"
#: The name the sentinels monitor the primary under (``master_name``).
MASTER_NAME = "aceleryctl-primary"
#: Milliseconds without an answer after which a sentinel calls the primary down.
DOWN_AFTER_MS = 1000


class SentinelClusterError(RuntimeError):
    """A binary is missing, or a process did not start and answer in time."""


def sentinel_executable() -> str | None:
    """The sentinel binary's path, or ``None`` when it is not installed."""
    return shutil.which(os.environ.get("ACELERYCTL_REDIS_SENTINEL", "redis-sentinel"))


@dataclass
class _Node:
    role: str  # "primary", "replica" or "sentinel"
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    def log(self) -> str:
        return read_log(self.workdir / "redis.log")

    def alive(self) -> bool:
        return self.process.poll() is None


def _came_up(node: _Node, timeout: float = 10.0) -> bool:
    """Wait (bounded) until ``node`` answers PING; False when it exited or stayed silent."""
    with contextlib.suppress(WaitTimeout):
        wait_until(lambda: not node.alive() or answers_ping(node.port), timeout=timeout)
    return node.alive() and answers_ping(node.port)


class SentinelCluster(StopsOnExit):
    """One primary, ``replicas`` replicas and three sentinels (quorum 2), all child processes.

    Start it with :meth:`start`; use it as a context manager or call :meth:`stop`.
    """

    def __init__(self, server: str, sentinel: str) -> None:
        self._server = server
        self._sentinel = sentinel
        self.nodes: list[_Node] = []
        self.primary_port = 0
        self.replica_ports: list[int] = []

    @classmethod
    def start(
        cls, *, server: str = "redis-server", replicas: int = 1, startup_timeout: float = 15.0
    ) -> SentinelCluster:
        """Start every process and wait (bounded) until the sentinels see the primary
        and its replica, and the replica has synchronised.

        Raises:
            SentinelClusterError: a binary is missing or a process did not come up
                within ``startup_timeout`` seconds.
        """
        server_path = shutil.which(server)
        sentinel_path = sentinel_executable()
        if server_path is None or sentinel_path is None:
            raise SentinelClusterError(
                f"redis-server ({server_path}) and redis-sentinel ({sentinel_path}) are "
                "needed: apt-get install redis-server redis-sentinel"
            )
        cluster = cls(server_path, sentinel_path)
        try:
            cluster._start_all(replicas, startup_timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    # -- starting --------------------------------------------------------------

    def _start_all(self, replicas: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        primary = self._redis("primary")
        self.primary_port = primary.port
        for _ in range(replicas):
            replica = self._redis("replica", "--replicaof", HOST, str(primary.port))
            self.replica_ports.append(replica.port)
        for _ in range(3):
            self._start_sentinel()

        def ready() -> bool:
            if not all(n.alive() for n in self.nodes):
                raise SentinelClusterError(f"a process exited:\n{self.describe()}")
            return all(self._replica_synced(p) for p in self.replica_ports) and all(
                self._sentinel_sees_replica(n.port) for n in self.sentinels
            )

        try:
            wait_until(ready, timeout=max(deadline - time.monotonic(), 1.0), interval=0.05)
        except WaitTimeout as exc:
            raise SentinelClusterError(f"{exc}\n{self.describe()}") from exc

    def _redis(self, role: str, *extra: str) -> _Node:
        for _ in range(5):
            node = self._launch(role, free_port(HOST), extra)
            if node is not None:
                return node
        raise SentinelClusterError(f"the {role} did not start:\n{self.describe()}")

    def _launch(self, role: str, port: int, extra: Sequence[str]) -> _Node | None:
        """Start one redis-server on ``port``; ``None`` when it did not answer."""
        workdir = Path(tempfile.mkdtemp(prefix=f"aceleryctl-{role}-"))
        process = subprocess.Popen(
            [
                self._server, "--bind", HOST, "--port", str(port), "--save", "",
                "--appendonly", "no", "--dir", str(workdir),
                "--logfile", str(workdir / "redis.log"), "--daemonize", "no",
                "--repl-ping-replica-period", "1", "--repl-diskless-sync-delay", "0",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        node = _Node(role, port, process, workdir)
        self.nodes.append(node)
        if _came_up(node):
            return node
        self._stop_node(node)
        self.nodes.remove(node)
        return None

    def _start_sentinel(self) -> _Node:
        for _ in range(5):
            port = free_port(HOST)
            workdir = Path(tempfile.mkdtemp(prefix="aceleryctl-sentinel-"))
            config = workdir / "sentinel.conf"  # a sentinel rewrites its own config file
            config.write_text(
                "\n".join(
                    [
                        f"bind {HOST}",
                        f"port {port}",
                        f"dir {workdir}",
                        f"logfile {workdir / 'redis.log'}",
                        "daemonize no",
                        f"sentinel monitor {MASTER_NAME} {HOST} {self.primary_port} 2",
                        f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                        f"sentinel failover-timeout {MASTER_NAME} 10000",
                        f"sentinel parallel-syncs {MASTER_NAME} 1",
                        "",
                    ]
                )
            )
            process = subprocess.Popen(
                [self._sentinel, str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            node = _Node("sentinel", port, process, workdir)
            self.nodes.append(node)
            if _came_up(node):
                return node
            self._stop_node(node)
        raise SentinelClusterError(f"a sentinel did not start:\n{self.describe()}")

    # -- facts -------------------------------------------------------------------

    @property
    def sentinels(self) -> list[_Node]:
        """The sentinel processes (alive or not)."""
        return [n for n in self.nodes if n.role == "sentinel"]

    def url(self, db: int = 0) -> str:
        """The broker URL as kombu reads it: ``sentinel://host:port/db;sentinel://...``."""
        return ";".join(f"sentinel://{HOST}:{n.port}/{db}" for n in self.sentinels)

    def transport_options(self) -> dict[str, object]:
        """``broker_transport_options`` naming the monitored primary."""
        return {"master_name": MASTER_NAME}

    def client(self, port: int, db: int = 0) -> redis.Redis:
        """A new client of the Redis on ``port`` (bounded timeouts)."""
        return redis.Redis(
            host=HOST, port=port, db=db, socket_connect_timeout=1.0, socket_timeout=5.0
        )

    def master_port(self, sentinel_port: int | None = None) -> int | None:
        """The primary's port as one sentinel names it, or ``None``."""
        port = sentinel_port if sentinel_port is not None else self.sentinels[0].port
        client = self.client(port)
        try:
            # The command itself, not sentinel_get_master_addr_by_name(): redis-py 6.4's
            # helper hands its parser keywords it does not take (TypeError).
            address = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        except redis.RedisError:
            return None
        finally:
            client.close()
        return int(address[1]) if address else None

    def failovers(self) -> int:
        """How many failovers the sentinels have made: the highest ``config-epoch``
        any of them reports for the primary (each failover raises it by one; 0
        before the first). A sentinel that does not answer is left out."""
        epochs = [0]
        for sentinel in self.sentinels:
            client = self.client(sentinel.port)
            try:
                master = client.execute_command("SENTINEL MASTER", MASTER_NAME)  # as above
                epochs.append(int(master.get("config-epoch", 0)))
            except redis.RedisError:
                continue
            finally:
                client.close()
        return max(epochs)

    def _replica_synced(self, port: int) -> bool:
        client = self.client(port)
        try:
            info = client.info("replication")
        except redis.RedisError:
            return False
        finally:
            client.close()
        return info.get("master_link_status") == "up"

    def _sentinel_sees_replica(self, sentinel_port: int) -> bool:
        """Whether a sentinel knows every replica and both other sentinels (a
        failover needs a majority of them to agree)."""
        client = self.client(sentinel_port)
        try:
            replicas = client.sentinel_slaves(MASTER_NAME)
            master = client.execute_command("SENTINEL MASTER", MASTER_NAME)  # as above
        except redis.RedisError:
            return False
        finally:
            client.close()
        ports = {int(r.get("port", 0)) for r in replicas or []}
        return set(self.replica_ports) <= ports and int(master.get("num-other-sentinels", 0)) >= 2

    # -- failover ----------------------------------------------------------------

    def kill_primary(self) -> int:
        """SIGKILL the primary: its connections drop, nothing is shut down cleanly.
        Returns its port."""
        for node in self.nodes:
            if node.port == self.primary_port and node.role != "sentinel" and node.alive():
                node.process.kill()
                node.process.wait(10)
        return self.primary_port

    def revive(self, port: int) -> None:
        """Start an empty ``redis-server`` again on the killed primary's ``port``; the
        sentinels turn it into a replica of the new primary.

        Raises:
            SentinelClusterError: it did not answer within 10 s.
        """
        for node in self.nodes:
            if node.port == port and not node.alive():
                self._stop_node(node)
                self.nodes.remove(node)
                break
        if self._launch("replica", port, ()) is None:
            raise SentinelClusterError(f"the old primary did not start:\n{self.describe()}")
        self.replica_ports.append(port)

    def wait_for_promotion(self, timeout: float = 30.0) -> int:
        """Wait until every sentinel names the same replica as primary and it answers
        as one; return its port (also the new :attr:`primary_port`).

        Raises:
            WaitTimeout: no promotion within ``timeout`` seconds.
        """

        def promoted() -> int | None:
            named = {self.master_port(s.port) for s in self.sentinels}
            if len(named) != 1:
                return None
            port = named.pop()
            if port not in self.replica_ports:
                return None
            client = self.client(port)
            try:
                is_primary = client.info("replication").get("role") == "master"
            except redis.RedisError:
                return None
            finally:
                client.close()
            return port if is_primary else None

        port = wait_until(promoted, timeout=timeout, interval=0.05, message=self.describe)
        self.primary_port = port
        self.replica_ports.remove(port)
        return port

    def wait_for_replicas(self, count: int, timeout: float = 30.0) -> None:
        """Wait until the primary the sentinels name has ``count`` replicas online
        (after a failover the sentinels point the other nodes at the new primary;
        on a loaded machine they may even fail over once more), and remember it as
        :attr:`primary_port`.

        Raises:
            WaitTimeout: not within ``timeout`` seconds.
        """

        def online() -> int | None:
            named = {self.master_port(s.port) for s in self.sentinels}
            port = named.pop() if len(named) == 1 else None
            if port is None:
                return None
            client = self.client(port)
            try:
                info = client.info("replication")
            except redis.RedisError:
                return None
            finally:
                client.close()
            if info.get("role") != "master":
                return None
            states = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            ready = sum(1 for v in states if v.get("state") == "online") >= count
            return port if ready else None

        port = wait_until(online, timeout=timeout, interval=0.05, message=self.describe)
        if port != self.primary_port:
            self.replica_ports = [p for p in (*self.replica_ports, self.primary_port) if p != port]
            self.primary_port = port

    def describe(self) -> str:
        """Each process's role, port, state and log tail, for failure messages."""
        return "\n".join(
            f"-- {n.role} :{n.port} {'alive' if n.alive() else 'exited'}\n{tail(n.log(), 15)}"
            for n in self.nodes
        )

    # -- stopping ----------------------------------------------------------------

    def _stop_node(self, node: _Node) -> None:
        stop_process(node.process, timeout=5.0)
        shutil.rmtree(node.workdir, ignore_errors=True)

    def stop(self) -> None:
        """Stop every process by its id (SIGTERM, then SIGKILL) and remove its directory."""
        for node in reversed(self.nodes):
            self._stop_node(node)
        self.nodes.clear()
