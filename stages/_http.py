"""The HTTP clients that talk to registries: httpx on an httpcore pool that reads big.

Under trio every socket read costs the event loop a scheduling round, so the read size
decides throughput (MEASUREMENTS.md: httpcore's HTTP/1.1 connection asks for 64 KiB per
read; 1 MiB reads give 2-4x). httpcore lets us supply the network backend, so ours wraps
its trio backend and makes each stream read ``limits.chunk_size`` bytes whatever size the
connection asks for; h11 buffers any surplus. The pool is handed to httpx through a small
transport of our own (the one httpx ships builds its own pool with the default backend).

One client per TLS verification mode: ``open_client(..., verify=False)`` exists only for
registries the user listed as insecure.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.cookiejar
import os
import ssl
import sys
import typing
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator

import certifi
import httpcore
import httpx
import trio

from ._config import Limits, RegistryOptions
from ._errors import UsageError
from ._redact import redact

__all__ = [
    "DeferredTrustContext",
    "LargeReadBackend",
    "LargeReadStream",
    "PoolTransport",
    "cookie_jar_used",
    "describe_error",
    "make_ssl_context",
    "shared_ssl_context",
    "open_client",
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

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max(max_bytes, self._read_size), timeout)

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
        finally:
            if not done:
                with trio.CancelScope(shield=True):
                    await self._inner.aclose()
        return LargeReadStream(inner, self._read_size)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class LargeReadBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend, with every stream wrapped in ``LargeReadStream``."""

    def __init__(self, read_size: int, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._read_size = read_size
        self._inner = inner if inner is not None else httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return LargeReadStream(stream, self._read_size)

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


class _ResponseStream(httpx.AsyncByteStream):
    """httpcore's body stream with its errors mapped to httpx's.

    An iterator object rather than an async generator, and ``aclose`` closes the httpcore
    iterator it started: an abandoned async generator (a body not read to the end) is a
    ResourceWarning under trio.
    """

    def __init__(self, core_stream: typing.AsyncIterable[bytes]) -> None:
        self._core_stream = core_stream
        self._parts: typing.AsyncIterator[bytes] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._parts is None:
            self._parts = aiter(self._core_stream)
        with _map_httpcore_errors():
            return await anext(self._parts)

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
            stream=_ResponseStream(core_response.stream),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        with _map_httpcore_errors():
            await self._pool.aclose()


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
                f"cannot use --ca-file {options.ca_file}: {exc}; it must be a readable PEM"
                " file of CA certificates"
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
) -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` reading ``limits.chunk_size`` bytes per socket read.

    Redirects are not followed (the registry client follows them by hand, deciding at each
    hop which headers may go along); no environment proxies or netrc; HTTP/1.1 only. The
    cookie jar can be shut for some requests (``cookie_jar_used``). ``transport``
    replaces the pool (tests pass an ``httpx.MockTransport``).
    """
    if transport is None:
        transport = _pool_transport(options, limits, verify=verify)
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


def _pool_transport(options: RegistryOptions, limits: Limits, *, verify: bool) -> PoolTransport:
    pool = httpcore.AsyncConnectionPool(
        ssl_context=shared_ssl_context(options, verify=verify),
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_KEEPALIVE,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
        http1=True,
        http2=False,
        network_backend=LargeReadBackend(limits.chunk_size),
    )
    return PoolTransport(pool)


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


def transient_failure(exc: httpx.HTTPError) -> bool:
    """Whether another attempt may cure this transport failure: a connection that broke,
    or a response that stalled past the read timeout. Not a refused connection, a name
    that does not resolve, a connect timeout (an unreachable host: five of them would hold
    a pull for minutes) or a TLS failure."""
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
