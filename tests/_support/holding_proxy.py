"""A TCP forwarder on 127.0.0.1 that can hold traffic, as a wedged proxy or a paused peer does.

While held, bytes in both directions are read and kept, not forwarded; on release
they are delivered in order. Connections stay open throughout, so clients see a
silent peer, not an error: the behaviour of a SIGSTOPped server without touching
the server.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from ._process import StopsOnExit

__all__ = ["HoldingProxy"]

HOST = "127.0.0.1"


class HoldingProxy(StopsOnExit):
    """Forwards 127.0.0.1:<port> to ``target_port``; :meth:`hold` and :meth:`release`.

    One selector thread does all the work. Stop it with :meth:`stop` (bounded).
    """

    def __init__(self, target_port: int) -> None:
        self._target = (HOST, target_port)
        self._listener = socket.create_server((HOST, 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._pending: dict[socket.socket, bytearray] = {}
        self._held = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="holding-proxy", daemon=True)

    def url(self, db: int = 0) -> str:
        """``redis://127.0.0.1:<proxy port>/<db>``."""
        return f"redis://{HOST}:{self.port}/{db}"

    def start(self) -> HoldingProxy:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    def hold(self) -> None:
        """Stop forwarding; keep reading and buffering both directions."""
        self._held.set()

    def release(self) -> None:
        """Deliver everything held, in order, and forward again."""
        self._held.clear()

    def _run(self) -> None:
        while not self._stopping.is_set():
            for key, _ in self._selector.select(timeout=0.02):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                else:
                    self._read(sock)
            if not self._held.is_set():
                self._flush()

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            client, _ = self._listener.accept()
            try:
                upstream = socket.create_connection(self._target, timeout=2.0)
            except OSError:
                client.close()
                return
            for sock in (client, upstream):
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ)
                self._pending[sock] = bytearray()
            self._peers[client] = upstream
            self._peers[upstream] = client

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pair(sock)
            return
        peer = self._peers.get(sock)
        if peer is not None:
            self._pending[peer].extend(data)

    def _flush(self) -> None:
        for sock, buffer in list(self._pending.items()):
            if not buffer:
                continue
            try:
                sent = sock.send(buffer)
            except BlockingIOError:
                continue
            except OSError:
                self._close_pair(sock)
                continue
            del buffer[:sent]

    def _close_pair(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._peers.pop(s, None)
            self._pending.pop(s, None)
            with contextlib.suppress(Exception):
                self._selector.unregister(s)
            s.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection and the listener; join the thread (bounded)."""
        self._stopping.set()
        self._thread.join(timeout)
        for sock in list(self._peers):
            self._close_pair(sock)
        with contextlib.suppress(Exception):
            self._selector.unregister(self._listener)
        self._listener.close()
        self._selector.close()

    def __enter__(self) -> HoldingProxy:
        return self.start()
