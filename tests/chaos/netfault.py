"""Network faults between the tool and S3, on loopback: a TCP proxy that can slow the traffic,
add latency, take "S3" down and up again, stop answering, or run an action (a SIGKILL) at an
exact byte offset of the traffic; and a fake regional endpoint for the wrong-region case.

The proxy sees raw HTTP/1.1 bytes (the tool talks plain http to the local SeaweedFS), so it can
also notice request lines (method and path) as they pass, which the tests use to pick fault
points by request ("the 3rd DELETE", "the PUT of status.json") as well as by byte offset.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_REQUEST = re.compile(rb"(GET|PUT|POST|DELETE|HEAD) (/\S*) HTTP/1\.1\r\n")


@dataclass
class Request:
    """A request line seen going upstream, at this cumulative upstream byte offset."""

    offset: int
    method: str
    path: str


@dataclass
class _Trigger:
    direction: str  # "up" (tool -> S3) or "down" (S3 -> tool)
    offset: int  # fire at this cumulative byte offset ...
    action: Callable[[], None]
    freeze: bool = True  # stop forwarding when it fires
    request: Callable[[Request], bool] | None = None  # ... or before the nth such request
    nth: int = 1
    seen: int = 0
    fired: threading.Event = field(default_factory=threading.Event)


def _rst(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (what a crashed or stopped peer looks like).

    shutdown(SHUT_RD) first wakes a thread blocked in recv() on it (close() alone would not,
    and the reset would wait for that recv); with SO_LINGER 0 the last close sends the RST.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


def _free_port() -> int:
    """A free loopback port below Linux's ephemeral range (so no outgoing connection takes it
    while the proxy is down)."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(33000 - 12000, 33000 - 1000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port")


class _LoopbackServer:
    """A TCP server on a free 127.0.0.1 port; each accepted connection goes to ``_serve`` in
    its own thread. Subclasses set up their state, then call ``_listen``."""

    port: int
    _closed: threading.Event
    _listener: socket.socket

    def _listen(self, backlog: int, name: str) -> None:
        self.port = _free_port()
        self._closed = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(backlog)
        threading.Thread(target=self._accept, daemon=True, name=f"{name}-accept").start()

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop listening."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError


class FaultProxy(_LoopbackServer):
    """Forward 127.0.0.1:<port> to ``target`` and inject faults on demand.

    - ``rate``: bytes/s per direction per connection (None: unlimited); ``latency``: seconds
      added before each forwarded chunk.
    - ``down()``: an outage. Every open connection is reset; new connections are accepted, their
      request line read, and reset (``allow`` may let a request through, ending the outage).
      ``up()`` ends it.
    - ``blackhole()``: S3 stops answering: connections are accepted and read, never answered.
    - ``at(direction, offset, action)``: when the cumulative bytes in ``direction`` reach
      ``offset``, forward exactly up to it, freeze all forwarding, and run ``action`` (e.g. a
      SIGKILL of the tool) in the proxy thread.
    """

    def __init__(self, target: tuple[str, int], *, rate: int | None = None,
                 latency: float = 0.0) -> None:
        self.target, self.rate, self.latency = target, rate, latency
        self.up_bytes = 0
        self.down_bytes = 0
        self.requests: list[Request] = []
        self.refused: list[Request] = []  # requests seen (and reset) during an outage
        self._lock = threading.Lock()
        self._mode = "forward"  # forward | down | blackhole
        self._allow: Callable[[Request], bool] | None = None
        self._trigger: _Trigger | None = None
        self._frozen = threading.Event()
        self._conns: set[socket.socket] = set()
        self._listen(128, "faultproxy")

    # -- control -------------------------------------------------------------------------
    def reset(self) -> None:
        """Forward normally again, forget counters, requests and any trigger."""
        with self._lock:
            self.up_bytes = self.down_bytes = 0
            self.requests, self.refused = [], []
            self._mode, self._allow, self._trigger = "forward", None, None
            self._frozen.clear()

    def at(self, direction: str, offset: int, action: Callable[[], None], *,
           freeze: bool = True) -> _Trigger:
        """Arm a trigger at a byte offset (replacing any other); returns it (``.fired`` is an
        Event). ``freeze``: stop forwarding anything once it fires."""
        assert direction in ("up", "down")
        trigger = _Trigger(direction, max(0, offset), action, freeze)
        with self._lock:
            self._trigger = trigger
        return trigger

    def before_request(self, match: Callable[[Request], bool], nth: int,
                       action: Callable[[], None], *, freeze: bool = True) -> _Trigger:
        """Arm a trigger that fires just before the ``nth`` request ``match`` accepts is
        forwarded (that request never reaches S3 while frozen)."""
        trigger = _Trigger("up", -1, action, freeze, match, nth)
        with self._lock:
            self._trigger = trigger
        return trigger

    def down(self, allow: Callable[[Request], bool] | None = None) -> None:
        """Start an outage: reset every connection; reset new ones after reading their request
        line. If ``allow(request)`` returns True for a request, the outage ends there and that
        request goes through."""
        with self._lock:
            self._mode, self._allow = "down", allow
            conns = list(self._conns)
        for conn in conns:
            _rst(conn)

    def blackhole(self, allow: Callable[[Request], bool] | None = None) -> None:
        """Stop answering: open connections hang (what the tool sends is read and dropped,
        nothing comes back), new ones are accepted and read, never answered. If
        ``allow(request)`` returns True for the first request of a new connection, S3 answers
        again from that request on."""
        with self._lock:
            self._mode, self._allow = "blackhole", allow

    def up(self) -> None:
        """End an outage or a blackhole."""
        with self._lock:
            self._mode, self._allow = "forward", None
        self._frozen.clear()

    def freeze(self) -> None:
        """Stop forwarding anything (in both directions) until ``up``/``reset``."""
        self._frozen.set()

    def close(self) -> None:
        """Stop everything; close every socket."""
        super().close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _rst(conn)

    @property
    def mode(self) -> str:
        """forward, down or blackhole."""
        return self._mode

    # -- plumbing ------------------------------------------------------------------------
    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(sock)

    def _read_head(self, client: socket.socket) -> tuple[bytes, Request | None]:
        """Read until the first request line is complete (or the client stops)."""
        buf = b""
        client.settimeout(10)
        while b"\r\n" not in buf and len(buf) < 65536:
            try:
                data = client.recv(65536)
            except OSError:
                return buf, None
            if not data:
                return buf, None
            buf += data
        client.settimeout(None)
        match = _REQUEST.search(buf)
        req = Request(self.up_bytes, match.group(1).decode(), match.group(2).decode()) \
            if match else None
        return buf, req

    def _serve(self, client: socket.socket) -> None:
        self._track(client, True)
        try:
            first = b""
            if self._mode in ("down", "blackhole"):
                first, req = self._read_head(client)
                with self._lock:
                    allow, mode = self._allow, self._mode
                    if req is not None:
                        self.refused.append(req)
                if mode != "forward" and not (allow and req and allow(req)):
                    if mode == "blackhole":
                        self._swallow(client)
                    else:
                        _rst(client)
                    return
                self.up()
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                _rst(client)
                return
            self._track(upstream, True)
            pair = threading.Thread(target=self._pipe, args=(upstream, client, "down", b""),
                                    daemon=True)
            pair.start()
            self._pipe(client, upstream, "up", first)
            pair.join()
        finally:
            self._track(client, False)

    def _swallow(self, client: socket.socket) -> None:
        try:
            while not self._closed.is_set() and client.recv(65536):
                pass
        except OSError:
            pass

    def _pipe(self, src: socket.socket, dst: socket.socket, direction: str,
              pending: bytes) -> None:
        chunk = max(1024, (self.rate or 4_000_000) // 20)
        try:
            while not self._closed.is_set():
                data = pending or src.recv(chunk)
                pending = b""
                if not data:
                    break
                if self._mode == "blackhole" and not self._frozen.is_set():
                    continue  # S3 stopped answering: read and drop, keep the connection
                if self._frozen.is_set() or self._mode != "forward":
                    break
                if self.latency:
                    time.sleep(self.latency)
                data, fire = self._account(data, direction)
                if data:
                    dst.sendall(data)
                if fire is not None:  # S3 got exactly the bytes up to the offset, no more
                    fire.action()
                    break
                if data is None:
                    break
                if self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                if self._mode == "forward" and not self._frozen.is_set():
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    with contextlib.suppress(OSError):
                        sock.close()
                else:
                    _rst(sock)
                self._track(sock, False)

    def _account(self, data: bytes, direction: str) -> tuple[bytes | None, _Trigger | None]:
        """Count ``data``; when it crosses the trigger's point, cut it there (and freeze).
        Returns (bytes that may be forwarded or None to stop, trigger to fire after sending)."""
        with self._lock:
            if self._frozen.is_set():
                return None, None
            base = self.up_bytes if direction == "up" else self.down_bytes
            trig = self._trigger
            fire = None
            cut = None
            if trig is not None and trig.direction == direction and not trig.fired.is_set():
                if trig.request is None and base + len(data) >= trig.offset:
                    cut = trig.offset - base
                elif trig.request is not None:
                    for match in _REQUEST.finditer(data):
                        req = Request(base + match.start(), match.group(1).decode(),
                                      match.group(2).decode())
                        if trig.request(req):
                            trig.seen += 1
                            if trig.seen == trig.nth:
                                cut = match.start()
                                break
            if cut is not None and trig is not None:
                data = data[:cut]
                if trig.freeze:
                    self._frozen.set()
                trig.fired.set()
                fire = trig
            if direction == "up":
                for match in _REQUEST.finditer(data):
                    self.requests.append(Request(base + match.start(),
                                                 match.group(1).decode(),
                                                 match.group(2).decode()))
                self.up_bytes += len(data)
            else:
                self.down_bytes += len(data)
        return data, fire


class RegionEndpoint(_LoopbackServer):
    """An S3 endpoint in front of the real one whose bucket lives in ``home`` region.

    Requests signed for another region get what the store answers: AWS style, ``301
    PermanentRedirect`` with the ``x-amz-bucket-region`` header; MinIO style, ``400
    AuthorizationHeaderMalformed`` naming the expected ``<Region>``. Requests signed for ``home``
    are forwarded. ``seen`` lists the signing region of every request.
    """

    def __init__(self, target: tuple[str, int], home: str = "eu-west-1", *,
                 style: str = "aws") -> None:
        self.target, self.home, self.style = target, home, style
        self.seen: list[str] = []
        self._listen(64, "region")

    def _serve(self, client: socket.socket) -> None:
        buf = b""
        client.settimeout(10)
        try:
            while b"\r\n\r\n" not in buf and len(buf) < 65536:
                data = client.recv(65536)
                if not data:
                    return
                buf += data
            head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            match = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/s3/", head)
            region = match.group(1) if match else "?"
            self.seen.append(region)
            if region != self.home:
                if self.style == "aws":
                    status = b"301 Moved Permanently"
                    body = ("<Error><Code>PermanentRedirect</Code><Message>The bucket you are "
                            "attempting to access must be addressed using the specified "
                            f"endpoint.</Message><Endpoint>s3.{self.home}.amazonaws.com"
                            "</Endpoint></Error>")
                    extra = f"x-amz-bucket-region: {self.home}\r\n".encode()
                else:
                    status = b"400 Bad Request"
                    body = ("<Error><Code>AuthorizationHeaderMalformed</Code><Message>The "
                            f"authorization header is malformed; the region '{region}' is "
                            f"wrong; expecting '{self.home}'</Message><Region>{self.home}"
                            "</Region></Error>")
                    # (a HEAD answer has no body: MinIO names the region in a header then)
                    extra = f"x-amz-bucket-region: {self.home}\r\n".encode() \
                        if head.startswith("HEAD ") else b""
                data = b"" if head.startswith("HEAD ") else (
                    '<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode()
                client.sendall(b"HTTP/1.1 " + status + b"\r\n" + extra
                               + b"Content-Type: application/xml\r\nConnection: close\r\n"
                               + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
                return
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.sendall(buf)
            client.settimeout(None)
            upstream.settimeout(None)
            done = threading.Event()

            def back() -> None:
                with contextlib.suppress(OSError):
                    while data := upstream.recv(65536):
                        client.sendall(data)
                done.set()
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)

            threading.Thread(target=back, daemon=True).start()
            with contextlib.suppress(OSError):
                while data := client.recv(65536):
                    upstream.sendall(data)
            done.wait(30)
            upstream.close()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()
