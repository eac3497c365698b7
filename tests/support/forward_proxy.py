"""A forward HTTP proxy on 127.0.0.1, as a corporate proxy is to the client: CONNECT
tunnels for https targets, absolute-form requests for plain-http ones.

``run_forward_proxy(hosts)`` resolves target names through ``hosts`` (name → address)
only: the test registry listens on 127.0.0.1, which a client never proxies, so tests
name it ``registry.test``, which only this proxy knows, and a client that looked the
name up itself would fail. It records what it carried (``tunnels``: the ``host:port``
of each CONNECT; ``forwarded``: the absolute URL of each plain-http request;
``authorizations``: the ``Proxy-Authorization`` of every request, None when absent;
``upstream_heads``: each forwarded request head as the target received it), can require
credentials (``credentials``: anything else is answered 407) and can refuse everything
with a status of its choice (``refuse``, e.g. 502), or only CONNECTs (``refuse_connect``:
a proxy that tunnels to port 443 only, as squid by default), or only the first
``refuse_connect_times`` of them (a proxy overloaded for a while; ``connects_refused``
counts them), saying ``Retry-After: refuse_connect_retry_after`` when that is set. A
forwarded request goes upstream
with ``Connection: close`` and its answer to the client too: one request per
connection keeps the relay a byte copy.

Threads serve it; everything stops when the context exits.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from .servers import ThreadedRelay, relaying

__all__ = ["ForwardProxy", "run_forward_proxy"]

_MAX_HEAD = 64 * 1024
_RELAY_CHUNK = 256 * 1024


@dataclass
class ForwardProxy(ThreadedRelay):
    """A running proxy: ``url`` is ``http://127.0.0.1:PORT`` (``https://`` with TLS)."""

    hosts: Mapping[str, str]
    credentials: tuple[str, str] | None = None
    refuse: int | None = None
    refuse_connect: int | None = None
    refuse_connect_times: int | None = None
    refuse_connect_retry_after: str | None = None
    connects_refused: int = 0
    tunnels: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    upstream_heads: list[bytes] = field(default_factory=list)
    bytes_to_client: int = 0

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])

    def carried(self) -> int:
        """Requests it carried or answered (CONNECTs and forwarded requests)."""
        with self._lock:
            return len(self.authorizations)

    # -- serving -------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket, tls: ssl.SSLContext | None) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._spawn(self._serve, client, tls)

    def _serve(self, client: socket.socket, tls: ssl.SSLContext | None) -> None:
        self._track(client)
        upstream: socket.socket | None = None
        try:
            if tls is not None:
                client = tls.wrap_socket(client, server_side=True)
                self._track(client)
            head, rest = _read_head(client)
            if head is None:
                return
            request_line, headers = _parse_head(head)
            method, target, _version = request_line.split(" ", 2)
            authorization = headers.get("proxy-authorization")
            with self._lock:
                self.authorizations.append(authorization)
            if self.credentials is not None and authorization != _basic(*self.credentials):
                _answer(
                    client,
                    407,
                    "Proxy Authentication Required",
                    b'Proxy-Authenticate: Basic realm="test proxy"\r\n',
                )
                return
            if self.refuse is not None:
                _answer(client, self.refuse, "Refused By Test Proxy")
                return
            if method == "CONNECT":
                with self._lock:
                    self.tunnels.append(target)
                if self.refuse_connect is not None and self._refusing_connect():
                    wait = self.refuse_connect_retry_after
                    _answer(
                        client,
                        self.refuse_connect,
                        "CONNECT Refused By Test Proxy",
                        b"" if wait is None else f"Retry-After: {wait}\r\n".encode("latin-1"),
                    )
                    return
                host, _, port = target.rpartition(":")
                if ":" in host and not (host.startswith("[") and host.endswith("]")):
                    # RFC 9110's authority form brackets an IPv6 host; a real proxy reads
                    # an unbracketed one as another host and port (httpcore writes it so).
                    _answer(client, 400, "Unbracketed IPv6 Target")
                    return
                upstream = self._connect(host.strip("[]"), int(port))
                if upstream is None:
                    _answer(client, 502, "Bad Gateway")
                    return
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
                self._relay_both(client, upstream)
                return
            parts = urllib.parse.urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                _answer(client, 400, "Not An Absolute-Form Request")
                return
            with self._lock:
                self.forwarded.append(target)
            upstream = self._connect(parts.hostname, parts.port or 80)
            if upstream is None:
                _answer(client, 502, "Bad Gateway")
                return
            path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            kept = [
                f"{name}: {value}"
                for name, value in headers.items()
                if name not in ("proxy-authorization", "proxy-connection", "connection")
            ]
            upstream_head = "\r\n".join(
                [f"{method} {path} HTTP/1.1", *kept, "Connection: close", "", ""]
            ).encode("latin-1")
            with self._lock:
                self.upstream_heads.append(upstream_head)
            upstream.sendall(upstream_head + rest)
            self._relay_answer(upstream, client)
        except (OSError, ValueError):
            pass
        finally:
            self._close(client, *(() if upstream is None else (upstream,)))

    def _refusing_connect(self) -> bool:
        """Whether this CONNECT is one ``refuse_connect`` answers (counted if so)."""
        with self._lock:
            limit = self.refuse_connect_times
            if limit is not None and self.connects_refused >= limit:
                return False
            self.connects_refused += 1
            return True

    def _connect(self, host: str, port: int) -> socket.socket | None:
        address = self.hosts.get(host.lower())
        if address is None:
            return None  # a name it does not know: 502, as a proxy whose DNS failed
        try:
            upstream = socket.create_connection((address, port), timeout=10)
        except OSError:
            return None
        upstream.settimeout(None)
        self._track(upstream)
        return upstream

    def _relay_both(self, client: socket.socket, upstream: socket.socket) -> None:
        done = threading.Event()

        def pump(source: socket.socket, sink: socket.socket, to_client: bool) -> None:
            try:
                while True:
                    data = source.recv(_RELAY_CHUNK)
                    if not data:
                        break
                    sink.sendall(data)
                    if to_client:
                        with self._lock:
                            self.bytes_to_client += len(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                done.set()

        self._spawn(pump, upstream, client, True)
        pump(client, upstream, False)
        done.wait(timeout=60)

    def _relay_answer(self, upstream: socket.socket, client: socket.socket) -> None:
        """The upstream's answer, its head told ``Connection: close``, then its body to
        the end of the upstream's stream."""
        head, rest = _read_head(upstream)
        if head is None:
            return
        lines = [
            line
            for line in head.split(b"\r\n")
            if line and not line.lower().startswith(b"connection:")
        ]
        client.sendall(b"\r\n".join([*lines, b"Connection: close", b"", b""]) + rest)
        while True:
            data = upstream.recv(_RELAY_CHUNK)
            if not data:
                return
            client.sendall(data)
            with self._lock:
                self.bytes_to_client += len(data)


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    """The head up to its blank line, and what came after it; None at an early EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > _MAX_HEAD:
            return None, b""
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _answer(client: socket.socket, status: int, reason: str, extra: bytes = b"") -> None:
    body = f"{status} {reason}\n".encode()
    client.sendall(
        f"HTTP/1.1 {status} {reason}\r\n".encode()
        + extra
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


@contextlib.contextmanager
def run_forward_proxy(
    hosts: Mapping[str, str],
    *,
    credentials: tuple[str, str] | None = None,
    refuse: int | None = None,
    refuse_connect: int | None = None,
    refuse_connect_times: int | None = None,
    refuse_connect_retry_after: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> Iterator[ForwardProxy]:
    """A forward proxy on ``http://127.0.0.1:<port>`` (``https://`` with the server
    context ``tls``) until the block exits."""
    proxy = ForwardProxy(
        hosts={k.lower(): v for k, v in hosts.items()},
        credentials=credentials,
        refuse=refuse,
        refuse_connect=refuse_connect,
        refuse_connect_times=refuse_connect_times,
        refuse_connect_retry_after=refuse_connect_retry_after,
    )
    with relaying(proxy, proxy._accept_loop, tls, scheme="https" if tls is not None else "http"):
        yield proxy
