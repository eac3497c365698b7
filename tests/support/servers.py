"""Loopback HTTP helpers for tests: a programmable fixture server and a counting proxy.

``run_fixture_server()`` serves programmed replies (status, headers, body) per path, for
inputs the real registry refuses to store (a manifest over 4 MiB, a mismatched media type)
and for protocol faults (token endpoint errors, short bodies, slow answers, stalls). It
records every request.

``run_proxy(upstream)`` is an HTTP-aware TCP proxy in front of the real registry: it parses
request heads on the client→server side (GET/HEAD have no body; Content-Length or chunked
bodies are forwarded as they are) to count requests per method and path, and it can
throttle the server→client direction to ``rate`` bytes/s and add ``latency`` seconds before
each request is forwarded. Responses are relayed untouched. ``inject()`` answers matching
requests itself instead of forwarding them (a 401, a 503…), never answers them, or
forwards them and relays only the start of the answer, then nothing more.

Threads run the servers; everything binds to 127.0.0.1 and stops when the context exits.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import images as _images

__all__ = [
    "FixtureServer",
    "LoopbackHTTPServer",
    "Proxy",
    "RecordedRequest",
    "Reply",
    "run_fixture_server",
    "run_proxy",
]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as a server or the proxy saw it (``path`` without the query)."""

    method: str
    target: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes = b""

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.target).query)


@dataclass(frozen=True)
class Reply:
    """A programmed response.

    ``headers`` may set Content-Length to a value that does not match ``body`` (a short
    body: the connection is closed after it). ``delay`` waits before answering; ``drip``
    sends the body in ``drip`` byte pieces with ``drip_interval`` seconds between them.
    ``close`` drops the connection without any answer. ``stall`` keeps the connection
    open and sends nothing, until the client gives up (or the proxy stops): a server that
    accepted the request and hangs. ``stall_after`` sends the head and the first
    ``stall_after`` bytes of the body, then nothing more, as ``stall``: a server that hangs
    partway through a body. The proxy forwards such a request and cuts the upstream's
    answer so (the other fields are then unused: the upstream's own Range handling answers
    a resumed request); the fixture server cuts ``body``, whose whole length it announces,
    and ignores any Range, as a server that resends a blob from its start.
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    drip: int = 0
    drip_interval: float = 0.0
    close: bool = False
    stall: bool = False
    stall_after: int | None = None

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
        """A JSON body with ``Content-Type: application/json`` (plus ``headers``)."""
        return cls(
            status,
            {"Content-Type": "application/json", **(headers or {})},
            json.dumps(obj).encode(),
        )

    @classmethod
    def challenge(
        cls, realm: str, service: str, scope: str | None = None, *, error: str | None = None
    ) -> Reply:
        """A 401 with a Bearer challenge (``error="invalid_token"``: an expired token)."""
        value = f'Bearer realm="{realm}",service="{service}"'
        if scope:
            value += f',scope="{scope}"'
        if error:
            value += f',error="{error}"'
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        return cls.json(body, 401, {"WWW-Authenticate": value})

    @classmethod
    def error(cls, status: int, code: str = "UNKNOWN", message: str = "") -> Reply:
        """A registry-style error body ``{"errors": [{code, message}]}``."""
        return cls.json({"errors": [{"code": code, "message": message or code}]}, status)

    @property
    def mismatched_length(self) -> bool:
        """Content-Length is set and is not the body's length: close after the body."""
        length = {k.lower(): v for k, v in self.headers.items()}.get("content-length")
        return length is not None and int(length) != len(self.body)


Responder = Reply | Callable[[RecordedRequest], Reply]


@dataclass
class FixtureServer:
    """A running fixture server. Program it with ``route``; read ``requests``/``count``."""

    url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    _routes: dict[tuple[str | None, str], list[Responder]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host(self) -> str:
        return self.url.partition("://")[2]

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])

    def route(self, path: str, *replies: Responder, method: str | None = None) -> None:
        """Answer ``path`` (exact, without query) with ``replies`` in turn; the last repeats.

        A reply may be a callable taking the RecordedRequest. ``method`` None matches any
        method; HEAD requests get the GET reply's headers without its body.
        """
        if not replies:
            raise ValueError("route needs at least one reply")
        with self._lock:
            self._routes[(method.upper() if method else None, path)] = list(replies)

    def count(self, method: str | None = None, path: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method.upper())
                and (path is None or r.path == path)
            )

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def serve_blob(self, repository: str, blob: _images.Blob | _images.Layer) -> None:
        """Serve a blob at ``/v2/<repo>/blobs/<digest>``."""
        self.route(
            f"/v2/{repository}/blobs/{blob.digest}",
            Reply(
                200,
                {"Content-Type": "application/octet-stream", "Docker-Content-Digest": blob.digest},
                blob.data,
            ),
        )

    def serve_manifest(
        self,
        repository: str,
        reference: str,
        manifest: _images.Blob,
        *,
        content_type: str | None = None,
    ) -> None:
        """Serve manifest bytes under a tag or digest, with ``content_type`` (default: its own)."""
        self.route(
            f"/v2/{repository}/manifests/{reference}",
            Reply(
                200,
                {
                    "Content-Type": content_type or manifest.media_type,
                    "Docker-Content-Digest": manifest.digest,
                },
                manifest.data,
            ),
        )

    def serve_image(
        self,
        repository: str,
        image: _images.Image | _images.Index,
        tag: str | None = "latest",
        *,
        content_type: str | None = None,
    ) -> None:
        """Serve an image (or index with its images) and all blobs, like a registry would."""
        if isinstance(image, _images.Index):
            for child in image.images:
                self.serve_image(repository, child, None)
        else:
            for blob in image.blobs:
                self.serve_blob(repository, blob)
        for ref in (image.digest, tag) if tag else (image.digest,):
            self.serve_manifest(repository, ref, image.manifest, content_type=content_type)

    def _lookup(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            method = "GET" if request.method == "HEAD" else request.method
            replies = (
                self._routes.get((request.method, request.path))
                or self._routes.get((method, request.path))
                or self._routes.get((None, request.path))
            )
            if replies is None:
                responder: Responder = Reply.error(404, "NOT_FOUND", f"no route for {request.path}")
            elif len(replies) > 1:
                responder = replies.pop(0)
            else:
                responder = replies[0]
        return responder(request) if callable(responder) else responder


def _fixture_handler(server: FixtureServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 60

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = RecordedRequest(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
            )
            reply = server._lookup(request)
            if reply.delay:
                time.sleep(reply.delay)
            if reply.close:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if reply.stall:
                self._silent_until_the_client_hangs_up()
                return
            self.send_response(reply.status)
            headers = {k.lower(): (k, v) for k, v in reply.headers.items()}
            for name, value in headers.values():
                self.send_header(name, value)
            if "content-length" not in headers and "transfer-encoding" not in headers:
                self.send_header("Content-Length", str(len(reply.body)))
            if reply.mismatched_length:
                self.close_connection = True
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            if reply.stall_after is not None:
                self.wfile.write(reply.body[: reply.stall_after])
                self._silent_until_the_client_hangs_up()
                return
            if reply.drip:
                for i in range(0, len(reply.body), reply.drip):
                    self.wfile.write(reply.body[i : i + reply.drip])
                    self.wfile.flush()
                    time.sleep(reply.drip_interval)
            else:
                self.wfile.write(reply.body)

        def _silent_until_the_client_hangs_up(self) -> None:
            """Send nothing more; return when the client closes the connection (or after
            ``timeout`` s of it sending nothing either)."""
            self.close_connection = True
            with contextlib.suppress(OSError):  # a reset, or the socket timeout
                while self.connection.recv(65536):
                    pass

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server for the tests, silent when a client hangs up.

    Tests make clients hang up on purpose (a body over a limit, a cancelled pull); the
    standard server prints a traceback for each, from its handler thread, often after
    the test's output capture ended, into the middle of pytest's progress line. Any other
    error is still printed.
    """

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipe, ConnectionReset
            return
        super().handle_error(request, client_address)

    @contextlib.contextmanager
    def running(self, name: str, tls: ssl.SSLContext | None = None) -> Iterator[str]:
        """Serve from a daemon thread called ``name``, over TLS with the server context
        ``tls`` if given; yield the base URL; on exit, stop serving, close the socket and
        wait for the thread."""
        scheme = "http"
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
            scheme = "https"
        thread = threading.Thread(target=self.serve_forever, name=name, daemon=True)
        thread.start()
        try:
            yield f"{scheme}://127.0.0.1:{self.server_address[1]}"
        finally:
            self.shutdown()
            self.server_close()
            thread.join(timeout=5)


@contextlib.contextmanager
def run_fixture_server(tls: ssl.SSLContext | None = None) -> Iterator[FixtureServer]:
    """A fixture registry on ``http://127.0.0.1:<port>`` (``https://`` with the server
    context ``tls``); ``/v2/`` answers 200 by default."""
    state = FixtureServer()
    state.route("/v2/", Reply.json({}, headers={"Docker-Distribution-API-Version": "registry/2.0"}))
    httpd = LoopbackHTTPServer(("127.0.0.1", 0), _fixture_handler(state))
    with httpd.running("fixture-server", tls) as url:
        state.url = url
        yield state


# --- proxy -----------------------------------------------------------------------------


class _TokenBucket:
    """A shared bytes/s budget; ``rate`` None or 0 means unlimited. Burst: 1/20 s of rate.

    It grants at least 64 KiB (or the whole piece) at a time and sleeps until that much
    is allowed: granting single bytes turns into a busy wait once several connections
    share the budget, and that CPU would be taken from the client being measured.
    """

    _GRANT = 65536

    def __init__(self) -> None:
        self.rate: float | None = None
        self._lock = threading.Lock()
        self._allowance = 0.0
        self._last = time.monotonic()

    def take(self, n: int, stopping: threading.Event) -> None:
        while n > 0 and not stopping.is_set():
            with self._lock:
                rate = self.rate
                if not rate:
                    return
                now = time.monotonic()
                burst = max(rate / 20, float(self._GRANT))
                self._allowance = min(burst, self._allowance + (now - self._last) * rate)
                self._last = now
                want = min(n, self._GRANT)
                if self._allowance >= want:
                    granted = min(n, int(self._allowance))
                    self._allowance -= granted
                    n -= granted
                    continue
                wait = (want - self._allowance) / rate
            time.sleep(min(wait, 0.05))


@dataclass
class _Injection:
    method: str | None
    path: str
    reply: Reply
    times: int | None


class _ProtocolError(Exception):
    pass


class _Cut:
    """How much of the response on one proxied connection is relayed: all of it, until
    ``arm(n)`` (for ``Reply.stall_after``) asks for the next response's head and ``n``
    bytes of its body only; what comes after is read from the upstream and dropped.

    Armed by the client→server side before it forwards the request, so before any byte
    of that response reaches the server→client side.
    """

    def __init__(self) -> None:
        self.body_left: int | None = None  # None: relay everything
        self._head_tail: bytes | None = None  # the head's last bytes while it is relayed

    @property
    def silent(self) -> bool:
        """Whether the response was cut: nothing more goes to the client."""
        return self.body_left == 0

    def arm(self, body_bytes: int) -> None:
        self.body_left = body_bytes
        self._head_tail = b""

    def admit(self, data: bytes) -> bytes:
        """The part of ``data`` (as read from the upstream) to relay."""
        if self.body_left is None:
            return data
        head = b""
        if self._head_tail is not None:
            seen = self._head_tail + data
            end = seen.find(b"\r\n\r\n")
            if end < 0:
                self._head_tail = seen[-3:]
                return data
            split = end + 4 - len(self._head_tail)
            head, data = data[:split], data[split:]
            self._head_tail = None
        body = data[: self.body_left]
        self.body_left -= len(body)
        return head + body


class _Reader:
    """Buffered reads from a socket, for parsing request heads and chunked bodies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def fill(self) -> bool:
        """Read what the socket has into the buffer; False when the peer closed it."""
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def until(self, marker: bytes, limit: int = 65536) -> bytes | None:
        while marker not in self.buf:
            if self.buf and not self.buf[:1].isalpha():
                # Not an HTTP request (e.g. a TLS ClientHello): close at once, as a plain
                # HTTP server would answer 400 and close, instead of waiting for a head.
                raise _ProtocolError("not an HTTP request")
            if len(self.buf) > limit:
                raise _ProtocolError("head too large")
            if not self.fill():
                if self.buf:
                    raise _ProtocolError("connection closed mid-head")
                return None
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exactly(self, n: int) -> Iterator[bytes]:
        while n > 0:
            if not self.buf and not self.fill():
                raise _ProtocolError("connection closed mid-body")
            piece, self.buf = self.buf[:n], self.buf[n:]
            n -= len(piece)
            yield piece


@dataclass(kw_only=True)
class ThreadedRelay:
    """What the test kit's loopback relays (``Proxy``, ``forward_proxy.ForwardProxy``)
    share: the threads that serve their connections and the sockets those hold, so that
    ``relaying`` stops every one of them when its block exits. ``url`` is set once it
    listens."""

    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _sockets: set[socket.socket] = field(default_factory=set)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="relay")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._sockets.discard(sock)


@contextlib.contextmanager
def relaying(
    relay: ThreadedRelay, accept_loop: Callable[..., None], *args: Any, scheme: str = "http"
) -> Iterator[None]:
    """Listen on 127.0.0.1 (a free port: ``relay.url``), run ``accept_loop(listener,
    *args)`` in a thread until the block exits, then close every socket and join every
    thread the relay started."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    relay.url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}"
    relay._spawn(accept_loop, listener, *args)
    try:
        yield
    finally:
        relay._stopping.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        with relay._lock:
            socks = list(relay._sockets)
        relay._close(*socks)
        with relay._lock:
            threads = list(relay._threads)
        for thread in threads:
            thread.join(timeout=5)


@dataclass
class Proxy(ThreadedRelay):
    """A running proxy. Point the client at ``host``/``url`` instead of the upstream.

    ``rate`` (bytes/s, None: unlimited) and ``latency`` (seconds per request) may be changed
    while it runs. ``requests`` lists every request head; ``count(method, path)`` counts
    them (path without query). ``blob_gets(digest)`` counts GETs of one blob.
    """

    upstream: str
    latency: float = 0.0
    requests: list[RecordedRequest] = field(default_factory=list)
    bytes_to_client: int = 0
    _bucket: _TokenBucket = field(default_factory=_TokenBucket)
    _injections: list[_Injection] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.url.partition("://")[2]

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])

    @property
    def rate(self) -> float | None:
        return self._bucket.rate

    @rate.setter
    def rate(self, value: float | None) -> None:
        self._bucket.rate = value

    @property
    def counts(self) -> collections.Counter[tuple[str, str]]:
        with self._lock:
            return collections.Counter((r.method, r.path) for r in self.requests)

    def count(self, method: str | None = None, path: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method.upper())
                and (path is None or r.path == path)
            )

    def blob_gets(self, digest: str) -> int:
        """GET requests for ``/v2/<any repo>/blobs/<digest>``."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.method == "GET" and r.path.endswith(f"/blobs/{digest}")
            )

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_to_client = 0

    def inject(
        self, path: str, reply: Reply, *, method: str | None = None, times: int | None = 1
    ) -> None:
        """Answer the next ``times`` requests whose path is ``path`` (or ends with it, when
        it starts with ``*``) with ``reply`` instead of forwarding them (None: always)."""
        with self._lock:
            self._injections.append(
                _Injection(method.upper() if method else None, path, reply, times)
            )

    def _take_injection(self, method: str, path: str) -> Reply | None:
        with self._lock:
            for inj in self._injections:
                if inj.method not in (None, method):
                    continue
                if path != inj.path and not (
                    inj.path.startswith("*") and path.endswith(inj.path[1:])
                ):
                    continue
                if inj.times is not None:
                    inj.times -= 1
                    if inj.times <= 0:
                        self._injections.remove(inj)
                return inj.reply
        return None

    # -- connection handling --

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._track(client)
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        host, _, port = self.upstream.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except OSError:
            self._close(client)
            return
        upstream.settimeout(None)
        self._track(upstream)
        write_lock = threading.Lock()
        cut = _Cut()
        self._spawn(self._pump_down, upstream, client, write_lock, cut)
        try:
            self._pump_up(client, upstream, write_lock, cut)
        except (OSError, _ProtocolError):
            pass
        finally:
            self._close(client, upstream)

    def _pump_up(
        self,
        client: socket.socket,
        upstream: socket.socket,
        write_lock: threading.Lock,
        cut: _Cut,
    ) -> None:
        reader = _Reader(client)
        while not self._stopping.is_set():
            head = reader.until(b"\r\n\r\n")
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                raise _ProtocolError(f"bad request line {lines[0]!r}")
            method, target = parts[0].upper(), parts[1]
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            request = RecordedRequest(method, target, headers)
            with self._lock:
                self.requests.append(request)
            if self.latency:
                time.sleep(self.latency)
            injected = self._take_injection(method, request.path)
            body = self._body(reader, headers, method)
            if injected is not None and injected.stall_after is not None:
                cut.arm(injected.stall_after)  # and forward it
            elif injected is not None:
                for _ in body:  # consume and drop the request body
                    pass
                if injected.stall:
                    while reader.fill():  # silent until the client hangs up
                        pass
                    return
                self._answer(client, injected, write_lock, head_only=method == "HEAD")
                if injected.close or injected.mismatched_length:
                    return  # the caller closes the client connection
                continue
            upstream.sendall(head)
            for piece in body:
                upstream.sendall(piece)

    @staticmethod
    def _body(reader: _Reader, headers: Mapping[str, str], method: str) -> Iterator[bytes]:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return Proxy._chunked(reader)
        length = int(headers.get("content-length") or 0)
        if method in ("GET", "HEAD") and not length:
            return iter(())
        return reader.exactly(length)

    @staticmethod
    def _chunked(reader: _Reader) -> Iterator[bytes]:
        while True:
            line = reader.until(b"\r\n")
            if line is None:
                raise _ProtocolError("connection closed in chunked body")
            yield line
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers up to the empty line
                    trailer = reader.until(b"\r\n")
                    if trailer is None:
                        raise _ProtocolError("connection closed in trailers")
                    yield trailer
                    if trailer == b"\r\n":
                        return
            yield from reader.exactly(size + 2)

    def _answer(
        self, client: socket.socket, reply: Reply, write_lock: threading.Lock, head_only: bool
    ) -> None:
        with write_lock:
            if reply.close:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)
                return
            if reply.delay:
                time.sleep(reply.delay)
            lines = [f"HTTP/1.1 {reply.status} Injected"]
            names = {k.lower() for k in reply.headers}
            lines += [f"{k}: {v}" for k, v in reply.headers.items()]
            if "content-length" not in names:
                lines.append(f"Content-Length: {len(reply.body)}")
            data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            client.sendall(data if head_only else data + reply.body)

    def _pump_down(
        self,
        upstream: socket.socket,
        client: socket.socket,
        write_lock: threading.Lock,
        cut: _Cut,
    ) -> None:
        try:
            while not self._stopping.is_set():
                data = upstream.recv(65536)
                if not data:
                    break
                data = cut.admit(data)
                if not data:
                    continue  # cut: read on, relay nothing
                view = memoryview(data)
                step = max(1024, int((self.rate or 0) / 20)) if self.rate else len(data)
                for i in range(0, len(view), step):
                    piece = view[i : i + step]
                    self._bucket.take(len(piece), self._stopping)
                    # Counted before it is sent: a client that has every byte must never
                    # read a count that is still missing the last piece.
                    with self._lock:
                        self.bytes_to_client += len(piece)
                    try:
                        with write_lock:
                            client.sendall(piece)
                    except OSError:
                        with self._lock:
                            self.bytes_to_client -= len(piece)
                        raise
        except OSError:
            pass
        finally:
            if not cut.silent:  # a cut response stays silent, however the upstream ends
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def run_proxy(upstream: str, *, rate: float | None = None, latency: float = 0.0) -> Iterator[Proxy]:
    """Proxy ``http://127.0.0.1:<port>`` to ``upstream`` ("127.0.0.1:PORT") until exit.

    Plain HTTP upstreams only (it parses requests); TLS traffic would not be counted.
    """
    proxy = Proxy(upstream=upstream, latency=latency)
    proxy.rate = rate
    with relaying(proxy, proxy._accept_loop):
        yield proxy
