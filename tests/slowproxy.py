"""A bandwidth-limiting TCP proxy on loopback, for tests that must catch a transfer mid-way.

It forwards 127.0.0.1:<port> to a target address, sleeping so that each direction of each
connection moves at most ``rate`` bytes per second. Runs in a daemon thread; stops on close().
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class SlowProxy:
    """Forward a loopback port to ``target`` at ``rate`` bytes/s per direction."""

    def __init__(self, target: tuple[str, int], rate: int = 1_000_000) -> None:
        self.target, self.rate = target, rate
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._count = threading.Lock()
        #: bytes forwarded so far, both directions: a test waits for a transfer to be under
        #: way by watching it grow, not by sleeping
        self.forwarded = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        chunk = max(1024, self.rate // 20)
        try:
            while not self._stop.is_set():
                data = src.recv(chunk)
                if not data:
                    break
                dst.sendall(data)
                with self._count:
                    self.forwarded += len(data)
                time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        """Stop accepting and forwarding."""
        self._stop.set()
        self._listener.close()
