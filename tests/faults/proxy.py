"""A TCP proxy between workers and a sidecar that can cut every connection through it.

``cut("server")`` tears down the sidecar's side first: the sidecar sees its
worker vanish while the worker's socket stays open, swallowing what it sends,
for ``gap`` seconds. ``cut("client")`` does it the other way round. Either way
both sides end with a reset, and the worker reconnects through the proxy.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Literal

Side = Literal["server", "client"]
BUFFER = 65536


def _reset(sock: socket.socket) -> None:
    """Closes with an RST (SO_LINGER 0), as a crashed peer or a cut cable would look."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # wakes a thread blocked in recv(); sends nothing
    except OSError:
        pass  # already closed
    sock.close()


class _Pair:
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.cut = False
        """Set while a cut is under way: data is swallowed, not forwarded."""
        self.closed = threading.Event()

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(BUFFER):
                if not self.cut:
                    dst.sendall(data)
        except OSError:
            pass
        if not self.cut:  # an ordinary close by one side: close the other too
            self.close()

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            _reset(self.client)
            _reset(self.server)


class CuttingProxy:
    """Listens on a free loopback port and forwards each connection to ``upstream``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="faults-proxy", daemon=True)
        self.cuts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CuttingProxy:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            pair = _Pair(client, server)
            with self._lock:
                self._pairs = [p for p in self._pairs if not p.closed.is_set()] + [pair]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=pair.pump, args=(src, dst), daemon=True).start()

    def cut(self, side: Side, gap: float = 0.3) -> int:
        """Cuts every open connection, ``side`` first; returns how many were cut."""
        with self._lock:
            pairs = [p for p in self._pairs if not p.closed.is_set()]
        for pair in pairs:
            pair.cut = True
            _reset(pair.server if side == "server" else pair.client)
        time.sleep(gap)  # the other side learns nothing meanwhile
        for pair in pairs:
            pair.close()
        self.cuts += len(pairs)
        return len(pairs)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            pair.close()
