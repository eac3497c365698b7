"""The HTTP clients that talk to registries: httpx on an httpcore pool that reads big.

Under trio every socket read costs the event loop a scheduling round, so the read size
decides throughput (MEASUREMENTS.md: httpcore's HTTP/1.1 connection asks for 64 KiB per
read; 1 MiB reads give 2-4x). httpcore lets us supply the network backend, so ours wraps
its trio backend and makes each stream read ``limits.chunk_size`` bytes whatever size the
connection asks for; h11 buffers any surplus. The pool is handed to httpx through a small
transport of our own (the one httpx ships builds its own pool with the default backend).
That transport reads the body of a large response (a layer) past h11 once h11 has given
the part it buffered, straight from the connection's stream (``_DirectBody``): h11 copies
each byte four times on the event loop's thread.

One client per TLS verification mode: ``open_client(..., verify=False)`` exists only for
registries the user listed as insecure.

Where a connection goes: the backend looks each host name up through a ``PinnedResolver``,
the one the registry client's address checks (``stages/_auth.py``,
``refused_address_class``) look names up through, and connects only to the addresses it
answers, which are the same for as long as it lives (a pull). Left to httpcore, the name
was looked up again at the connect: a name whose DNS answer changed between the check and
the connect (DNS rebinding: a public address for the check, then 169.254.169.254) reached
the address no check had seen. TLS still names the host (SNI, certificate check), not the
address; a pooled connection was made to a pinned address of its origin's host, so reusing
it goes nowhere the checks did not classify.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.cookiejar
import ipaddress
import math
import os
import socket
import ssl
import sys
import typing
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import certifi
import httpcore
import httpx
import trio

from ._config import Limits, ProxySettings, RegistryOptions
from ._errors import UsageError
from ._proxy import ProxyURL, proxy_secrets
from ._redact import cut_secrets, redact
from ._retry import parse_retry_after

__all__ = [
    "DeferredTrustContext",
    "LargeReadBackend",
    "LargeReadStream",
    "PinnedResolver",
    "PoolTransport",
    "ProxyRefused",
    "ProxyRouter",
    "ProxyUnreachable",
    "Resolver",
    "certificate_problem",
    "cookie_jar_used",
    "describe_error",
    "is_literal_host",
    "make_ssl_context",
    "shared_ssl_context",
    "open_client",
    "resolve_host",
    "stalled_for",
    "tls_failure",
    "transient_failure",
    "url_authority",
]

# Idle connections kept per pool, and how long; registries are few, layers many.
MAX_CONNECTIONS = 64
MAX_KEEPALIVE = 16
KEEPALIVE_EXPIRY_S = 10.0


class DeferredTrustContext(ssl.SSLContext):
    """A verifying client context that loads the system's CA certificates at its first
    TLS handshake: ``LargeReadStream.start_tls`` calls ``load_trust`` before each one.

    Loading them takes about 25 ms (Debian's 144 CAs), and every CLI pull paid it before
    its first request, even from a plain-HTTP registry on loopback, which never verifies
    a certificate. A handshake that skipped ``load_trust`` could only fail (no CA trusted
    but the user's ``--ca-file``), never pass unverified.
    """

    _trust_loaded = False

    def load_trust(self) -> None:
        """The system's CAs, or certifi's where the system has none; once."""
        if self._trust_loaded:
            return
        before = self.cert_store_stats()["x509_ca"]
        self.load_default_certs()
        if self.cert_store_stats()["x509_ca"] == before:
            self.load_verify_locations(cafile=certifi.where())
        self._trust_loaded = True


class LargeReadStream(httpcore.AsyncNetworkStream):
    """A network stream that asks the socket for at least ``read_size`` bytes per read.

    The ``timeout`` parameters are httpcore's interface (it passes httpx's per-operation
    timeouts down), not ours.
    """

    def __init__(self, inner: httpcore.AsyncNetworkStream, read_size: int) -> None:
        self._inner = inner
        self._read_size = read_size
        # Set on a new connection to an https proxy: its first handshake is the proxy's
        # own, and a failure there is the proxy's (``_ProxyConnectFailed``), not the
        # target's, whose handshake inside the tunnel comes after, on the stream returned.
        self.proxy_handshake = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max(max_bytes, self._read_size), timeout)

    async def read_body(self, remaining: int, timeout: float | None) -> bytes:  # noqa: ASYNC109
        """At most ``remaining`` bytes, and at most ``read_size``: a body read past h11
        (``_DirectBody``) never reads beyond its end, whatever the server sends after."""
        return await self._inner.read(min(remaining, self._read_size), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        # httpcore's trio stream closes the TCP stream when the handshake fails with an
        # exception, but not when it is cancelled: close it here, or every cancelled
        # connect to a TLS endpoint leaks a socket.
        if isinstance(ssl_context, DeferredTrustContext):
            ssl_context.load_trust()
        done = False
        try:
            inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
            done = True
        except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
            if self.proxy_handshake:
                raise _caused(_ProxyConnectFailed(str(exc)), exc) from exc
            raise
        finally:
            if not done:
                with trio.CancelScope(shield=True):
                    await self._inner.aclose()
        return LargeReadStream(inner, self._read_size)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


# Host name -> the addresses it resolves to (empty when it does not resolve).
Resolver = Callable[[str], Awaitable[Sequence[str]]]

# How long a connection to one of a host's addresses is given before the next address is
# tried alongside it (RFC 8305's "Connection Attempt Delay", trio's open_tcp_stream's).
HAPPY_EYEBALLS_DELAY_S = 0.25


async def resolve_host(host: str) -> list[str]:
    """The addresses ``host`` resolves to, through the system resolver; empty on failure.

    An IPv6 link-local address keeps its zone (``fe80::1%eth0``): a connection to it
    needs it, and ``ipaddress`` classifies it as the address without."""
    try:
        return await _system_lookup(host)
    except OSError:
        return []


async def _system_lookup(host: str) -> list[str]:
    """``host``'s addresses; ``socket.gaierror`` when it has none, also for a name the
    resolver cannot be asked for (a label empty or over 63 characters), which the idna
    codec refuses with a ``UnicodeError`` before any lookup: a layer's URL or a redirect
    names any host it likes, and that error went out of the address checks as it was."""
    try:
        infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_STREAM)
    except UnicodeError as exc:
        reason = exc.__cause__ or exc.__context__ or exc
        raise socket.gaierror(socket.EAI_NONAME, f"not a name DNS can look up: {reason}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_literal_host(host: str) -> bool:
    """An address literal (IPv6 with or without brackets) or ``localhost``: a host the
    address checks classify as written, without a lookup, and that a connection reaches
    without asking DNS (``localhost`` is the hosts file's)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _lookup_name(host: str) -> str:
    """``host`` as a connection is asked for it: lowercase, an internationalised name in
    its ASCII form, as httpx hands it to httpcore (``URL.raw_host``). The checks are given
    ``URL.host``, the Unicode form: both must find the one lookup."""
    if host.isascii():
        return host.lower()
    try:
        return httpx.URL(scheme="https", host=host).raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError, ValueError):
        return host.lower()


@dataclass(frozen=True)
class _Answer:
    """What a name resolved to: its ``addresses``, or, when none, the resolver's error
    (``errno``, ``error``) that a connection to it fails with."""

    addresses: tuple[str, ...]
    errno: int = 0
    error: str = ""


class PinnedResolver:
    """A ``Resolver`` that looks each host name up once: the first answer for a name (its
    failure too) is that name's answer for as long as this object lives, one
    ``RegistryClient``'s, one pull's.

    The registry client's address checks (``stages/_auth.py``) and its connections
    (``LargeReadBackend``) both ask here, so a request goes only to an address a check
    classified. With a second lookup at the connect, a name whose DNS answer changed in
    between (DNS rebinding: a public address, then 169.254.169.254 or 127.0.0.1) was
    checked at one address and reached at the other; a failed first lookup (no address
    to classify) let the second go anywhere. A pull that outlives a DNS change goes on
    with the addresses it started with, as a browser pinning DNS does; the next pull
    looks again. Tasks asking for a name being looked up wait for that lookup.

    ``resolve`` None is the system resolver, whose error a failed connection then
    reports ("Name or service not known"); tests pass a table. Address literals and
    ``localhost`` are their own answer (``is_literal_host``).
    """

    def __init__(self, resolve: Resolver | None = None) -> None:
        self._resolve = resolve
        self._answers: dict[str, _Answer] = {}
        self._lookups: dict[str, trio.Event] = {}

    async def __call__(self, host: str) -> list[str]:
        return list((await self.answer(host)).addresses)

    async def answer(self, host: str) -> _Answer:
        """``host``'s addresses, or why it has none."""
        if is_literal_host(host):
            return _Answer((host,))
        name = _lookup_name(host)
        while name not in self._answers:
            lookup = self._lookups.get(name)
            if lookup is None:
                await self._look_up(name)
            else:  # its answer, or, if it was cancelled, a lookup of our own
                await lookup.wait()
        return self._answers[name]

    async def _look_up(self, name: str) -> None:
        done = self._lookups[name] = trio.Event()
        try:
            if self._resolve is not None:
                answer = _Answer(tuple(await self._resolve(name)))
            else:
                try:
                    answer = _Answer(tuple(await _system_lookup(name)))
                except OSError as exc:
                    answer = _Answer((), exc.errno or 0, exc.strerror or str(exc))
            if not answer.addresses and not answer.error:
                answer = _Answer((), socket.EAI_NONAME, "the name resolves to no address")
            self._answers[name] = answer
        finally:
            del self._lookups[name]
            done.set()


class LargeReadBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend, with every stream wrapped in ``LargeReadStream``, and
    every TCP connection made to an address ``names`` answers for its host: the address
    checks' (``PinnedResolver``), never one looked up again. ``inner`` connects to an
    address (tests: a simulated network)."""

    def __init__(
        self,
        read_size: int,
        inner: httpcore.AsyncNetworkBackend | None = None,
        names: PinnedResolver | None = None,
    ) -> None:
        self._read_size = read_size
        self._inner = inner if inner is not None else httpcore.TrioBackend()
        self._names = names if names is not None else PinnedResolver()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # The connect timeout covers the lookup too, as it did trio's open_tcp_stream's.
        started = trio.current_time()
        with trio.move_on_after(math.inf if timeout is None else timeout) as looking_up:
            answer = await self._names.answer(host)
        if looking_up.cancelled_caught:
            raise httpcore.ConnectTimeout(f"looking up {host} took more than {timeout:g} s")
        if not answer.addresses:  # as the stack's own lookup fails, in the resolver's words
            failure = socket.gaierror(answer.errno, answer.error)
            raise _caused(httpcore.ConnectError(f"{host}: {answer.error}"), failure)
        if timeout is not None:
            timeout = max(0.0, timeout - (trio.current_time() - started))
        options = list(socket_options or ())
        if len(answer.addresses) == 1:
            stream = await self._inner.connect_tcp(
                answer.addresses[0], port, timeout, local_address, options
            )
        else:
            stream = await self._connect_first(
                answer.addresses, port, timeout, local_address, options
            )
        return LargeReadStream(stream, self._read_size)

    async def _connect_first(
        self,
        addresses: Sequence[str],
        port: int,
        timeout: float | None,  # noqa: ASYNC109 (httpcore's, for all the attempts)
        local_address: str | None,
        socket_options: list[httpcore.SOCKET_OPTION],
    ) -> httpcore.AsyncNetworkStream:
        """The first connection to one of ``addresses`` that succeeds, each tried when the
        one before failed or ``HAPPY_EYEBALLS_DELAY_S`` after it started, IPv4 and IPv6
        taking turns first (RFC 8305, as trio's ``open_tcp_stream`` tries what it
        resolves): an address that does not answer costs a quarter second, not the
        connect timeout. The others are cancelled, or closed when they connected too.
        All within ``timeout``, as trio's attempts were under one deadline: an attempt
        started later is given what is left of it (each given the whole of it, n silent
        addresses took (n - 1) / 4 s more). When none connects, ``ConnectTimeout`` if
        every attempt timed out, else ``ConnectError``, from the attempts' errors."""
        connected: list[httpcore.AsyncNetworkStream] = []
        failures: list[Exception] = []
        deadline = None if timeout is None else trio.current_time() + timeout

        async def attempt(address: str, failed: trio.Event, nursery: trio.Nursery) -> None:
            left = None if deadline is None else max(0.0, deadline - trio.current_time())
            try:
                stream = await self._inner.connect_tcp(
                    address, port, left, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failures.append(exc)
                failed.set()
                return
            if connected:  # another attempt got there first
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                return
            connected.append(stream)
            nursery.cancel_scope.cancel()

        done = False
        try:
            async with trio.open_nursery() as nursery:
                for address in _interleaved(addresses):
                    failed = trio.Event()
                    nursery.start_soon(attempt, address, failed, nursery)
                    with trio.move_on_after(HAPPY_EYEBALLS_DELAY_S):
                        await failed.wait()
            done = True
        finally:
            if not done and connected:  # cancelled from outside after one connected
                with trio.CancelScope(shield=True):
                    await connected[0].aclose()
        if connected:
            return connected[0]
        timed_out = bool(failures) and all(
            isinstance(failure, httpcore.ConnectTimeout) for failure in failures
        )
        error = httpcore.ConnectTimeout if timed_out else httpcore.ConnectError
        message = f"no connection to any of {', '.join(addresses)} port {port}"
        if not failures:
            raise error(message)
        raise _caused(error(message), ExceptionGroup("connection attempts", failures))

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(path, timeout, socket_options)
        return LargeReadStream(stream, self._read_size)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _caused(error: Exception, cause: BaseException) -> Exception:
    """``error`` caused by ``cause``, also as its context: httpcore's pool re-raises what
    a backend raised ``from None``, which keeps only the context, and ``describe_error``
    finds the OS's words (``_chain``) there."""
    error.__cause__ = error.__context__ = cause
    return error


def _interleaved(addresses: Sequence[str]) -> list[str]:
    """``addresses`` with the first of the other family (IPv4, IPv6) moved second, as
    RFC 6555 section 5.4 (and trio) order them: a host whose first family does not
    connect gets its other tried after one delay, not after all of the first."""
    first_is_v6 = ":" in addresses[0]
    for index, address in enumerate(addresses):
        if (":" in address) != first_is_v6:
            return [addresses[0], address, *addresses[1:index], *addresses[index + 1 :]]
    return list(addresses)


# Most specific first: the first match wins.
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.ProxyError, httpx.ProxyError),
)


@contextlib.contextmanager
def _map_httpcore_errors() -> Iterator[None]:
    """Turn httpcore's exceptions into httpx's, so callers catch one family."""
    try:
        yield
    except Exception as exc:
        for core_type, httpx_type in _EXCEPTIONS:
            if isinstance(exc, core_type):
                raise httpx_type(str(exc)) from exc
        raise


class _DirectBody:
    """The rest of a response body of known length, read from the connection's stream
    past h11.

    httpcore hands every body byte through h11, which copies it four times while the
    event loop's thread holds the GIL (into its receive buffer, a slice to test for
    emptiness, the slice it returns, and httpcore's ``bytes()`` of that): 0.17 CPU-s
    per 246 MiB (the benchmark's ``app`` image) in 1 MiB reads, measured. In
    interleaved A/Bs on a busy machine, pulls of ``app`` went 2.87 -> 2.70 CPU-s
    (medians of 10) and of ``big`` 10.2 -> 9.0 (of 6). Once h11
    has given up what it buffered with the headers (the body's first part), the bytes
    left are exactly the next ``remaining`` bytes of the stream, read from it as the
    socket gives them.

    h11 then never sees the body end, so httpcore closes the connection when the
    response closes instead of pooling it: which is why only bodies of at least
    ``DIRECT_BODY_MIN_BYTES`` take this path (a layer; not a manifest or a token).
    A body that ends early raises what h11 raises then."""

    def __init__(self, stream: LargeReadStream, length: int, timeout: float | None) -> None:
        self._stream = stream
        self._length = length
        self._timeout = timeout
        self.remaining: int | None = None  # None: h11 has not given its part yet

    def after_first_part(self, size: int) -> None:
        """h11 gave the body's first ``size`` bytes; the rest comes from the stream."""
        self.remaining = self._length - size

    async def next_part(self) -> bytes:
        """The body's next bytes; ``StopAsyncIteration`` after its last."""
        assert self.remaining is not None
        if self.remaining <= 0:
            raise StopAsyncIteration
        data = await self._stream.read_body(self.remaining, self._timeout)
        if not data:
            raise httpcore.RemoteProtocolError(
                "peer closed connection without sending complete message body: received "
                f"{self._length - self.remaining} bytes, expected {self._length}"
            )
        self.remaining -= len(data)
        return data


# Bodies at least this long are read past h11 (``_DirectBody``), at the cost of their
# connection, which is not pooled afterwards.
DIRECT_BODY_MIN_BYTES = 8 * 1024 * 1024


def _direct_body(request: httpx.Request, core: httpcore.Response) -> _DirectBody | None:
    """A ``_DirectBody`` for a response whose body is ``Content-Length`` bytes long
    (a GET answered 2xx, not 204, without ``Transfer-Encoding``) and large, over one of
    our streams; None for any other, which h11 reads whole."""
    if request.method != "GET" or not 200 <= core.status < 300 or core.status == 204:
        return None
    lengths = [value for name, value in core.headers if name.lower() == b"content-length"]
    chunked = any(name.lower() == b"transfer-encoding" for name, _ in core.headers)
    if chunked or len(lengths) != 1 or not lengths[0].isdigit():
        return None
    length = int(lengths[0])
    stream = core.extensions.get("network_stream")
    if length < DIRECT_BODY_MIN_BYTES or not isinstance(stream, LargeReadStream):
        return None
    timeout = typing.cast(dict[str, float | None], request.extensions.get("timeout", {}))
    return _DirectBody(stream, length, timeout.get("read"))


class _ResponseStream(httpx.AsyncByteStream):
    """httpcore's body stream with its errors mapped to httpx's; a large body's parts
    after the first read past h11 (``_DirectBody``).

    An iterator object rather than an async generator, and ``aclose`` closes the httpcore
    iterator it started: an abandoned async generator (a body not read to the end) is a
    ResourceWarning under trio.
    """

    def __init__(
        self, core_stream: typing.AsyncIterable[bytes], direct: _DirectBody | None = None
    ) -> None:
        self._core_stream = core_stream
        self._parts: typing.AsyncIterator[bytes] | None = None
        self._direct = direct

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        with _map_httpcore_errors():
            direct = self._direct
            if direct is not None and direct.remaining is not None:
                return await direct.next_part()
            if self._parts is None:
                self._parts = aiter(self._core_stream)
            part = await anext(self._parts)
            if direct is not None:
                direct.after_first_part(len(part))
            return part

    async def aclose(self) -> None:
        with _map_httpcore_errors():
            parts_aclose = getattr(self._parts, "aclose", None)
            if parts_aclose is not None:
                await parts_aclose()
            aclose = getattr(self._core_stream, "aclose", None)
            if aclose is not None:
                await aclose()


class PoolTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool we built (and so chose the backend of)."""

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        self._pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _map_httpcore_errors():
            core_response = await self._pool.handle_async_request(core_request)
        assert isinstance(core_response.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response.stream, _direct_body(request, core_response)),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        with _map_httpcore_errors():
            await self._pool.aclose()


# A proxy's answers to a CONNECT that say "not now" rather than "no".
_NOT_NOW = frozenset({429, 502, 503, 504})
# Those whose Retry-After is read, as a registry's are (``RegistryClient._status_error``).
_RETRY_AFTER_READ = frozenset({429, 503})


class ProxyRefused(httpx.ProxyError):
    """The proxy answered a request it was to carry with an error of its own: a
    ``CONNECT`` not answered 2xx, or a 407 to a plain-http request; or a request to an
    IPv6 address, which httpcore cannot name to a proxy, refused before it is sent. The
    message names the proxy (``ProxyURL.shown``, never its credentials), the target and
    what the proxy said. ``status``: the proxy's HTTP status, when it answered one.
    ``retry_after_s``: the wait a 429's or 503's ``Retry-After`` asked for
    (``parse_retry_after``), read as a registry's are; ``retry_after_from``: the proxy,
    as the retry policy names who asked (``ImagecError.retry_after_from``)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        retry_after_from: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
        self.retry_after_from = retry_after_from

    @property
    def credentials_refused(self) -> bool:
        """407: the proxy wants credentials, or other ones; whatever is asked next of it
        gets the same answer."""
        return self.status == 407

    @property
    def not_now(self) -> bool:
        """429, 502, 503 or 504: the proxy is rate-limiting this client, could not reach
        the target, or is overloaded; as after the same answers from a registry, another
        attempt may get through. Any other refusal (a 4xx: its policy, its credentials) is
        final."""
        return self.status in _NOT_NOW


# What httpcore's trace extension passes a callback: an event's name and its details.
_Trace = Callable[[str, dict[str, typing.Any]], Awaitable[None]]


class _ConnectAnswer:
    """A ``trace`` callback (the request extension httpx documents, "Request
    Extensions") that keeps the headers of the proxy's answer to the ``CONNECT`` a
    request opened its tunnel with.

    httpcore raises a CONNECT not answered 2xx as ``ProxyError("503 Service
    Unavailable")``, its status and reason only: the answer's headers are dropped with
    the connection, and no interface of httpcore's or httpx's returns them. The CONNECT is
    sent with the extensions of the request that opened the tunnel, so its trace events
    come here: ``http11.send_request_headers.started`` names the request sent
    (``info["request"]``), ``http11.receive_response_headers.complete`` returns
    ``(http_version, status, reason, headers)``. Only a CONNECT's answer is kept; events
    of another shape (a later httpcore) keep nothing, and the retry backs off on its own
    as before. ``inner``: a trace the caller had set, still called first."""

    def __init__(self, inner: _Trace | None) -> None:
        self._inner = inner
        self._connecting = False
        self._answered = False
        self._headers: Sequence[tuple[bytes, bytes]] = ()

    async def __call__(self, name: str, info: dict[str, typing.Any]) -> None:
        if self._inner is not None:
            await self._inner(name, info)
        if name == "http11.send_request_headers.started":
            self._connecting = getattr(info.get("request"), "method", None) == b"CONNECT"
        elif name == "http11.receive_response_headers.complete" and self._connecting:
            self._answered = True
            answer = info.get("return_value")
            if isinstance(answer, tuple) and len(answer) == 4 and isinstance(answer[3], list):
                self._headers = answer[3]

    @property
    def unanswered(self) -> bool:
        """A CONNECT was sent and its answer has not come (yet)."""
        return self._connecting and not self._answered

    def header(self, name: bytes) -> str | None:
        """The first ``name`` header (lower case) of the CONNECT's answer, if any."""
        for key, value in self._headers:
            if isinstance(key, bytes) and isinstance(value, bytes) and key.lower() == name:
                return value.decode("latin-1")
        return None


class ProxyUnreachable(httpx.ConnectError):
    """No connection to the proxy itself (refused, timed out, a name that does not
    resolve). The message names the proxy and the setting it came from."""


class _ProxyConnectFailed(httpcore.ConnectError):
    """A connection to the proxy failed: how ``ProxyRouter`` tells it from a failure
    inside the tunnel (a TLS handshake with the target), which httpcore reports with the
    same type."""


class _ProxyConnections(httpcore.AsyncNetworkBackend):
    """The network backend of a proxy's pool: ``inner``'s (``LargeReadBackend``: the
    large reads, the proxy's name looked up once), with a failed connection, which can
    only be one to the proxy, marked as such."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, *, tls: bool) -> None:
        self._inner = inner
        self._tls = tls  # an https proxy: each connection's first handshake is its own

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            stream = await self._inner.connect_tcp(
                host, port, timeout, local_address, socket_options
            )
        except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
            raise _caused(_ProxyConnectFailed(str(exc)), exc) from exc
        if self._tls and isinstance(stream, LargeReadStream):
            stream.proxy_handshake = True
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class ProxyRouter(httpx.AsyncBaseTransport):
    """Each request through the pool its proxy decision picks: ``direct`` when
    ``settings`` proxies nothing to its scheme and host (``ProxySettings.proxy_for``),
    else the pool ``proxied`` makes for that proxy (one per proxy, made at its first
    request). A failure of the proxy's own (unreachable, or refusing the request) is
    raised as ``ProxyUnreachable`` or ``ProxyRefused``, naming the proxy."""

    def __init__(
        self,
        settings: ProxySettings,
        direct: httpx.AsyncBaseTransport,
        proxied: Callable[[ProxyURL], httpx.AsyncBaseTransport],
    ) -> None:
        self._settings = settings
        self._direct = direct
        self._proxied = proxied
        self._pools: dict[ProxyURL, httpx.AsyncBaseTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        proxy = self._settings.proxy_for(url.scheme, url.raw_host.decode("ascii"), url.port)
        if proxy is None:
            return await self._direct.handle_async_request(request)
        setting = (
            self._settings.https_setting if url.scheme == "https" else self._settings.http_setting
        )
        if ":" in url.host:
            # httpcore writes an IPv6 target without its brackets (``CONNECT
            # 2001:db8::1:5000``, ``GET http://2001:db8::1:5000/v2/``), which names another
            # host and port or none; it cannot be told otherwise: refused here, unsent.
            raise ProxyRefused(
                f"cannot send the request to {url_authority(url)} through the proxy"
                f" {proxy.shown} that {setting} names: an IPv6 address cannot be sent through"
                f" a proxy here; if this machine reaches it directly, list {url.host} in"
                " NO_PROXY"
            )
        pool = self._pools.get(proxy)
        if pool is None:
            pool = self._pools[proxy] = self._proxied(proxy)
        extensions = request.extensions
        connect = _ConnectAnswer(extensions.get("trace"))
        if url.scheme == "https":  # a tunnel: the proxy's own answer is to a CONNECT
            request.extensions = {**extensions, "trace": connect}
        try:
            response = await pool.handle_async_request(request)
        except httpx.ProxyError as exc:  # httpcore's: the CONNECT was not answered 2xx
            answer = str(exc)
            code = answer.split(" ", 1)[0]
            refused = int(code) if code.isdigit() else None
            # A 429's or 503's Retry-After, as a registry's are read (``_status_error``).
            wait = connect.header(b"retry-after") if refused in _RETRY_AFTER_READ else None
            raise ProxyRefused(
                _refusal(proxy, setting, url, answer),
                status=refused,
                retry_after_s=parse_retry_after(wait),
                retry_after_from=f"the proxy {proxy.shown}",
            ) from exc
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.ReadTimeout) and connect.unanswered:
                raise ProxyUnreachable(
                    f"the proxy {proxy.shown} that {setting} names did not answer the CONNECT"
                    f" for {url_authority(url)} (timed out waiting): check the proxy"
                ) from exc
            if not any(isinstance(link, _ProxyConnectFailed) for link in _chain(exc)):
                raise
            raise ProxyUnreachable(_unreachable(proxy, setting, exc)) from exc
        finally:
            request.extensions = extensions  # the caller's, should it send the request again
        if url.scheme == "http" and response.status_code == 407:
            # A plain-http request went to the proxy as it is: 407 is the proxy's answer.
            reason = response.extensions.get("reason_phrase", b"")
            await response.aclose()
            status = f"407 {reason.decode('ascii', 'replace') if isinstance(reason, bytes) else ''}"
            raise ProxyRefused(_refusal(proxy, setting, url, status), status=407)
        return response

    async def aclose(self) -> None:
        try:
            for pool in self._pools.values():
                await pool.aclose()
        finally:
            await self._direct.aclose()


def _unreachable(proxy: ProxyURL, setting: str, exc: BaseException) -> str:
    """What ``ProxyUnreachable`` says when the connection to ``proxy`` itself failed:
    its TCP connection, or the TLS of an https proxy."""
    if (problem := certificate_problem(exc, proxy.host)) is not None:
        words, cure = problem
        return (
            f"the TLS certificate of the proxy {proxy.shown} that {setting} names {words}: {cure}"
        )
    timed_out = any(isinstance(link, httpcore.ConnectTimeout) for link in _chain(exc))
    reason = "timed out" if timed_out else cut_secrets(_describe(exc), proxy_secrets(proxy))
    if tls_failure(exc) == "protocol":
        return (
            f"cannot speak TLS with the proxy {proxy.shown} that {setting} names ({reason}):"
            f" if it is a plain HTTP proxy, write http:// in {setting}"
        )
    return (
        f"cannot connect to the proxy {proxy.shown} that {setting} names ({reason}):"
        f" check {setting} and that the proxy is running"
    )


def _refusal(proxy: ProxyURL, setting: str, url: httpx.URL, answer: str) -> str:
    """What ``ProxyRefused`` says when ``proxy`` answered ``answer`` (``"407 Proxy
    Authentication Required"``) to a request for ``url``: the proxy's reason phrase is its
    text, and quoted cut (``redact``, and the proxy's own credentials)."""
    status, _, phrase = answer.strip().partition(" ")
    phrase = cut_secrets(redact(phrase.strip()), proxy_secrets(proxy))[:100]
    said = f"HTTP {status} {phrase}".rstrip()
    target = url_authority(url)
    if status == "407":
        hint = (
            f"it did not accept the user and password that {setting} gives"
            if proxy.username
            else f"it asks for credentials: put them in {setting} (http://user:password@host:port)"
        )
        return f"the proxy {proxy.shown} refused to carry the request to {target} ({said}): {hint}"
    if status in ("502", "503", "504"):
        return (
            f"the proxy {proxy.shown} could not reach {target} ({said}): check the address,"
            f" or, if this machine reaches {target} without the proxy, list it in NO_PROXY"
        )
    return f"the proxy {proxy.shown} refused to carry the request to {target} ({said})"


def make_ssl_context(options: RegistryOptions, *, verify: bool) -> ssl.SSLContext:
    """A client TLS context: the system's CAs (certifi's where the system has none) plus
    ``options.ca_file``.

    The system's store is what docker and skopeo trust, and where administrators add
    their own CAs; certifi is the fallback for minimal systems without one. Not both:
    each bundle takes 25-35 ms to load, so the system's is loaded at the first handshake
    (``DeferredTrustContext``); ``options.ca_file`` at once, so that a bad file is a usage
    error before any request. ``verify=False`` is for registries listed in
    ``insecure_registries``, and for asking a loopback registry whether it speaks TLS.
    """
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    # What ssl.create_default_context() builds, less the CA loading it does at once.
    context = DeferredTrustContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks host names
    if sys.version_info >= (3, 13):  # create_default_context's stricter checks from 3.13
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
    if options.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(options.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"cannot use the CA file {options.ca_file} (--ca-file, RegistryOptions"
                f".ca_file): {exc}; it must be a readable PEM file of CA certificates"
            ) from exc
    return context


# The context built last in this process for each (verify, CA file), with the file's
# (modification time, size) when it was read: see shared_ssl_context.
_SSL_CONTEXTS: dict[tuple[bool, str | None], tuple[tuple[int, int], ssl.SSLContext]] = {}


def shared_ssl_context(options: RegistryOptions, *, verify: bool) -> ssl.SSLContext:
    """``make_ssl_context``'s result, built once per process for each ``verify`` and CA
    file, and again when that file changes (by its modification time and size).

    Every pull opens its clients; eight pulls side by side spent 8 x 35 ms of the event
    loop loading the same CA bundle. A context is safe to share between connections.
    """
    ca_file = str(options.ca_file) if verify and options.ca_file is not None else None
    version = (0, 0)
    if ca_file is not None:
        try:
            stat = os.stat(ca_file)
            version = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            pass  # make_ssl_context reports it
    key = (verify, ca_file)
    cached = _SSL_CONTEXTS.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    context = make_ssl_context(options, verify=verify)
    _SSL_CONTEXTS[key] = (version, context)
    return context


# Whether the clients' cookie jars are used in this task (see cookie_jar_used).
_COOKIE_JAR_USED = contextvars.ContextVar("imagec_cookie_jar_used", default=True)


class _TaskCookiePolicy(http.cookiejar.DefaultCookiePolicy):
    """The default policy, except that nothing is stored or sent while the task asked
    for no cookies (``cookie_jar_used(False)``)."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return _COOKIE_JAR_USED.get() and super().set_ok(cookie, request)

    def return_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return _COOKIE_JAR_USED.get() and super().return_ok(cookie, request)


@contextlib.contextmanager
def cookie_jar_used(used: bool) -> Iterator[None]:
    """With ``used`` False, the jar of a client from ``open_client`` stores no cookie a
    response sets, for requests sent inside the block by this task (a context variable:
    other tasks sharing the client are not affected).

    httpx's ``client.send`` stores every ``Set-Cookie`` it receives in the client's jar,
    which then goes to that host on every port: a layer URL on the registry's host could
    plant a session cookie the registry would receive. Dropping the outgoing ``Cookie``
    header alone does not stop that; nor does this block stop the sending: httpx's
    ``build_request`` copies the jar's cookies into the request's ``Cookie`` header
    through a jar of its own, so a caller that must send none removes that header too
    (``_follow`` with ``cookies=False``, ``fetch_token``).
    """
    token = _COOKIE_JAR_USED.set(used)
    try:
        yield
    finally:
        _COOKIE_JAR_USED.reset(token)


@contextlib.asynccontextmanager
async def open_client(
    options: RegistryOptions,
    limits: Limits,
    *,
    verify: bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
    names: PinnedResolver | None = None,
    network: httpcore.AsyncNetworkBackend | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` reading ``limits.chunk_size`` bytes per socket read.

    Redirects are not followed (the registry client follows them by hand, deciding at each
    hop which headers may go along); proxies only as ``options.proxy`` says, never read
    from the environment here (``ProxyRouter``), and no netrc; HTTP/1.1 only. The
    cookie jar can be shut for some requests (``cookie_jar_used``). Connections go to
    the addresses ``names`` answers (``LargeReadBackend``): the resolver the caller's
    address checks use, or one of the client's own. ``transport`` replaces the pool
    (tests pass an ``httpx.MockTransport``), ``network`` what the pool connects through
    (tests: a simulated network of named hosts).
    """
    if transport is None:
        transport = _pool_transport(options, limits, verify=verify, names=names, network=network)
    timeout = httpx.Timeout(
        connect=limits.connect_timeout_s,
        read=limits.read_timeout_s,
        write=limits.read_timeout_s,
        pool=None,
    )
    client = httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": options.user_agent},
        cookies=http.cookiejar.CookieJar(policy=_TaskCookiePolicy()),
    )
    async with client:
        yield client


def _pool_transport(
    options: RegistryOptions,
    limits: Limits,
    *,
    verify: bool,
    names: PinnedResolver | None,
    network: httpcore.AsyncNetworkBackend | None,
) -> httpx.AsyncBaseTransport:
    """The pool, alone when no proxy is configured; else a ``ProxyRouter`` in front of it
    and of a pool per proxy, all connecting through one ``LargeReadBackend`` (one lookup
    of each name, the proxy's included)."""
    ssl_context = shared_ssl_context(options, verify=verify)
    backend = LargeReadBackend(limits.chunk_size, network, names)
    direct = PoolTransport(
        httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_KEEPALIVE,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
            http1=True,
            http2=False,
            network_backend=backend,
        )
    )
    if not options.proxy.configured:
        return direct

    def proxied(proxy: ProxyURL) -> PoolTransport:
        authorization = proxy.authorization
        return PoolTransport(
            httpcore.AsyncConnectionPool(
                ssl_context=ssl_context,
                proxy=httpcore.Proxy(
                    url=httpcore.URL(
                        scheme=proxy.scheme.encode("ascii"),
                        host=proxy.host.encode("ascii"),
                        port=proxy.port,
                        target=b"/",
                    ),
                    headers=[]
                    if authorization is None
                    else [(b"Proxy-Authorization", authorization)],
                    # An https proxy is verified as a registry is: the system's CAs and
                    # --ca-file, whatever the target's mode.
                    ssl_context=(
                        shared_ssl_context(options, verify=True)
                        if proxy.scheme == "https"
                        else None
                    ),
                ),
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_KEEPALIVE,
                keepalive_expiry=KEEPALIVE_EXPIRY_S,
                http1=True,
                http2=False,
                network_backend=_ProxyConnections(backend, tls=proxy.scheme == "https"),
            )
        )

    return ProxyRouter(options.proxy, direct, proxied)


def _chain(exc: BaseException, depth: int = 0) -> Iterator[BaseException]:
    """``exc`` and its causes, descending into the first member of exception groups
    (trio reports "all attempts to connect failed" with a group of the attempts)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup) and current.exceptions and depth < 5:
            yield from _chain(current.exceptions[0], depth + 1)
        current = current.__cause__ or current.__context__


def tls_failure(exc: BaseException) -> typing.Literal["verify", "protocol"] | None:
    """Why a connection failed in TLS, if it did.

    ``"verify"``: the server's certificate was not trusted (the user needs ``--ca-file``
    or ``--insecure-registry``); ``"protocol"``: the handshake failed otherwise, typically
    because the server speaks plain HTTP on that port. The cause is buried a few levels
    down the chain httpx -> httpcore -> trio -> ssl.
    """
    for link in _chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return "verify"
        if isinstance(link, ssl.SSLError):
            return "protocol"
    return None


# OpenSSL's verify codes (X509_V_ERR_*) for a certificate at fault whoever signed it.
_CERT_NOT_YET_VALID, _CERT_HAS_EXPIRED, _HOSTNAME_MISMATCH, _IP_MISMATCH = 9, 10, 62, 64


def certificate_problem(exc: BaseException, host: str) -> tuple[str, str] | None:
    """Why the server's certificate was refused, in words that follow "the TLS
    certificate of HOST", and what may cure it besides skipping verification: a CA given
    with ``--ca-file``, except for a certificate that has expired, is not valid yet or is
    not valid for ``host``, whoever signed it. None when verification is not what
    failed."""
    for link in _chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            code = getattr(link, "verify_code", None)
            if code in (_CERT_HAS_EXPIRED, _CERT_NOT_YET_VALID):
                when = "has expired" if code == _CERT_HAS_EXPIRED else "is not valid yet"
                return f"{when} (or this machine's clock is wrong)", "renew it"
            if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
                return f"is not valid for the name {host}", "use a name it is valid for"
            detail = getattr(link, "verify_message", None) or getattr(link, "reason", None)
            return (
                f"is not trusted ({redact(str(detail or link))})",
                "pass --ca-file PEM (RegistryOptions.ca_file) with the CA that signed it",
            )
    return None


def transient_failure(exc: httpx.HTTPError) -> bool:
    """Whether another attempt may cure this transport failure: a connection that broke,
    a response that stalled past the read timeout, or a proxy that answered a CONNECT
    429, 502, 503 or 504 (``ProxyRefused.not_now``). Not a refused connection, a name
    that does not resolve, a connect timeout (an unreachable host: five of them would hold
    a pull for minutes), a TLS failure or a proxy's other refusals (407, 403 …)."""
    if isinstance(exc, ProxyRefused):
        return exc.not_now
    if tls_failure(exc) is not None:
        return False
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
        return True
    return isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout)


def stalled_for(exc: httpx.HTTPError, limits: Limits) -> float | None:
    """The seconds the server sent nothing for, when that is what ended the request (a
    read that waited out ``limits.read_timeout_s``): ``ImagecError.stalled_s``. None for
    any other failure."""
    return limits.read_timeout_s if isinstance(exc, httpx.ReadTimeout) else None


def describe_error(exc: BaseException) -> str:
    """A short human description of a transport failure, for error messages.

    httpx's own messages are often empty (``ConnectError('')``); the useful text is the
    ssl or OS error at the bottom of the chain. Redacted (``stages/_redact.py``): the
    text is the network's, and an exception may quote a URL it was given.
    """
    return redact(_describe(exc))


def _describe(exc: BaseException) -> str:
    for link in _chain(exc):
        if isinstance(link, ProxyRefused | ProxyUnreachable):
            return str(link)  # its own words, naming the proxy
        if isinstance(link, ssl.SSLCertVerificationError):
            detail = getattr(link, "verify_message", None) or getattr(link, "reason", None)
            return f"TLS certificate not trusted ({detail or link})"
        if isinstance(link, ssl.SSLError):
            return f"TLS handshake failed ({getattr(link, 'reason', None) or link})"
        if isinstance(link, OSError) and link.strerror:
            return link.strerror
    if isinstance(exc, httpx.TimeoutException):
        return {
            httpx.ConnectTimeout: "timed out connecting",
            httpx.ReadTimeout: "timed out waiting for data",
            httpx.WriteTimeout: "timed out sending",
        }.get(type(exc), "timed out")
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the server broke the HTTP protocol ({exc})" if str(exc) else "connection closed"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def url_authority(url: httpx.URL) -> str:
    """``host[:port]`` of ``url`` as messages name a server (an IPv6 host in brackets):
    never its path or query, which a signed URL fills with secrets."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port is not None else host
