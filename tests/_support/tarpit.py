"""A silent TCP endpoint: it accepts connections and never answers.

Used as a broker that hangs every client: connects succeed, then every read
blocks. The server records what it received so a test can tell what was sent.
"""

from __future__ import annotations

import selectors
import socket
import threading

from ._process import StopsOnExit

__all__ = ["Tarpit"]

HOST = "127.0.0.1"


class Tarpit(StopsOnExit):
    """A threaded TCP server on 127.0.0.1 that holds every connection open, silent.

    :meth:`start` binds a free port and runs one daemon thread that accepts and
    reads (so clients never block on a full send buffer) but never writes.
    :meth:`stop` closes every socket, which makes blocked clients see EOF.
    """

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._received: list[bytes] = []
        self._accepted = 0
        self._thread = threading.Thread(target=self._serve, name="tarpit", daemon=True)

    @property
    def url(self) -> str:
        """A ``redis://`` URL pointing at the tarpit."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def accepted(self) -> int:
        """How many connections were accepted so far."""
        with self._lock:
            return self._accepted

    @property
    def received(self) -> bytes:
        """Every byte received so far, from all connections, in arrival order."""
        with self._lock:
            return b"".join(self._received)

    def start(self) -> Tarpit:
        """Listen and serve on a daemon thread; returns ``self``."""
        self._listener.listen(128)
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    try:
                        conn, _addr = self._listener.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    with self._lock:
                        self._connections.append(conn)
                        self._accepted += 1
                    self._selector.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    with self._lock:
                        self._received.append(data)
                else:
                    # The client went away; forget the socket.
                    self._selector.unregister(sock)
                    sock.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close every socket; waits up to ``timeout`` seconds for
        the serving thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._selector.close()
        self._listener.close()
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def __enter__(self) -> Tarpit:
        return self.start()
