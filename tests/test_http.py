"""stages/_http.py: big socket reads against a real loopback server, error mapping, TLS."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from pathlib import Path

import httpcore
import httpx
import outcome
import pytest
import trio
import trustme

from stages._config import Limits, ProxySettings, RegistryOptions
from stages._errors import UsageError
from stages._http import (
    DeferredTrustContext,
    LargeReadBackend,
    PinnedResolver,
    ProxyRefused,
    describe_error,
    make_ssl_context,
    open_client,
    shared_ssl_context,
    tls_failure,
    transient_failure,
)
from tests.support.forward_proxy import run_forward_proxy
from tests.support.network import DNS, Network

BODY_SIZE = 8 << 20
Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def _serve(nursery: trio.Nursery, handler: Handler) -> int:
    """Serve ``handler`` on 127.0.0.1; return the port."""
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def _read_request(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data


async def _big_body(stream: trio.SocketStream) -> None:
    await _read_request(stream)
    await stream.send_all(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: application/octet-stream\r\n\r\n"
        % BODY_SIZE
    )
    block = b"x" * (1 << 20)
    for _ in range(BODY_SIZE // len(block)):
        await stream.send_all(block)


async def test_backend_reads_more_than_asked() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _serve(nursery, _big_body)
            backend = LargeReadBackend(1 << 20)
            stream = await backend.connect_tcp("127.0.0.1", port)
            await stream.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            sizes = []
            total = 0
            while total < BODY_SIZE:
                data = await stream.read(64 * 1024)
                if not data:
                    break
                sizes.append(len(data))
                total += len(data)
            await stream.aclose()
            assert total >= BODY_SIZE
            assert max(sizes) > 64 * 1024
            nursery.cancel_scope.cancel()


async def test_client_streams_large_chunks() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _serve(nursery, _big_body)
            async with (
                open_client(RegistryOptions(), Limits()) as client,
                client.stream("GET", f"http://127.0.0.1:{port}/blob") as response,
            ):
                assert response.status_code == 200
                sizes = [len(chunk) async for chunk in response.aiter_raw()]
            assert sum(sizes) == BODY_SIZE
            # httpcore alone never yields more than 64 KiB per read.
            assert max(sizes) > 64 * 1024
            assert response.request.headers["User-Agent"] == "imagec-pipe"
            nursery.cancel_scope.cancel()


async def test_connection_refused_is_httpx_connect_error() -> None:
    with trio.fail_after(10):
        sock = trio.socket.socket()
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        async with open_client(RegistryOptions(), Limits()) as client:
            with pytest.raises(httpx.ConnectError) as info:
                await client.get(f"http://127.0.0.1:{port}/v2/")
            assert isinstance(info.value.__cause__, httpcore.ConnectError)
            assert tls_failure(info.value) is None
            assert "refused" in describe_error(info.value).lower()


def test_a_transport_error_is_described_without_a_signed_url() -> None:
    # httpx's own texts name no URL today; an exception quoting one must not leak it.
    text = describe_error(httpx.ReadError("reading https://cdn.example/b?X-Amz-Signature=S1gn"))
    assert text == "ReadError: reading https://cdn.example/b?[redacted]"


async def test_read_timeout_from_limits() -> None:
    async def stall(stream: trio.SocketStream) -> None:
        await _read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _serve(nursery, stall)
            limits = Limits(read_timeout_s=0.2)
            async with open_client(RegistryOptions(), limits) as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.get(f"http://127.0.0.1:{port}/")
            nursery.cancel_scope.cancel()


async def _answer_ok(stream: trio.abc.Stream) -> None:
    """Read one request head, answer 200 "ok" and close; a client that hung up is fine."""
    try:
        await _read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await stream.aclose()
    except trio.BrokenResourceError:
        pass


def _tls_server(
    tmp_path: Path, answer: Callable[[trio.abc.Stream], Awaitable[None]] = _answer_ok
) -> tuple[Handler, Path]:
    """``answer`` (default ``_answer_ok``) over TLS, as 127.0.0.1 with a certificate from
    a new CA, and that CA in a PEM file."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def handler(stream: trio.SocketStream) -> None:
        await answer(trio.SSLStream(stream, server_ctx, server_side=True))

    return handler, ca_file


async def test_tls_verified_with_ca_file_and_unverified_mode(tmp_path: Path) -> None:
    hello, ca_file = _tls_server(tmp_path)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _serve(nursery, hello)
            url = f"https://127.0.0.1:{port}/"
            async with open_client(RegistryOptions(), Limits()) as client:
                with pytest.raises(httpx.ConnectError) as info:
                    await client.get(url)
                assert tls_failure(info.value) == "verify"
                assert "certificate not trusted" in describe_error(info.value)
            async with open_client(RegistryOptions(ca_file=ca_file), Limits()) as client:
                assert (await client.get(url)).text == "ok"
            async with open_client(RegistryOptions(), Limits(), verify=False) as client:
                assert (await client.get(url)).text == "ok"
            nursery.cancel_scope.cancel()


async def test_https_to_plain_server_is_a_protocol_failure() -> None:
    async def plain(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _serve(nursery, plain)
            async with open_client(RegistryOptions(), Limits()) as client:
                with pytest.raises(httpx.ConnectError) as info:
                    await client.get(f"https://127.0.0.1:{port}/")
            assert tls_failure(info.value) == "protocol"
            assert "TLS handshake failed" in describe_error(info.value)
            nursery.cancel_scope.cancel()


def test_ssl_contexts() -> None:
    verified = make_ssl_context(RegistryOptions(), verify=True)
    assert verified.verify_mode == ssl.CERT_REQUIRED
    assert verified.check_hostname
    unverified = make_ssl_context(RegistryOptions(), verify=False)
    assert unverified.verify_mode == ssl.CERT_NONE


def test_trusts_the_system_store_and_falls_back_to_certifi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def loaded() -> ssl.SSLContext:
        context = make_ssl_context(RegistryOptions(), verify=True)
        assert isinstance(context, DeferredTrustContext)
        context.load_trust()
        return context

    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    if system:  # the system's CAs alone, not certifi's on top
        assert loaded().cert_store_stats() == ssl.create_default_context().cert_store_stats()
    # A system without a store (OpenSSL reads these variables at load time): certifi's.
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    monkeypatch.setenv("SSL_CERT_FILE", str(empty))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    assert ssl.create_default_context().cert_store_stats()["x509_ca"] == 0
    assert loaded().cert_store_stats()["x509_ca"] > 100


async def test_the_ca_store_is_loaded_at_the_first_verified_handshake(tmp_path: Path) -> None:
    """Plain-HTTP requests never load it; the first TLS handshake does, then verifies with
    it and the user's CA file (loaded at once, so a bad file fails before any request)."""
    tls, ca_file = _tls_server(tmp_path)
    options = RegistryOptions(ca_file=ca_file)  # its own shared context, fresh in this test

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            plain_port, tls_port = await _serve(nursery, _answer_ok), await _serve(nursery, tls)
            async with open_client(options, Limits()) as client:
                context = shared_ssl_context(options, verify=True)
                assert context.cert_store_stats()["x509_ca"] == 1  # the user's CA only
                assert (await client.get(f"http://127.0.0.1:{plain_port}/")).text == "ok"
                assert context.cert_store_stats()["x509_ca"] == 1
                assert (await client.get(f"https://127.0.0.1:{tls_port}/")).text == "ok"
                assert context.cert_store_stats()["x509_ca"] > 1  # system's (or certifi's)
            nursery.cancel_scope.cancel()


def test_unreadable_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(UsageError, match=r"\(--ca-file, RegistryOptions\.ca_file\)"):
        make_ssl_context(RegistryOptions(ca_file=missing), verify=True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(UsageError, match="PEM"):
        make_ssl_context(RegistryOptions(ca_file=garbage), verify=True)


def test_ssl_contexts_are_built_once_per_ca_file_version(tmp_path: Path) -> None:
    ca = trustme.CA()
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    options = RegistryOptions(ca_file=pem)
    first = shared_ssl_context(options, verify=True)
    assert shared_ssl_context(options, verify=True) is first
    assert shared_ssl_context(RegistryOptions(), verify=True) is not first  # no CA file
    assert shared_ssl_context(options, verify=False) is not first
    # The file changes (another CA appended): the next pull reads it again.
    with pem.open("ab") as out:
        out.write(trustme.CA().cert_pem.bytes())
    second = shared_ssl_context(options, verify=True)
    assert second is not first
    assert second.cert_store_stats()["x509_ca"] == first.cert_store_stats()["x509_ca"] + 1


# -- PinnedResolver and the connections made by what it answers ---------------------------


async def _free_port() -> int:
    """A loopback port nothing listens on (connecting to it is refused)."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


async def test_a_name_is_looked_up_once_by_all_its_askers() -> None:
    """Tasks asking for a name at once share its one lookup; its answer holds after, also
    for the name in another case or, internationalised, in its ASCII form (as httpx hands
    it to the backend, where the checks are given ``URL.host``)."""
    dns = DNS(
        {
            "reg.example": [["93.184.216.34"], ["169.254.169.254"]],
            "xn--bcher-kva.example": [["93.184.216.35"], ["127.0.0.1"]],
        }
    )
    names = PinnedResolver(dns)
    answers: list[list[str]] = []

    async def ask(host: str) -> None:
        answers.append(await names(host))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(ask, "reg.example")
        answers.append(await names("REG.example"))
        assert await names("bücher.example") == ["93.184.216.35"]
        assert await names("xn--bcher-kva.example") == ["93.184.216.35"]
        # Literals and localhost are their own answer, never looked up.
        assert await names("[::1]") == ["[::1]"]
        assert await names("169.254.169.254") == ["169.254.169.254"]
        assert await names("localhost") == ["localhost"]
    assert answers == [["93.184.216.34"]] * 4
    assert dns.lookups == {"reg.example": 1, "xn--bcher-kva.example": 1}


async def test_a_lookup_cancelled_midway_is_made_again_by_the_next_asker() -> None:
    started = trio.Event()
    release = trio.Event()
    asked: list[str] = []

    async def slow(host: str) -> list[str]:
        asked.append(host)
        if len(asked) == 1:
            started.set()
            await release.wait()
        return ["93.184.216.34"]

    names = PinnedResolver(slow)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(names, "reg.example")
            await started.wait()
            nursery.cancel_scope.cancel()
        assert await names("reg.example") == ["93.184.216.34"]
    assert asked == ["reg.example", "reg.example"]


async def test_the_backend_connects_to_literals_as_written_and_names_as_pinned() -> None:
    """An IPv6 literal reaches the network without its brackets and without a lookup; a
    name, at its pinned address, however the DNS answers after."""
    dns = DNS({"reg.example": [["2606:2800:220:1::1"], ["::1"]]})
    network = Network(dns)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port = await _serve(nursery, _answer_ok)
            network.route("2606:2800:220:1::1", 443, port)
            network.route("93.184.216.34", 443, port)
            backend = LargeReadBackend(1 << 16, network, PinnedResolver(dns))
            for host in ("2606:2800:220:1::1", "reg.example", "reg.example", "93.184.216.34"):
                await (await backend.connect_tcp(host, 443)).aclose()
            nursery.cancel_scope.cancel()
    assert network.connects == [("2606:2800:220:1::1", 443)] * 3 + [("93.184.216.34", 443)]
    assert dns.lookups == {"reg.example": 1}


async def test_a_name_none_of_whose_addresses_answers_fails_as_they_did() -> None:
    """Every address is tried, the other family second (RFC 6555 section 5.4); the error
    is a ConnectError in the words of the first refusal."""
    dns = DNS({"reg.example": [["93.184.216.1", "93.184.216.2", "2606:2800:220:1::1"]]})
    network = Network(dns)
    with trio.fail_after(5):
        port = await _free_port()
        for address in ("93.184.216.1", "93.184.216.2", "2606:2800:220:1::1"):
            network.route(address, 443, port)
        names = PinnedResolver(dns)
        async with open_client(RegistryOptions(), Limits(), names=names, network=network) as client:
            with pytest.raises(httpx.ConnectError) as info:
                await client.get("https://reg.example/v2/")
    assert [address for address, _ in network.connects] == [
        "93.184.216.1",
        "2606:2800:220:1::1",
        "93.184.216.2",
    ]
    assert "refused" in describe_error(info.value).lower()
    assert not transient_failure(info.value)


async def test_a_name_that_does_not_resolve_fails_to_connect_in_the_resolvers_words() -> None:
    names = PinnedResolver(DNS({}))
    with trio.fail_after(5):
        async with open_client(RegistryOptions(), Limits(), names=names) as client:
            with pytest.raises(httpx.ConnectError) as info:
                await client.get("https://nowhere.example/v2/")
    assert describe_error(info.value) == "the name resolves to no address"
    assert not transient_failure(info.value)


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (429, True),
        (502, True),
        (503, True),
        (504, True),
        (400, False),
        (403, False),
        (407, False),
        (None, False),
    ],
)
def test_a_proxy_refusal_is_transient_only_when_it_could_not_reach_the_target_for_now(
    status: int | None, transient: bool
) -> None:
    """429/502/503/504 to a CONNECT are the retry policy's, as from a registry (a 429 was
    final: a rate-limiting proxy failed the pull at once); another 4xx (or a
    request refused before it was sent, no status) is final."""
    assert transient_failure(ProxyRefused("the proxy said so", status=status)) is transient


@pytest.mark.parametrize(("status", "waits"), [(503, 120.0), (429, 120.0), (502, None)])
async def test_a_proxys_retry_after_to_a_connect_is_kept_on_its_refusal(
    status: int, waits: float | None
) -> None:
    """httpcore raises a CONNECT not answered 2xx without the answer's headers; the trace
    extension keeps them: a 503's or a 429's Retry-After is read, as a registry's are (a
    502's is not, as a registry's is not). A trace the caller set still sees every event, and
    the request keeps its own extensions."""
    seen: list[str] = []

    async def trace(name: str, info: dict[str, object]) -> None:
        seen.append(name)

    with run_forward_proxy({}, refuse_connect=status, refuse_connect_retry_after="120") as proxy:
        options = RegistryOptions(proxy=ProxySettings(https_proxy=proxy.url))
        with trio.fail_after(10):
            async with open_client(options, Limits()) as client:
                request = client.build_request(
                    "GET", "https://registry.test:5000/v2/", extensions={"trace": trace}
                )
                with pytest.raises(ProxyRefused) as info:
                    await client.send(request)
    assert info.value.status == status
    assert info.value.retry_after_s == waits
    assert info.value.retry_after_from == f"the proxy {proxy.url}"
    assert "http11.receive_response_headers.complete" in seen
    assert request.extensions["trace"] is trace


async def test_a_lookup_that_hangs_is_a_connect_timeout() -> None:
    """The connect timeout covers the name's lookup, as it did inside trio's
    open_tcp_stream; the pin is not made, so the next connection looks again."""
    asked: list[str] = []

    async def hanging(host: str) -> list[str]:
        asked.append(host)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    names = PinnedResolver(hanging)
    with trio.fail_after(5):
        async with open_client(
            RegistryOptions(), Limits(connect_timeout_s=0.1), names=names
        ) as client:
            for _ in range(2):
                with pytest.raises(httpx.ConnectTimeout) as info:
                    await client.get("https://slow.example/v2/")
    assert describe_error(info.value) == "timed out connecting"
    assert asked == ["slow.example", "slow.example"]


class _Unanswered(httpcore.AsyncNetworkBackend):
    """A network on which no connection is answered: each attempt waits out the timeout
    it was given, then fails as httpcore's trio backend does. ``gives_up_at``: when each
    address's attempt would stop waiting."""

    def __init__(self) -> None:
        self.gives_up_at: dict[str, float] = {}

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        assert timeout is not None
        self.gives_up_at[host] = trio.current_time() + timeout
        await trio.sleep(timeout)
        raise httpcore.ConnectTimeout(f"{host} did not answer")


async def test_a_names_addresses_share_one_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Attempts started a quarter second apart end together, when the connect timeout
    does, as trio's open_tcp_stream did them all under one deadline: each given the
    whole timeout, a name of n silent addresses took (n - 1) / 4 s more than it."""
    dns = DNS({"reg.example": [["93.184.216.1", "93.184.216.2", "2606:2800:220:1::1"]]})
    network = _Unanswered()
    backend = LargeReadBackend(1 << 16, network, PinnedResolver(dns))
    with trio.fail_after(60):
        started = trio.current_time()
        with pytest.raises(httpcore.ConnectTimeout):
            await backend.connect_tcp("reg.example", 443, timeout=5.0)
    assert sorted(network.gives_up_at) == ["2606:2800:220:1::1", "93.184.216.1", "93.184.216.2"]
    for gives_up_at in network.gives_up_at.values():
        assert gives_up_at == pytest.approx(started + 5.0)


# --- large bodies, read past h11 (_DirectBody) ---------------------------------------------

LARGE = 9 << 20  # over DIRECT_BODY_MIN_BYTES
SMALL = 1 << 20  # under it


def _pattern(size: int) -> bytes:
    """``size`` bytes in which a piece lost, repeated or out of order shows."""
    return b"".join(i.to_bytes(8, "big") for i in range(size // 8))


def _head(length: int, *more: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (length, b"".join(more))


def _answer_once(
    *sends: bytes, then_close: bool = False
) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """Read one request, send ``sends`` in turn, then close or hang (never the end of a
    body the client decides)."""

    async def handler(stream: trio.abc.Stream) -> None:
        await _read_request(stream)
        for data in sends:
            await stream.send_all(data)
        if then_close:
            await stream.aclose()
        else:
            await trio.sleep_forever()

    return handler


async def _fetch(
    handler: Handler,
    *,
    method: str = "GET",
    scheme: str = "http",
    options: RegistryOptions = RegistryOptions(),  # noqa: B008 (frozen)
    limits: Limits = Limits(),  # noqa: B008 (frozen)
    requests: int = 1,
    parts: list[bytes] | None = None,
) -> bytes:
    """Serve ``handler`` on 127.0.0.1, ask it ``requests`` times through one client, and
    return the last body read whole; ``parts`` gets every part as it comes, also when
    the reading fails (which raises here as it did there)."""
    got = [] if parts is None else parts

    async def ask(port: int) -> bytes:
        async with open_client(options, limits) as client:
            for _ in range(requests):
                got.clear()
                url = f"{scheme}://127.0.0.1:{port}/b"
                async with client.stream(method, url) as response:
                    async for part in response.aiter_raw():
                        got.append(part)
        return b"".join(got)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await _serve(nursery, handler)
            body = await outcome.acapture(ask, port)
            nursery.cancel_scope.cancel()
    return body.unwrap()


@pytest.mark.parametrize(
    ("size", "connections_for_two"), [(LARGE, 2), (SMALL, 1)], ids=["large", "small"]
)
async def test_a_large_body_is_read_whole_and_its_connection_is_not_pooled(
    size: int, connections_for_two: int
) -> None:
    """A large body is read past h11, whose parser then never saw it end: its connection
    is closed, not pooled, so the next request opens another. A small one stays h11's,
    and its connection serves the next request."""
    body = _pattern(size)
    connections: list[trio.SocketStream] = []

    async def keep_alive(stream: trio.SocketStream) -> None:
        connections.append(stream)
        with contextlib.suppress(trio.BrokenResourceError):
            while await _read_request(stream):
                await stream.send_all(_head(size) + body)

    parts: list[bytes] = []
    assert await _fetch(keep_alive, requests=2, parts=parts) == body
    assert max(len(part) for part in parts) <= Limits().chunk_size
    assert len(connections) == connections_for_two


async def test_a_large_body_longer_than_its_length_is_read_to_its_length() -> None:
    body = _pattern(LARGE)
    assert await _fetch(_answer_once(_head(LARGE), body, b"HTTP/1.1 200 OK\r\n\r\n")) == body


async def test_a_large_body_cut_short_is_a_protocol_error_saying_how_much_came() -> None:
    sent = LARGE - (3 << 20)
    parts: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError) as info:
        await _fetch(_answer_once(_head(LARGE), _pattern(sent), then_close=True), parts=parts)
    assert sum(map(len, parts)) == sent
    assert f"received {sent} bytes, expected {LARGE}" in str(info.value)


async def test_a_large_body_that_stalls_is_a_read_timeout() -> None:
    with pytest.raises(httpx.ReadTimeout):
        await _fetch(
            _answer_once(_head(LARGE), _pattern(LARGE // 2)), limits=Limits(read_timeout_s=0.3)
        )


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_a_large_length_with_no_body_to_read_is_h11s(method: str) -> None:
    """A HEAD's answer and a chunked body name no bytes to read past h11: a HEAD's
    Content-Length is the GET's, with no body after it; a chunked body's length is
    unknown (and Transfer-Encoding overrides any Content-Length)."""
    body = _pattern(LARGE)
    if method == "HEAD":
        handler = _answer_once(_head(LARGE))
    else:
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        handler = _answer_once(_head(LARGE, b"Transfer-Encoding: chunked\r\n"), chunked)
    got = await _fetch(handler, method=method, limits=Limits(read_timeout_s=5))
    assert got == (body if method == "GET" else b"")


async def test_a_large_body_over_tls_is_read_whole(tmp_path: Path) -> None:
    body = _pattern(LARGE)
    handler, ca_file = _tls_server(tmp_path, _answer_once(_head(LARGE), body))
    got = await _fetch(handler, scheme="https", options=RegistryOptions(ca_file=ca_file))
    assert got == body
